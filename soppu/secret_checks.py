"""Startup checks on configured secrets: a placeholder, empty or short secret is refused.

Every service that takes a secret (the admin key ``SOPPU_ADMIN_KEY``; the S3 secret key
``AWS_SECRET_ACCESS_KEY`` that boto3 reads) calls these checks from its settings class, so a process started with
the values of ``.env.example`` stops at once. The error names the variable and why it was refused, never the
value.

The rule, for a secret that is set:

- refused if empty, shorter than :data:`MIN_SECRET_LENGTH` characters, made of fewer than
  :data:`MIN_DISTINCT_CHARACTERS` distinct characters, a well-known default (``minioadmin``, ``password``,
  moto's ``testing`` ...), or a placeholder (anything containing ``change-me``, ``changeme``, ``placeholder``,
  ``example`` ...: every secret in ``.env.example`` is one);
- S3 credentials are checked unless ``S3_ENDPOINT_URL`` is a loopback URL (``127.0.0.1``, ``::1``,
  ``localhost``): the tests and ``soppu dev`` run moto there, which takes any credentials and only this
  machine reaches. The compose stack (``http://minio:9000``) and AWS itself (no endpoint) are always checked.

An unset admin key is no error (it means "no admin access"); an unset ``AWS_SECRET_ACCESS_KEY`` leaves boto3's
other credential sources (files, instance roles) to themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = [
    "MIN_DISTINCT_CHARACTERS",
    "MIN_SECRET_LENGTH",
    "WeakSecret",
    "check_s3_secret",
    "check_secret",
    "check_service_secrets",
    "is_loopback_url",
    "secret_problem",
]

MIN_SECRET_LENGTH = 16
MIN_DISTINCT_CHARACTERS = 6
ADMIN_KEY_VARIABLE = "SOPPU_ADMIN_KEY"
S3_SECRET_VARIABLE = "AWS_SECRET_ACCESS_KEY"

# Exact values (compared lower-cased) that are public defaults somewhere: MinIO's, moto's, ours, the usual ones.
_KNOWN_DEFAULTS = frozenset(
    {"minioadmin", "minio123", "password", "secret", "admin", "testing", "test", "soppu-dev", "soppu-admin"}
)
# Fragments (lower-cased) that mark a value as a placeholder to be replaced; AWS's documented example secret
# ends in EXAMPLEKEY.
_PLACEHOLDER_FRAGMENTS = (
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "placeholder",
    "example",
    "your-secret",
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class WeakSecret(ValueError):
    """A configured secret that must not be used. Its message names the variable, never the value."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"{name} {reason}: set it to a long random value (`make up` writes one to .env; "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
        )
        self.name = name
        self.reason = reason


def secret_problem(value: str) -> str | None:
    """Why ``value`` cannot serve as a secret, or None if it can. The reason never quotes the value."""
    if not value:
        return "is empty"
    lowered = value.lower()
    if lowered in _KNOWN_DEFAULTS or any(fragment in lowered for fragment in _PLACEHOLDER_FRAGMENTS):
        return "is a placeholder or a well-known default"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is too short ({len(value)} characters; at least {MIN_SECRET_LENGTH})"
    if len(set(value)) < MIN_DISTINCT_CHARACTERS:
        return f"is too regular (fewer than {MIN_DISTINCT_CHARACTERS} distinct characters)"
    return None


def check_secret(name: str, value: str | None) -> None:
    """Raise :class:`WeakSecret` naming ``name`` if ``value`` is set but no secret; None (unset) passes."""
    if value is None:
        return
    problem = secret_problem(value)
    if problem is not None:
        raise WeakSecret(name, problem)


def is_loopback_url(url: str | None) -> bool:
    """True for an http(s) URL whose host is a loopback address or name."""
    if not url:
        return False
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_s3_secret(environ: Mapping[str, str]) -> None:
    """Check the S3 secret key boto3 will read from ``environ``, unless the endpoint is loopback (see above)."""
    if is_loopback_url(environ.get("S3_ENDPOINT_URL")):
        return
    check_secret(S3_SECRET_VARIABLE, environ.get(S3_SECRET_VARIABLE))


def check_service_secrets(admin_key: str | None, store_url: str, environ: Mapping[str, str]) -> None:
    """What a service holding the admin key and a store checks at startup: the admin key, and the S3 secret
    when the store is S3."""
    check_secret(ADMIN_KEY_VARIABLE, admin_key)
    if store_url.startswith("s3://"):
        check_s3_secret(environ)
