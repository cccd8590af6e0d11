"""Typed dependencies the routes declare: the running :class:`Gateway` (kept on ``app.state`` by
:func:`gateway_service.app.create_app`, never a module global) and the authenticated :class:`Call`.

A key is read from ``Authorization: Bearer <key>`` or, failing that, ``X-API-Key``; both are declared as
security schemes so the OpenAPI schema shows them. :func:`presented_key` and :func:`make_call` are the same
readings without FastAPI's dependency machinery, for the generation routes' fast lane
(:mod:`gateway_service.lane`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from soppu.auth import Principal

from .errors import Forbidden, NoBackend, Unauthorized
from .service import Call, Gateway

__all__ = ["AdminDep", "CallDep", "GatewayDep", "get_call", "get_gateway", "make_call", "presented_key"]

_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer sk-soppu-...`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key, as a header of its own")
# W3C trace context: version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is None:  # before startup has finished or after shutdown has begun
        raise NoBackend("the gateway is not running")
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_principal(
    gateway: GatewayDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    principal = await gateway.keys.authenticate(bearer.credentials if bearer else api_key)
    if principal is None:
        raise Unauthorized()
    return principal


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>`` (read as :class:`HTTPBearer` reads it: any
    case of ``bearer``, the key stripped), else ``X-API-Key``; None when neither is there."""
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme and credentials and scheme.lower() == "bearer":
            return credentials
    return api_key or None


def upstream_headers(request_id: str, traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """Everything a backend is told besides the body: nothing of the client's but trace context."""
    headers = {"content-type": "application/json", "x-request-id": request_id}
    if traceparent and _TRACEPARENT.fullmatch(traceparent):
        headers["traceparent"] = traceparent
        if tracestate and len(tracestate) <= 512:
            headers["tracestate"] = tracestate
    return headers


def make_call(gateway: Gateway, principal: Principal, state: dict[str, Any], headers: Mapping[str, str]) -> Call:
    """The :class:`Call` of a request whose ASGI ``state`` the edge filled in; ``headers``: the client's
    ``traceparent`` and ``tracestate``, if sent."""
    forwarded = upstream_headers(state["request_id"], headers.get("traceparent"), headers.get("tracestate"))
    return Call(gateway, principal, state, forwarded)


async def get_call(
    request: Request, gateway: GatewayDep, principal: Annotated[Principal, Depends(get_principal)]
) -> Call:
    return make_call(gateway, principal, request.scope["state"], request.headers)


CallDep = Annotated[Call, Depends(get_call)]


async def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this route needs the admin key")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
