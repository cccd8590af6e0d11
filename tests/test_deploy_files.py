"""The deployment files: the compose file validates, every image is pinned, and the stack exposes only what the
README's "Security" section says (tested on `docker-compose config` output, so interpolation and overrides count)."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from soppu.secret_checks import secret_problem
from soppu.store.layout import KEYS, MANIFESTS, POINTERS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DEBUG = ROOT / "docker-compose.debug.yml"
ENV_EXAMPLE = ROOT / ".env.example"
MINIO = ROOT / "infra" / "minio"
# A release tag or a digest; never a moving tag.
_PINNED = re.compile(r"[^:@\s]+(:(?!latest$|main$|master$)[\w][\w.-]*)?(@sha256:[0-9a-f]{64})?")


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_image_is_pinned() -> None:
    for name, service in _services().items():
        image = service.get("image")
        if image is not None:
            image = re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", image)  # an overridable image: its default is checked
        if image is None:
            assert "build" in service, f"service {name} has neither image nor build"
            continue
        assert _PINNED.fullmatch(image) and (":" in image or "@" in image), f"{name}: image {image!r} is not pinned"


def test_secrets_come_from_the_environment_file() -> None:
    text = COMPOSE.read_text()
    assert "MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:?" in text  # no default: refuses to start without .env
    example = (ROOT / ".env.example").read_text()
    assert "MINIO_ROOT_PASSWORD=" in example
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def _compose(*files: Path, quiet: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    # Fails, never skips: these are the only checks of the compose files this machine (no Docker engine) can run.
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed: `make system-deps` installs it from the OS packages")
    command = ["docker-compose"]
    for file in files:
        command += ["-f", str(file)]
    command += ["--env-file", str(ENV_EXAMPLE), "--profile", "cpu", "--profile", "gpu", "config"]
    command += ["-q"] if quiet else []
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SOPPU_", "MINIO_", "COMPOSE_"))}
    return subprocess.run(command, capture_output=True, text=True, check=False, env=clean | env, cwd=ROOT)


@cache
def _config(*files: Path, bind: str | None = None) -> dict:
    result = _compose(*files, **({"SOPPU_BIND_ADDRESS": bind} if bind else {}))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _published(service: dict) -> list[tuple[str, str]]:
    """(host address, host port) of every published port, from docker-compose v1's strings or v2's mappings."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), str(port.get("published", ""))))
        else:
            parts = str(port).split("/")[0].split(":")
            found.append((parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) > 1 else ""))
    return found


def _members(config: dict) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {name: set() for name in config.get("networks", {})}
    for name, service in config["services"].items():
        networks = service.get("networks") or {"default": None}
        for network in networks:
            members.setdefault(network, set()).add(name)
    return members


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, DEBUG)], ids=["stack", "with-debug-ports"])
def test_compose_file_validates(files: tuple[Path, ...]) -> None:
    result = _compose(*files, quiet=True)
    assert result.returncode == 0, result.stderr


# What the README's Security section says is published, and where: service -> port.
PUBLISHED = {"gateway": "8080", "compressor": "8081", "compressor-gpu": "8081", "prometheus": "9090"}
BACKENDS = {"engine", "lorax"}


def test_only_the_gateway_compressor_and_prometheus_publish_ports_on_loopback() -> None:
    services = _config(COMPOSE)["services"]
    published = {name: _published(service) for name, service in services.items() if service.get("ports")}
    assert {name: [port for _, port in ports] for name, ports in published.items()} == {
        name: [port] for name, port in PUBLISHED.items()
    }
    assert all(address == "127.0.0.1" for ports in published.values() for address, _ in ports), published


def _security_table() -> dict[str, tuple[str, str]]:
    """service -> (port, bound to), from the first table of the README's Security section."""
    section = (ROOT / "README.md").read_text().split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table[2:]]  # past header and rule
    return {row[0]: (row[1], row[2]) for row in rows}


def test_the_readme_security_section_says_what_compose_publishes() -> None:
    services = _config(COMPOSE)["services"]
    table = _security_table()
    said = {name.lower(): port for name, (port, _) in table.items() if port.isdigit()}
    published = {name.removesuffix("-gpu"): ports[0][1] for name, s in services.items() if (ports := _published(s))}
    assert said == published
    for name, (port, bound) in table.items():
        assert bound.startswith("127.0.0.1") if port.isdigit() else port == "none", name
    assert {name.lower() for name, (port, _) in table.items() if port == "none"} == {*BACKENDS, "minio"}


