"""Every service's HTTP edge, as its ``python -m`` launch builds it: uvicorn keeps idle connections longer than
client pools do (uvicorn's own 5 s equals httpx's pool expiry, so a reused connection could be closed under a
request), and the app sits behind the request-body guard with the service's deadline."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from soppu.protocol.request_body import BodyGuard

SERVICES = ("compressor_service", "gateway_service", "inference_service")
CLIENT_POOL_IDLE_S = 5.0  # httpx's default keepalive_expiry; requests/urllib3 and browsers keep less or similar


@pytest.mark.parametrize("service", SERVICES)
def test_the_launch_outlasts_client_pools_and_guards_bodies(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    launch = importlib.import_module(f"{service}.__main__")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(launch.uvicorn, "run", lambda app, **options: seen.update(app=app, **options))
    launch.main([])
    assert seen["timeout_keep_alive"] > CLIENT_POOL_IDLE_S
    guards = [m for m in seen["app"].user_middleware if m.cls is BodyGuard]
    assert len(guards) == 1 and guards[0].kwargs["timeout_s"] == seen["app"].state.settings.body_timeout_s
