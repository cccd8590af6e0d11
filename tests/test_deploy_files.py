"""The deployment files: the compose file validates and every image is pinned."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
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


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_file_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "--env-file", str(ROOT / ".env.example"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


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


def test_secrets_have_no_defaults_and_make_up_generates_them() -> None:
    text = COMPOSE.read_text()
    makefile = (ROOT / "Makefile").read_text()
    for name in ("MINIO_ROOT_PASSWORD", "SOPPU_SERVE_SECRET_KEY", "SOPPU_WRITE_SECRET_KEY", "SOPPU_ADMIN_KEY"):
        assert f"${{{name}:?" in text, name  # refuses to start without a value
        assert name in makefile, f"make up does not generate {name}"


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
