"""Who may do what. The key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and is checked
against the bucket's key records (:class:`soppu.auth.KeyRing`) on every request, so a revocation holds at once.

======================================  =====  =======  ==================  ==========
action                                  admin  service  user (own user_id)  other user
======================================  =====  =======  ==================  ==========
upload; read jobs, adapters, reports    yes    yes      yes                 no
delete one of the user's adapters       yes    no       yes                 no
delete a user; keys; cohort refits      yes    no       no                  no
======================================  =====  =======  ==================  ==========

No key, or one that is unknown, malformed or revoked: 401 ``unauthorized``; a valid key without the right:
403 ``forbidden``. Keys are never logged; a principal carries only its key id.
"""

from __future__ import annotations

from enum import StrEnum

from fastapi import Request

from soppu.auth import Principal, Role

from .errors import ApiError

__all__ = ["Action", "authorize", "presented_key"]


class Action(StrEnum):
    READ = "read"
    UPLOAD = "upload"
    DELETE_ADAPTER = "delete_adapter"
    ADMIN = "admin"


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return request.headers.get("x-api-key") or None


def authorize(principal: Principal, action: Action, user_id: str | None = None) -> None:
    """Raise 403 ``forbidden`` unless ``principal`` may do ``action`` (for ``user_id``, when it names one)."""
    if principal.is_admin:
        return
    own = principal.role is Role.USER and user_id is not None and principal.user_id == user_id
    acts_for = principal.role is Role.SERVICE or (user_id is not None and principal.can_act_for(user_id))
    allowed = {
        Action.READ: acts_for,
        Action.UPLOAD: acts_for,
        Action.DELETE_ADAPTER: own,
        Action.ADMIN: False,
    }[action]
    if not allowed:
        target = f" for user {user_id!r}" if user_id is not None else ""
        raise ApiError("forbidden", f"a {principal.role.value} key may not {action.value}{target}")
