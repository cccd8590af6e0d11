"""Service keys and revocation (admin): ``POST /v1/keys``, ``DELETE /v1/keys/{key_id}``. User keys are issued
under ``/v1/users/{user_id}/keys`` (``users.py``). A revocation is passed on to the gateways."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, BackgroundTasks

from soppu.auth import Role
from soppu.errors import ObjectNotFound

from ..access import Action, authorize
from ..deps import KeysDep, NotifierDep, PrincipalDep
from ..schemas import IssuedKey, KeyRequest, KeyRevoked
from ._common import errors

__all__ = ["router"]

router = APIRouter(tags=["Keys"])


@router.post(
    "/v1/keys",
    status_code=201,
    summary="Issue a service key (admin); the key is shown once",
    responses=errors(401, 403, 422),
)
async def issue_service_key(body: KeyRequest, principal: PrincipalDep, keys: KeysDep) -> IssuedKey:
    authorize(principal, Action.ADMIN)
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
