"""soppu.secret_checks: placeholder, empty and short secrets are refused, by name, without quoting them."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from soppu.secret_checks import WeakSecret, check_s3_secret, check_secret, is_loopback_url, secret_problem

ROOT = Path(__file__).resolve().parents[2]


def _example_secrets() -> dict[str, str]:
    found = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#") and any(word in name for word in ("SECRET", "PASSWORD", "ADMIN_KEY")):
            found[name] = value
    return found


def test_every_secret_in_env_example_is_refused() -> None:
    found = _example_secrets()
    assert {"MINIO_ROOT_PASSWORD", "SOPPU_ADMIN_KEY", "SOPPU_WRITE_SECRET_KEY", "SOPPU_SERVE_SECRET_KEY"} <= set(found)
    for name, value in found.items():
        assert secret_problem(value) is not None, name


@pytest.mark.parametrize(
    "value",
    ["", "testing", "minioadmin", "change-me-to-a-long-random-secret", "CHANGEME-0123456789abcdef",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "short-secret", "a" * 40, "abababababababababab"],
)  # fmt: skip
def test_weak_values_are_refused_by_name_never_quoted(value: str) -> None:
    with pytest.raises(WeakSecret) as caught:
        check_secret("SOPPU_ADMIN_KEY", value)
    message = str(caught.value)
    assert message.startswith("SOPPU_ADMIN_KEY ") and caught.value.name == "SOPPU_ADMIN_KEY"
    assert not value or value not in message


def test_random_secrets_pass_and_unset_is_no_error() -> None:
    for _ in range(20):
        check_secret("SOPPU_ADMIN_KEY", secrets.token_urlsafe(24))
    check_secret("SOPPU_ADMIN_KEY", "test-admin-key-not-a-secret")  # what the compressor's tests use
    check_secret("SOPPU_ADMIN_KEY", None)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [("http://127.0.0.1:9000", True), ("http://localhost:9000", True), ("http://[::1]:9000", True),
     ("http://127.8.0.1", True), ("http://minio:9000", False), ("https://s3.amazonaws.com", False),
     ("http://0.0.0.0:9000", False), ("http://10.0.0.5:9000", False), (None, False), ("", False)],
)  # fmt: skip
def test_loopback_urls(url: str | None, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_s3_secret_is_checked_unless_the_endpoint_is_loopback() -> None:
    with pytest.raises(WeakSecret, match=r"^AWS_SECRET_ACCESS_KEY "):
        check_s3_secret({"S3_ENDPOINT_URL": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "testing"})
    with pytest.raises(WeakSecret, match=r"^AWS_SECRET_ACCESS_KEY is empty"):
        check_s3_secret({"AWS_SECRET_ACCESS_KEY": ""})  # AWS itself: always checked
    check_s3_secret({"S3_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_SECRET_ACCESS_KEY": "testing"})  # moto
    check_s3_secret({"S3_ENDPOINT_URL": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(32)})
    check_s3_secret({})  # boto3's other credential sources are not ours to judge
