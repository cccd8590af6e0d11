"""The compose files as the deployment tests read them: the files themselves, ``docker-compose config`` on them
(so interpolation and overrides count), and what a pinned image looks like."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEBUG = ROOT / "docker-compose.debug.yml"
ENV_EXAMPLE = ROOT / ".env.example"
MINIO = ROOT / "infra" / "minio"
HUB = ROOT / "docker-compose.hub.yml"
# A release tag or a digest; never a moving tag.
PINNED = re.compile(r"[^:@\s]+(:(?!latest$|main$|master$)[\w][\w.-]*)?(@sha256:[0-9a-f]{64})?")


def compose_services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def run_compose(*files: Path, quiet: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
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
def compose_config(*files: Path, bind: str | None = None) -> dict:
    result = run_compose(*files, **({"SOPPU_BIND_ADDRESS": bind} if bind else {}))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)