def test_bind_address_opens_the_gateway_and_the_compressor_only() -> None:
    services = _config(COMPOSE, bind="0.0.0.0")["services"]
    for name in ("gateway", "compressor", "compressor-gpu"):
        assert _published(services[name])[0][0] == "0.0.0.0", name
    assert _published(services["prometheus"]) == [("127.0.0.1", "9090")]  # no authentication of its own
    assert not any(services[name].get("ports") for name in (*BACKENDS, "minio", "minio-init"))


def test_the_backends_are_reachable_from_the_gateway_only() -> None:
    config = _config(COMPOSE)
    internal = {name for name, net in config["networks"].items() if (net or {}).get("internal")}
    for network, members in _members(config).items():
        if members & BACKENDS:
            others = members - BACKENDS
            # Prometheus scrapes them (on 127.0.0.1 only, forwarding nothing); MinIO only answers them.
            assert others <= {"gateway", "prometheus", "minio"}, (network, others)
            assert network in internal or members == {"lorax"}, network  # `hub`: LoRAX's way out, alone
        if "minio" in members:
            assert network in internal, network
        if network not in internal and members != {"lorax"}:  # a network with a way in or out
            assert not members & (BACKENDS | {"minio"}), network
    gateway_networks = set(config["services"]["gateway"]["networks"])
    assert any(members & BACKENDS for net, members in _members(config).items() if net in gateway_networks)


def test_debug_ports_are_opt_in_and_on_loopback() -> None:
    services = _config(COMPOSE, DEBUG)["services"]
    for name in (*BACKENDS, "minio"):
        ports = _published(services[name])
        assert ports and all(address == "127.0.0.1" for address, _ in ports), (name, ports)


