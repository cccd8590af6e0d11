"""API keys: issuing, storing (hashed, in the bucket), authenticating and revoking.

A key reads ``sk-soppu-<key_id>.<secret>``. Only ``sha256(secret)`` is stored, at ``keys/<key_id>.json``; a user's
keys are also indexed under ``key-index/<user_id>/<key_id>`` so deleting a user revokes them all. The
compressor issues keys and the gateway authenticates with the same records, so a revoked key is refused by
both at once. The admin key is not stored: it comes from the environment (``SOPPU_ADMIN_KEY``).

Roles: ``admin`` (everything), ``service`` (an application backend acting for any user), ``user`` (only its own
``user_id``). Secrets never leave this module except in the one response that issues them; records and
principals carry only the key id.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from enum import StrEnum

from soppu.errors import InvalidName, ObjectNotFound
from soppu.store.base import ObjectStore
from soppu.store.layout import check_name, key_index_key, key_index_prefix, key_record_key

__all__ = ["KEY_PREFIX", "KeyRecord", "KeyRing", "Principal", "Role"]

KEY_PREFIX = "sk-soppu-"


class Role(StrEnum):
    ADMIN = "admin"
    SERVICE = "service"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as. ``key_id`` is safe to log; the secret never is."""

    role: Role
    user_id: str | None
    key_id: str

    def can_act_for(self, user_id: str) -> bool:
        return self.role in (Role.ADMIN, Role.SERVICE) or self.user_id == user_id

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    role: Role
    user_id: str | None
    secret_sha256: str
    created_at: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> KeyRecord:
        raw = json.loads(data)
        return cls(raw["key_id"], Role(raw["role"]), raw.get("user_id"), raw["secret_sha256"], raw["created_at"])

    @property
    def principal(self) -> Principal:
        return Principal(self.role, self.user_id, self.key_id)


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(presented: str) -> tuple[str, str] | None:
    if not presented.startswith(KEY_PREFIX):
        return None
    key_id, dot, secret = presented[len(KEY_PREFIX) :].partition(".")
    if not dot or not secret or len(key_id) != 16 or not all(c in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


class KeyRing:
    """Keys stored in ``store``; ``admin_key`` (if set) authenticates as admin without a record."""

    def __init__(self, store: ObjectStore, admin_key: str | None = None) -> None:
        self._store = store
        self._admin_key = admin_key or None

    def issue(self, role: Role, user_id: str | None = None) -> tuple[str, KeyRecord]:
        """A new key: (the plaintext, shown once; its record, stored hashed)."""
        if role is Role.USER:
            check_name(user_id or "", "user_id")
        elif user_id is not None:
            raise InvalidName(f"a {role.value} key acts for every user; it takes no user_id", field="user_id")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        record = KeyRecord(key_id, role, user_id, _sha256(secret), now)
        if user_id is not None:
            # The index first: a key whose index entry is missing could survive its user's deletion.
            self._store.put(key_index_key(user_id, key_id), b"{}", create_only=True)
        self._store.put(key_record_key(key_id), record.to_json(), create_only=True)
        return f"{KEY_PREFIX}{key_id}.{secret}", record

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal a presented key stands for, or None (unknown, malformed or revoked)."""
        if not presented:
            return None
        if self._admin_key is not None and hmac.compare_digest(presented.encode(), self._admin_key.encode()):
            return Principal(Role.ADMIN, None, "admin")
        parts = _split(presented)
        if parts is None:
            return None
        record = self.get(parts[0])
        if record is None or not hmac.compare_digest(record.secret_sha256, _sha256(parts[1])):
            return None
        return record.principal

    def get(self, key_id: str) -> KeyRecord | None:
        try:
            return KeyRecord.from_json(self._store.get(key_record_key(key_id)).data)
        except ObjectNotFound:
            return None

    def revoke(self, key_id: str) -> bool:
        record = self.get(key_id)
        if record is None:
            return False
        self._store.delete(key_record_key(key_id))
        if record.user_id is not None:
            self._store.delete(key_index_key(record.user_id, key_id))
        return True

    def user_keys(self, user_id: str) -> list[str]:
        prefix = key_index_prefix(user_id)
        return [info.key[len(prefix) :] for info in self._store.list(prefix)]

    def revoke_user(self, user_id: str) -> list[str]:
        """Revoke every key of ``user_id``; the revoked key ids."""
        revoked = []
        for key_id in self.user_keys(user_id):
            self._store.delete(key_record_key(key_id))
            self._store.delete(key_index_key(user_id, key_id))
            revoked.append(key_id)
        return revoked
