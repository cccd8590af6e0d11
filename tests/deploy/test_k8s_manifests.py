"""The Kubernetes manifests (deploy/k8s): both overlays render with kubectl's kustomize, every object validates
against the Kubernetes schemas (strict), secrets live only in the generated Secret, every reference resolves, every
container has requests, a memory limit and no privilege escalation, GPUs only in the gpu overlay, and the gateway
scales with an HPA. (The network: test_k8s_network.py; what compose shares: test_k8s_as_compose.py.)"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from soppu.secret_checks import secret_problem
from tests.deploy.compose import ROOT
from tests.deploy.k8s import (
    K8S,
    K8S_VERSION,
    OVERLAYS,
    WITH_COMPONENTS,
    containers_of,
    kustomize,
    named,
    of_kind,
    selects,
    workloads_of,
)
from tests.support.infra import load_write_env


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
    result = kustomize(copy / "overlays" / "cpu")
    assert result.returncode != 0 and "secrets.env" in result.stderr


def test_secrets_are_compose_names_and_the_example_holds_placeholders_only() -> None:
    example = dict(line.split("=", 1) for line in (K8S / "base" / "secrets.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))  # fmt: skip
    compose = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert set(example) <= compose
    assert set(load_write_env().SECRETS) <= set(example)
    assert all(secret_problem(example[name]) is not None for name in load_write_env().SECRETS)
    assert "base/secrets.env" in (K8S / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_values_appear_only_in_the_secret(
    rendered: dict[str, list[dict]], secrets: dict[str, str], overlay: str
) -> None:
    values = [secrets[name] for name in load_write_env().SECRETS]
    for doc in rendered[overlay]:
        if doc["kind"] != "Secret":
            text = json.dumps(doc)
            assert not any(value in text for value in values), f"a secret in {doc['kind']} {doc['metadata']['name']}"
    for app, workload in workloads_of(rendered[overlay]).items():
        for container in containers_of(workload, init=True):
            for env in container.get("env", []):
                if re.search(r"SECRET|PASSWORD|ADMIN_KEY|ACCESS_KEY", env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{app}: {env['name']} is not from the Secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered: dict[str, list[dict]], secrets: dict[str, str], overlay: str) -> None:
    docs = rendered[overlay]
    (secret,) = of_kind(docs, "Secret")
    configmaps = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "ConfigMap")}
    claims = {doc["metadata"]["name"] for doc in of_kind(docs, "PersistentVolumeClaim")}
    for app, workload in workloads_of(docs).items():
        pod = workload["spec"]["template"]["spec"]
        for container in containers_of(workload, init=True):
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
    for service in of_kind(docs, "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        assert any(
            selects(selector, w["spec"]["template"]["metadata"]["labels"]) for w in workloads_of(docs).values()
        ), service["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_security_context(rendered: dict[str, list[dict]], overlay: str) -> None:
    for app, workload in workloads_of(rendered[overlay]).items():
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, app
        for container in containers_of(workload, init=True):
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{app}/{container['name']}: requests"
            assert "memory" in resources.get("limits", {}), f"{app}/{container['name']}: no memory limit"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, app


def test_gpus_only_in_the_gpu_overlay(rendered: dict[str, list[dict]]) -> None:
    assert "nvidia.com/gpu" not in json.dumps(rendered["cpu"])
    gpu = workloads_of(rendered["gpu"])
    for app in ("lorax", "compressor"):
        (container,) = containers_of(gpu[app])
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, app
    (compressor,) = containers_of(gpu["compressor"])
    assert {"name": "SOPPU_COMPRESSOR_DEVICE", "value": "cuda"} in compressor["env"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_scales_with_an_hpa(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in named(docs, "Deployment", "gateway")["spec"]  # the HPA owns it
    assert named(docs, "Deployment", "compressor")["spec"]["replicas"] == 2
