"""Fixtures of the deployment tests: deploy/k8s rendered once per session (read-only), from a copy with a
secrets.env written the way the README says (infra/write_env.py), so the secrets are random and a leak of one into
another object is visible."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.k8s import K8S, OVERLAYS, WITH_COMPONENTS, kustomize, of_kind
from tests.support.infra import load_write_env


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with random secrets and the extra overlay."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    load_write_env().complete(copy / "base" / "secrets.env", copy / "base" / "secrets.env.example")
    extra = copy / "overlays" / WITH_COMPONENTS
    extra.mkdir()
    (extra / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: soppu\nresources: [../gpu]\n"
        "components: [../../components/external-s3, ../../components/prometheus]\n"
    )
    return copy


@pytest.fixture(scope="session")
def rendered(tree: Path) -> dict[str, list[dict]]:
    out = {}
    for overlay in (*OVERLAYS, WITH_COMPONENTS):
        result = kustomize(tree / "overlays" / overlay)
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


@pytest.fixture(scope="session")
def secrets(rendered: dict[str, list[dict]]) -> dict[str, str]:
    (secret,) = of_kind(rendered["cpu"], "Secret")
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
