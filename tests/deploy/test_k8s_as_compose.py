"""The Kubernetes manifests run what compose runs: the same pinned images, LoRAX with compose's arguments, each
service on its own S3 user, and MinIO's init script from one copy."""

from __future__ import annotations

import re

import pytest

from tests.deploy.compose import ROOT, compose_services
from tests.deploy.k8s import BACKENDS, K8S, OVERLAYS, containers_of, workloads_of


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
    images = [_default(service["image"]) for service in compose_services().values() if "image" in service]
    compose = {image.rsplit(":", 1)[0]: image for image in images}
    assert set(compose) >= SHARED_IMAGES
    for app, workload in workloads_of(rendered[overlay]).items():
        for container in containers_of(workload, init=True):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert re.fullmatch(r"\d[\w.-]*|RELEASE\.[\w.-]+", tag), f"{app}: {image} is not pinned to a release"
            if repository in SHARED_IMAGES:
                assert image == compose[repository], app


def test_lorax_runs_as_compose_runs_it(rendered: dict[str, list[dict]]) -> None:
    service = compose_services()["lorax"]
    (lorax,) = containers_of(workloads_of(rendered["gpu"])["lorax"])
    assert lorax["args"] == [_default(arg) for arg in service["command"]]
    assert "--preloaded-adapter-ids" not in lorax["args"]
    env = {e["name"]: e.get("value") for e in lorax["env"]}
    for name in ("HF_HUB_OFFLINE", "DISABLE_SGMV"):
        assert env[name] == _default(service["environment"][name]), name


# Each service's own S3 user (infra/minio/), as in compose.
S3_USERS = {"compressor": "SOPPU_WRITE", "gateway": "SOPPU_GATEWAY_S3", "engine": "SOPPU_SERVE", "lorax": "SOPPU_SERVE"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_reads_the_bucket_as_its_own_s3_user(rendered: dict[str, list[dict]], overlay: str) -> None:
    workloads = workloads_of(rendered[overlay])
    for app in ("compressor", "gateway", BACKENDS[overlay]):
        (container,) = containers_of(workloads[app])
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
