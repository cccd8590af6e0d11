"""Every service refuses a placeholder, empty or short secret at startup, naming the variable, never the value."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from compressor_service.settings import CompressorSettings
from gateway_service.settings import GatewaySettings
from inference_service.settings import EngineSettings

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "change-me-to-a-long-random-secret"  # .env.example's
_S3 = ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SOPPU_ADMIN_KEY", "SOPPU_STORE_URL")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _S3:
        monkeypatch.delenv(name, raising=False)


def _refusal(make: type, name: str, value: str, **kwargs: object) -> str:
    with pytest.raises(ValidationError) as caught:
        make(**kwargs)
    message = str(caught.value)
    assert name in message and value not in message, message
    return message


@pytest.mark.parametrize("settings", [CompressorSettings, GatewaySettings], ids=["compressor", "gateway"])
@pytest.mark.parametrize("value", [PLACEHOLDER, "", "short-key"])
def test_a_weak_admin_key_is_refused(monkeypatch: pytest.MonkeyPatch, settings: type, value: str) -> None:
    monkeypatch.setenv("SOPPU_ADMIN_KEY", value)
    _refusal(settings, "SOPPU_ADMIN_KEY", value or "input_value")
    monkeypatch.setenv("SOPPU_ADMIN_KEY", secrets.token_urlsafe(24))
    assert settings().admin_key is not None
    monkeypatch.delenv("SOPPU_ADMIN_KEY")
    assert settings().admin_key is None  # unset: no admin access, not an error


@pytest.mark.parametrize("settings", [CompressorSettings, GatewaySettings], ids=["compressor", "gateway"])
def test_a_weak_s3_secret_is_refused_for_an_s3_store(monkeypatch: pytest.MonkeyPatch, settings: type) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLACEHOLDER)
    _refusal(settings, "AWS_SECRET_ACCESS_KEY", PLACEHOLDER, store_url="s3://soppu")
    settings(store_url=str(ROOT / ".cache" / "no-store"))  # a directory store takes no S3 secret
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9000")  # moto in the tests and `soppu dev`
    settings(store_url="s3://soppu")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_urlsafe(32))
    settings(store_url="s3://soppu")


def test_the_engine_refuses_a_weak_s3_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minioadmin")
    _refusal(EngineSettings, "AWS_SECRET_ACCESS_KEY", "minioadmin")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_urlsafe(32))
    EngineSettings()


def test_the_gateway_process_exits_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k not in _S3}
    env |= {"SOPPU_ADMIN_KEY": PLACEHOLDER, "SOPPU_STORE_URL": str(ROOT / ".cache" / "no-store")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway_service", "--port", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "SOPPU_ADMIN_KEY" in result.stderr and PLACEHOLDER not in result.stderr + result.stdout
