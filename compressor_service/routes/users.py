"""A user as a whole (admin): ``DELETE /v1/users/{user_id}`` (every object of theirs, their keys, and the refits
that take their data out of shared bases) and ``POST /v1/users/{user_id}/keys``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, BackgroundTasks

from soppu.auth import Role
from soppu.store.layout import check_name

from ..access import Action, authorize
from ..deps import KeysDep, NotifierDep, PipelineDep, PrincipalDep
from ..schemas import IssuedKey, UserDeleted
from ..views import remove_user
from ._common import errors

__all__ = ["router"]

router = APIRouter(tags=["Users"])


@router.delete(
    "/v1/users/{user_id}",
    summary="Delete a user: adapters, versions, jobs, keys; refit the cohorts their data helped fit (admin)",
    responses=errors(401, 403, 422),
)
async def delete_user(
    user_id: str,
    principal: PrincipalDep,
    pipeline: PipelineDep,
    keys: KeysDep,
    notifier: NotifierDep,
    background: BackgroundTasks,
) -> UserDeleted:
    authorize(principal, Action.ADMIN)
    check_name(user_id, "user_id")
    result = await asyncio.to_thread(remove_user, pipeline, keys, user_id)
    background.add_task(notifier.invalidate, user_id=user_id, key_ids=result["revoked_keys"])
    return UserDeleted(user_id=user_id, **result)


@router.post(
    "/v1/users/{user_id}/keys",
    status_code=201,
    summary="Issue a key for this user (admin); the key is shown once",
    responses=errors(401, 403, 422),
)
async def issue_user_key(user_id: str, principal: PrincipalDep, keys: KeysDep) -> IssuedKey:
    authorize(principal, Action.ADMIN)
    key, record = await asyncio.to_thread(keys.issue, Role.USER, user_id)
    return IssuedKey(key=key, key_id=record.key_id, role=record.role.value, user_id=record.user_id)
