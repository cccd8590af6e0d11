"""The services' Dockerfiles: pinned bases, built only from files in the repository, installing the project's
extras at the tested versions; and the gateway's image, which has no ML stack, can import the gateway."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.compose import PINNED, ROOT

DOCKERFILES = sorted(ROOT.glob("*_service/Dockerfile"))


def test_every_service_has_a_dockerfile() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["compressor_service", "gateway_service", "inference_service"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_build_only_from_files_in_the_repo(dockerfile: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    bases = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert bases and all(PINNED.fullmatch(b) and ":" in b for b in bases), bases
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


def test_the_gateway_runs_without_the_ml_extra() -> None:
    # Its image has no torch: importing the app (and its launcher) must not pull in an `ml` package.
    probe = (
        "import sys, gateway_service.app, gateway_service.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'safetensors', 'transformers', 'tokenizers', 'matplotlib', 'regex', 'tqdm', 'numpy'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stdout