def test_minio_metrics_need_a_token_prometheus_reads_from_minio_init() -> None:
    services = _services()
    assert services["minio"]["environment"]["MINIO_PROMETHEUS_AUTH_TYPE"] != "public"
    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load((ROOT / "infra" / "prometheus.yml").read_text())["scrape_configs"]
    }
    token = Path(jobs["minio"]["authorization"]["credentials_file"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    init_mounts = {v.split(":")[0]: v.split(":")[1] for v in services["minio-init"]["volumes"]}
    volume = mounts[str(token.parent)]
    assert volume in init_mounts and services["minio-init"]["entrypoint"][-1] == "/policies/init.sh"


def _policy(name: str) -> list[dict]:
    return json.loads((MINIO / f"{name}.json").read_text())["Statement"]


def test_the_gateway_has_its_own_read_only_s3_user() -> None:
    environment = _services()["gateway"]["environment"]
    assert environment["AWS_ACCESS_KEY_ID"].startswith("${SOPPU_GATEWAY_S3_ACCESS_KEY")
    assert environment["AWS_SECRET_ACCESS_KEY"].startswith("${SOPPU_GATEWAY_S3_SECRET_KEY:?")
    readable = {f"arn:aws:s3:::BUCKET/{prefix}/*" for prefix in (POINTERS, MANIFESTS, KEYS)}
    for statement in _policy("gateway-readonly"):
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            assert action in {"s3:GetObject", "s3:ListBucket", "s3:HeadBucket", "s3:GetBucketLocation"}, action
        if statement["Action"] == ["s3:GetObject"]:
            assert set(statement["Resource"]) == readable
        else:
            assert statement["Resource"] == ["arn:aws:s3:::BUCKET"]
        if "s3:ListBucket" in statement["Action"]:
            assert statement["Condition"] == {"StringLike": {"s3:prefix": [f"{POINTERS}/*"]}}


_STORE_WRITES = {"put", "delete", "delete_prefix", "ensure_bucket", "issue", "revoke", "revoke_user"}


def test_the_gateway_code_never_writes_the_store() -> None:
    """What lets its S3 user be read-only: no gateway module calls a store or key-ring write."""
    for path in sorted((ROOT / "gateway_service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in _STORE_WRITES, f"{path.relative_to(ROOT)}:{node.lineno}"


DOCKERFILES = sorted(ROOT.glob("*_service/Dockerfile"))


def test_every_service_has_a_dockerfile() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["compressor_service", "gateway_service", "inference_service"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_build_only_from_files_in_the_repo(dockerfile: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    bases = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert bases and all(_PINNED.fullmatch(b) and ":" in b for b in bases), bases
    for line in lines:
        assert not line.upper().startswith("ADD "), f"{dockerfile}: use COPY, never ADD (no URLs, no archives)"
        assert "curl " not in line and "wget " not in line, f"{dockerfile}: fetches from the network: {line}"
        if line.upper().startswith("COPY "):
            *sources, _dest = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} is not in the repository"


# The extras each image installs: the gateway never loads torch.
_EXTRAS = {"compressor_service": "ml,services", "gateway_service": "services", "inference_service": "ml,services"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_install_the_project_extras_at_the_tested_versions(dockerfile: Path) -> None:
    # No hand-kept dependency lists (one went stale: the gateway image lacked redis), one torch version everywhere.
    text = dockerfile.read_text()
    installs = [line.strip() for line in text.splitlines() if "pip install" in line]
    project = [line for line in installs if "'.[" in line]
    assert project == [f"RUN pip install -c constraints.txt '.[{_EXTRAS[dockerfile.parent.name]}]'"], installs
    others = [line for line in installs if line not in project]
    make_torch = re.search(r"^TORCH_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert make_torch is not None
    if "ml" in _EXTRAS[dockerfile.parent.name]:
        assert others == ["RUN pip install torch==${TORCH_VERSION}"], others
        assert f"ARG TORCH_VERSION={make_torch.group(1)}" in text
    else:
        assert others == [], others


def _write_env() -> ModuleType:
    spec = importlib.util.spec_from_file_location("write_env", ROOT / "infra" / "write_env.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_secrets_have_no_defaults_and_make_up_generates_them() -> None:
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+(?:PASSWORD|SECRET_KEY|ADMIN_KEY)):\?", text))
    assert required == set(_write_env().SECRETS)  # every secret compose needs, make up writes, and no other
    assert "infra/write_env.py" in (ROOT / "Makefile").read_text()


def test_make_up_writes_random_secrets_and_completes_an_old_env(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_env = _write_env()
    env = tmp_path / ".env"
    write_env.main([str(env), "--example", str(ENV_EXAMPLE)])
    first = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line and line[0] != "#")
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    for name in write_env.SECRETS:
        assert secret_problem(first[name]) is None, name
        assert first[name] not in capsys.readouterr().out
    assert len({first[name] for name in write_env.SECRETS}) == len(write_env.SECRETS)
    before = env.read_text()
    assert write_env.complete(env, ENV_EXAMPLE) == [] and env.read_text() == before  # idempotent
    # An old .env: a placeholder and a missing secret are filled in; a good secret and local edits are kept.
    env.write_text("SOPPU_ADMIN_KEY=change-me-to-a-long-random-secret\nMINIO_ROOT_PASSWORD=kept-0123456789-abcdef\n")
    written = write_env.complete(env, ENV_EXAMPLE)
    assert "SOPPU_ADMIN_KEY" in written and "SOPPU_GATEWAY_S3_SECRET_KEY" in written
    assert "MINIO_ROOT_PASSWORD" not in written and "MINIO_ROOT_PASSWORD=kept-0123456789-abcdef" in env.read_text()
    assert "change-me" not in env.read_text()


def _fake_mc(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mc = bin_dir / "mc"
    mc.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$MC_LOG"\n'
        'case "$*" in *"prometheus generate"*) printf \'{\\n "jobName": "minio-job",\\n'
        ' "bearerToken": "eyJ.fake.jwt",\\n "metricsPath": "/minio/v2/metrics/cluster"\\n}\\n\' ;; esac\n'
    )
    mc.chmod(0o755)
    return bin_dir


def _init(tmp_path: Path, **secrets: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "metrics").mkdir(exist_ok=True)
    env = {
        "PATH": f"{_fake_mc(tmp_path)}:{os.environ['PATH']}",
        "MC_LOG": str(tmp_path / "mc.log"),
        "POLICY_DIR": str(MINIO),
        "METRICS_DIR": str(tmp_path / "metrics"),
        "WORK_DIR": str(tmp_path),
        "MINIO_ROOT_USER": "soppu-admin",
        "SOPPU_BUCKET": "my-bucket",
        "SOPPU_SERVE_ACCESS_KEY": "soppu-server",
        "SOPPU_WRITE_ACCESS_KEY": "soppu-writer",
        "SOPPU_GATEWAY_S3_ACCESS_KEY": "soppu-gateway",
        **secrets,
    }
    return subprocess.run(["sh", str(MINIO / "init.sh")], env=env, capture_output=True, text=True, check=False)


_INIT_SECRETS = (
    "MINIO_ROOT_PASSWORD",
    "SOPPU_SERVE_SECRET_KEY",
    "SOPPU_WRITE_SECRET_KEY",
    "SOPPU_GATEWAY_S3_SECRET_KEY",
)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_minio_init_refuses_placeholder_secrets(tmp_path: Path) -> None:
    weak = {name: "change-me-to-a-long-random-secret" for name in _INIT_SECRETS} | {"SOPPU_SERVE_SECRET_KEY": "short"}
    result = _init(tmp_path, **weak)
    assert result.returncode == 1
    assert all(name in result.stderr for name in _INIT_SECRETS)
    assert "change-me-to" not in result.stderr and "short" not in result.stderr.replace("shorter", "")
    assert not (tmp_path / "mc.log").exists()  # stopped before touching MinIO


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_minio_init_creates_three_users_and_the_metrics_token(tmp_path: Path) -> None:
    result = _init(tmp_path, **{name: f"{name.lower()}-0123456789abcdef" for name in _INIT_SECRETS})
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    for policy, user in (("lorax-readonly", "soppu-server"), ("gateway-readonly", "soppu-gateway"),
                         ("compressor-readwrite", "soppu-writer")):  # fmt: skip
        assert f"admin policy create soppu {policy} {tmp_path}/{policy}.json" in calls
        assert f"admin policy attach soppu {policy} --user {user}" in calls
        rendered = (tmp_path / f"{policy}.json").read_text()
        assert "BUCKET" not in rendered and "arn:aws:s3:::my-bucket" in rendered
        assert json.loads(rendered) == json.loads((MINIO / f"{policy}.json").read_text().replace("BUCKET", "my-bucket"))
    assert (tmp_path / "metrics" / "token").read_text() == "eyJ.fake.jwt"


def test_lorax_runs_as_the_guide_says() -> None:
    lorax = _services()["lorax"]
    command = " ".join(lorax["command"])
    assert "--adapter-source s3" in command and "--model-id" in command
    assert "--preloaded-adapter-ids" not in command  # it would switch dynamic adapter loading off
    assert lorax["shm_size"] == "1g" and any(v.endswith(":/data") for v in lorax["volumes"])
    assert lorax["environment"]["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert lorax["environment"]["AWS_ACCESS_KEY_ID"].startswith("${SOPPU_SERVE_ACCESS_KEY")  # read-only user
    for name in ("lorax", "compressor-gpu"):
        devices = _services()[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name


HUB = ROOT / "docker-compose.hub.yml"


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_lorax_takes_what_the_gateway_admits_stays_offline_and_leaves_the_compressor_room() -> None:
    # Issue 14: LoRAX's default of 128 concurrent requests sat under the gateway's 512; an empty Hub token made it
    # send an empty bearer token; every new export cost a Hub lookup; LoRAX and the compressor both reserved
    # "one GPU", the same one, with LoRAX taking all of it.
    from gateway_service.settings import GatewaySettings

    services = _config(COMPOSE)["services"]
    lorax = services["lorax"]
    admitted = GatewaySettings.model_fields["max_concurrent_requests"].default
    assert int(_flag(lorax["command"], "--max-concurrent-requests")) >= admitted
    assert str(lorax["environment"]["HF_HUB_OFFLINE"]) == "1"
    assert all(str(value) != "" for value in lorax["environment"].values())  # no empty token variables
    assert "HUGGING_FACE_HUB_TOKEN" not in lorax["environment"]

    def gpu(name: str) -> list[str]:
        return services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]

    if gpu("lorax") == gpu("compressor-gpu"):  # one GPU shared: LoRAX must not take all of it
        assert float(_flag(lorax["command"], "--cuda-memory-fraction")) < 1.0


def test_the_hub_override_needs_its_token() -> None:
    assert _compose(COMPOSE, HUB, quiet=True).returncode != 0  # no token: refused, never an empty one
    with_token = _compose(COMPOSE, HUB, HUGGING_FACE_HUB_TOKEN="hf_example")
    assert with_token.returncode == 0, with_token.stderr
    environment = yaml.safe_load(with_token.stdout)["services"]["lorax"]["environment"]
    assert environment["HUGGING_FACE_HUB_TOKEN"] == "hf_example" and str(environment["HF_HUB_OFFLINE"]) == "0"


def test_the_gateway_runs_without_the_ml_extra() -> None:
    # Its image has no torch: importing the app (and its launcher) must not pull in an `ml` package.
    probe = (
        "import sys, gateway_service.app, gateway_service.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'safetensors', 'transformers', 'tokenizers', 'matplotlib', 'regex', 'tqdm', 'numpy'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stdout
