"""The type of a Redis URL setting, shared by the services that reach Redis (the gateway's limits and the
compressor's invalidations): a secret, since the URL may carry a password, and never quoted in an error."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, SecretStr

__all__ = ["SCHEMES", "RedisUrl"]

SCHEMES = ("redis://", "rediss://", "unix://")


def _check(url: SecretStr) -> SecretStr:
    value = url.get_secret_value()
    if value and not value.startswith(SCHEMES):
        raise ValueError(f"a Redis URL must start with {', '.join(SCHEMES)}")  # never quote it: a secret
    return url


RedisUrl = Annotated[SecretStr, AfterValidator(_check)]
"""``redis://[:password@]host:port[/db]`` (or ``rediss://``, ``unix://``); empty means no Redis."""
