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
