"""What each compose service is given: pinned images, secrets from the environment file only, the gateway's own
read-only S3 user (and a gateway that never writes the store), MinIO's metrics behind a token, and LoRAX run as the
guide says: offline, taking what the gateway admits, leaving the compressor room on a shared GPU."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

from soppu.store.layout import KEYS, MANIFESTS, POINTERS
from tests.deploy.compose import COMPOSE, HUB, MINIO, PINNED, ROOT, compose_config, compose_services, run_compose


def test_every_image_is_pinned() -> None:
    for name, service in compose_services().items():
        image = service.get("image")
        if image is not None:
            image = re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", image)  # an overridable image: its default is checked
        if image is None:
            assert "build" in service, f"service {name} has neither image nor build"
            continue
        assert PINNED.fullmatch(image) and (":" in image or "@" in image), f"{name}: image {image!r} is not pinned"


def test_secrets_come_from_the_environment_file() -> None:
    text = COMPOSE.read_text()
    assert "MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:?" in text  # no default: refuses to start without .env
    example = (ROOT / ".env.example").read_text()
    assert "MINIO_ROOT_PASSWORD=" in example
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_minio_metrics_need_a_token_prometheus_reads_from_minio_init() -> None:
    services = compose_services()
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
    environment = compose_services()["gateway"]["environment"]
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


def test_lorax_runs_as_the_guide_says() -> None:
    lorax = compose_services()["lorax"]
    command = " ".join(lorax["command"])
    assert "--adapter-source s3" in command and "--model-id" in command
    assert "--preloaded-adapter-ids" not in command  # it would switch dynamic adapter loading off
    assert lorax["shm_size"] == "1g" and any(v.endswith(":/data") for v in lorax["volumes"])
    assert lorax["environment"]["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert lorax["environment"]["AWS_ACCESS_KEY_ID"].startswith("${SOPPU_SERVE_ACCESS_KEY")  # read-only user
    for name in ("lorax", "compressor-gpu"):
        devices = compose_services()[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_lorax_takes_what_the_gateway_admits_stays_offline_and_leaves_the_compressor_room() -> None:
    # Issue 14: LoRAX's default of 128 concurrent requests sat under the gateway's 512; an empty Hub token made it
    # send an empty bearer token; every new export cost a Hub lookup; LoRAX and the compressor both reserved
    # "one GPU", the same one, with LoRAX taking all of it.
    from gateway_service.settings import GatewaySettings

    services = compose_config(COMPOSE)["services"]
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
    assert run_compose(COMPOSE, HUB, quiet=True).returncode != 0  # no token: refused, never an empty one
    with_token = run_compose(COMPOSE, HUB, HUGGING_FACE_HUB_TOKEN="hf_example")
    assert with_token.returncode == 0, with_token.stderr
    environment = yaml.safe_load(with_token.stdout)["services"]["lorax"]["environment"]
    assert environment["HUGGING_FACE_HUB_TOKEN"] == "hf_example" and str(environment["HF_HUB_OFFLINE"]) == "0"
