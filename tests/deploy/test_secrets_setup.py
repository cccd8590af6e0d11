"""The stack's secrets: compose needs each one with no default, ``make up`` (infra/write_env.py) writes them at
random and completes an old .env, and MinIO's init script refuses placeholders, then creates the three users and
the metrics token (run against a fake ``mc``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from soppu.secret_checks import secret_problem
from tests.deploy.compose import COMPOSE, ENV_EXAMPLE, MINIO, ROOT
from tests.support.infra import load_write_env


def test_secrets_have_no_defaults_and_make_up_generates_them() -> None:
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+(?:PASSWORD|SECRET_KEY|ADMIN_KEY)):\?", text))
    assert required == set(load_write_env().SECRETS)  # every secret compose needs, make up writes, and no other
    assert "infra/write_env.py" in (ROOT / "Makefile").read_text()


def test_make_up_writes_random_secrets_and_completes_an_old_env(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_env = load_write_env()
    env = tmp_path / ".env"
    write_env.main([str(env), "--example", str(ENV_EXAMPLE)])
    first = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line and line[0] != "#")
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    for name in write_env.SECRETS:
        assert secret_problem(first[name]) is None, name
        assert first[name] not in capsys.readouterr().out
    assert len({first[name] for name in write_env.SECRETS}) == len(write_env.SECRETS)
    before = env.read_text()
    assert write_env.complete(env, ENV_EXAMPLE) == [] and env.read_text() == before  # idempotent
    # An old .env: a placeholder and a missing secret are filled in; a good secret and local edits are kept.
    env.write_text("SOPPU_ADMIN_KEY=change-me-to-a-long-random-secret\nMINIO_ROOT_PASSWORD=kept-0123456789-abcdef\n")
    written = write_env.complete(env, ENV_EXAMPLE)
    assert "SOPPU_ADMIN_KEY" in written and "SOPPU_GATEWAY_S3_SECRET_KEY" in written
    assert "MINIO_ROOT_PASSWORD" not in written and "MINIO_ROOT_PASSWORD=kept-0123456789-abcdef" in env.read_text()
    assert "change-me" not in env.read_text()


def _fake_mc(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mc = bin_dir / "mc"
    mc.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$MC_LOG"\n'
        'case "$*" in *"prometheus generate"*) printf \'{\\n "jobName": "minio-job",\\n'
        ' "bearerToken": "eyJ.fake.jwt",\\n "metricsPath": "/minio/v2/metrics/cluster"\\n}\\n\' ;; esac\n'
    )
    mc.chmod(0o755)
    return bin_dir


def _init(tmp_path: Path, **secrets: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "metrics").mkdir(exist_ok=True)
    env = {
        "PATH": f"{_fake_mc(tmp_path)}:{os.environ['PATH']}",
        "MC_LOG": str(tmp_path / "mc.log"),
        "POLICY_DIR": str(MINIO),
        "METRICS_DIR": str(tmp_path / "metrics"),
        "WORK_DIR": str(tmp_path),
        "MINIO_ROOT_USER": "soppu-admin",
        "SOPPU_BUCKET": "my-bucket",
        "SOPPU_SERVE_ACCESS_KEY": "soppu-server",
        "SOPPU_WRITE_ACCESS_KEY": "soppu-writer",
        "SOPPU_GATEWAY_S3_ACCESS_KEY": "soppu-gateway",
        **secrets,
    }
    return subprocess.run(["sh", str(MINIO / "init.sh")], env=env, capture_output=True, text=True, check=False)


_INIT_SECRETS = (
    "MINIO_ROOT_PASSWORD",
    "SOPPU_SERVE_SECRET_KEY",
    "SOPPU_WRITE_SECRET_KEY",
    "SOPPU_GATEWAY_S3_SECRET_KEY",
)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_minio_init_refuses_placeholder_secrets(tmp_path: Path) -> None:
    weak = {name: "change-me-to-a-long-random-secret" for name in _INIT_SECRETS} | {"SOPPU_SERVE_SECRET_KEY": "short"}
    result = _init(tmp_path, **weak)
    assert result.returncode == 1
    assert all(name in result.stderr for name in _INIT_SECRETS)
    assert "change-me-to" not in result.stderr and "short" not in result.stderr.replace("shorter", "")
    assert not (tmp_path / "mc.log").exists()  # stopped before touching MinIO


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_minio_init_creates_three_users_and_the_metrics_token(tmp_path: Path) -> None:
    result = _init(tmp_path, **{name: f"{name.lower()}-0123456789abcdef" for name in _INIT_SECRETS})
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    for policy, user in (("lorax-readonly", "soppu-server"), ("gateway-readonly", "soppu-gateway"),
                         ("compressor-readwrite", "soppu-writer")):  # fmt: skip
        assert f"admin policy create soppu {policy} {tmp_path}/{policy}.json" in calls
        assert f"admin policy attach soppu {policy} --user {user}" in calls
        rendered = (tmp_path / f"{policy}.json").read_text()
        assert "BUCKET" not in rendered and "arn:aws:s3:::my-bucket" in rendered
        assert json.loads(rendered) == json.loads((MINIO / f"{policy}.json").read_text().replace("BUCKET", "my-bucket"))
    assert (tmp_path / "metrics" / "token").read_text() == "eyJ.fake.jwt"
