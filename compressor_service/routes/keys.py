"""Service keys and revocation (admin): ``POST /v1/keys``, ``DELETE /v1/keys/{key_id}``. User keys are issued
under ``/v1/users/{user_id}/keys`` (``users.py``). A revocation is passed on to the gateways.

``POST /v1/keys`` reads its JSON body only once the caller is known to be an admin: FastAPI reads a declared
body parameter before any dependency runs, so an anonymous caller could make the service read (and hold) a body
before the 401. The body is read by hand instead, after :func:`authorize`, and it is capped at the edge
(``max_json_bytes``)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from soppu.auth import Role
from soppu.errors import ObjectNotFound

from ..access import Action, authorize
from ..deps import KeysDep, NotifierDep, PrincipalDep
from ..schemas import IssuedKey, KeyRequest, KeyRevoked
from ._common import errors

__all__ = ["router"]

router = APIRouter(tags=["Keys"])


_KEY_REQUEST_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": KeyRequest.model_json_schema()}}}
}


async def _key_request(request: Request) -> KeyRequest:
    try:
        return KeyRequest.model_validate_json(await request.body())
    except ValidationError as e:
        # Named as FastAPI names a declared body's problems: "body.role: ..."
        problems = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(problems) from e


@router.post(
    "/v1/keys",
    status_code=201,
    summary="Issue a service key (admin); the key is shown once",
    responses=errors(401, 403, 413, 422),
    openapi_extra=_KEY_REQUEST_BODY,
)
async def issue_service_key(request: Request, principal: PrincipalDep, keys: KeysDep) -> IssuedKey:
    authorize(principal, Action.ADMIN)
    body = await _key_request(request)  # only now: nobody but an admin makes the service read a body
    key, record = await asyncio.to_thread(keys.issue, Role(body.role))
    return IssuedKey(key=key, key_id=record.key_id, role=record.role.value, user_id=record.user_id)


@router.delete(
    "/v1/keys/{key_id}",
    summary="Revoke a key (admin); gateways are told at once",
    responses=errors(401, 403, 404, 422),
)
async def revoke_key(
    key_id: str, principal: PrincipalDep, keys: KeysDep, notifier: NotifierDep, background: BackgroundTasks
) -> KeyRevoked:
    authorize(principal, Action.ADMIN)
    if not await asyncio.to_thread(keys.revoke, key_id):
        raise ObjectNotFound(f"no key {key_id!r}")
    background.add_task(notifier.invalidate, key_ids=[key_id])
    return KeyRevoked(key_id=key_id)
