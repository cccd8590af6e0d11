"""Serving a service from its command line: the flags given override its settings, and uvicorn's options that
every service sets alike."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["given", "uvicorn_options"]


class _Listening(Protocol):
    host: str
    port: int
    keep_alive_s: int


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags given on the command line (argparse leaves the others None), as settings overrides: init
    arguments take precedence over the environment in pydantic-settings."""
    return {name: value for name, value in flags.items() if value is not None}


def uvicorn_options(settings: _Listening, log_level: str) -> dict[str, Any]:
    """``uvicorn.run``'s options from a service's settings. Keep-alive past uvicorn's 5 s default, which equals
    client pools' idle expiry (httpx: 5 s): a client could reuse a connection as the server closed it and lose
    the request."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "timeout_keep_alive": settings.keep_alive_s,
    }
