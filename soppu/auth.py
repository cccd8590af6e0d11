"""API keys: issuing, storing (hashed, in the bucket), authenticating and revoking.

A key reads ``sk-soppu-<key_id>.<secret><check>``: a 16-hex-digit id, a dot, a 43-character URL-safe secret,
then 8 hex digits of CRC-32 over ``<key_id>.<secret>``. The fixed shape and the checksum let every service
refuse a malformed or made-up key without a store read; a well-formed key whose id the bucket does not hold
costs one read, after which that id is remembered as unknown for ``unknown_ttl_s`` (a bounded set). The
checksum is public: it stops garbage and typos; a forged well-formed key still costs one read per new id.

Only ``sha256(secret)`` is stored, at ``keys/<key_id>.json``; a user's keys are also indexed under
``key-index/<user_id>/<key_id>`` so deleting a user revokes them all. The compressor issues keys and the
gateway authenticates with the same records, so a revoked key is refused by both at once. The admin key is not
stored: it comes from the environment (``SOPPU_ADMIN_KEY``).

Roles: ``admin`` (everything), ``service`` (an application backend acting for any user), ``user`` (only its own
``user_id``). Secrets never leave this module except in the one response that issues them; records and
principals carry only the key id.

A key issued while its user is being deleted must not outlive the deletion. :meth:`KeyRing.issue` writes the
index entry first and the record second, then checks that the index entry is still there and that no deletion
of the user is under way (``deleting``: the compressor reads the user's tombstone); if either fails, it removes
what it wrote and raises :class:`UserDeleted` (``user_deleted``). Either the deletion began after those checks,
so its revocation lists the index entry, or the issue sees it and withdraws: no order of the two leaves a key.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum

from soppu.errors import InvalidName, ObjectNotFound, SoppuError
from soppu.store.base import ObjectStore
from soppu.store.layout import check_name, key_index_key, key_index_prefix, key_record_key, parse_key_index_key

__all__ = [
    "KEY_PREFIX",
    "KeyRecord",
    "KeyRing",
    "Principal",
    "Role",
    "UserDeleted",
    "format_key",
    "holder",
    "parse_key",
]

KEY_PREFIX = "sk-soppu-"
_KEY = re.compile(re.escape(KEY_PREFIX) + r"([0-9a-f]{16})\.([A-Za-z0-9_-]{43})([0-9a-f]{8})")
_SECRET_BYTES = 32  # token_urlsafe(32): always 43 characters


class UserDeleted(SoppuError):
    """The user was being deleted while a key was issued for it; nothing of the key was kept."""

    code = "user_deleted"


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

    def verify(self, secret: str) -> bool:
        """Whether ``secret`` is this key's (constant time)."""
        return hmac.compare_digest(self.secret_sha256, _sha256(secret))


def holder(record: KeyRecord | None, secret: str) -> Principal | None:
    """Who presented ``secret`` for a key whose record is ``record`` (None: not stored): its principal, or None."""
    return record.principal if record is not None and record.verify(secret) else None


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check(key_id: str, secret: str) -> str:
    return f"{zlib.crc32(f'{key_id}.{secret}'.encode()):08x}"


def format_key(key_id: str, secret: str) -> str:
    """The presented form of a key: prefix, id, dot, secret and checksum."""
    return f"{KEY_PREFIX}{key_id}.{secret}{_check(key_id, secret)}"


def parse_key(presented: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key with a valid checksum, else None; never reads the store."""
    match = _KEY.fullmatch(presented)
    if match is None or not hmac.compare_digest(match[3], _check(match[1], match[2])):
        return None
    return match[1], match[2]


class _UnknownIds:
    """Key ids the store did not hold, each remembered for ``ttl_s``; at most ``max_ids``, the oldest forgotten
    first, so a flood of made-up ids costs memory in proportion to the bound, not to the flood."""

    def __init__(self, ttl_s: float, max_ids: int, clock: Callable[[], float]) -> None:
        self._ttl_s, self._max, self._clock = ttl_s, max_ids, clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # the compressor authenticates in worker threads

    def __contains__(self, key_id: str) -> bool:
        with self._lock:
            seen = self._seen.get(key_id)
            if seen is None:
                return False
            if self._clock() - seen < self._ttl_s:
                return True
            del self._seen[key_id]
            return False

    def add(self, key_id: str) -> None:
        if self._ttl_s <= 0:
            return
        with self._lock:
            self._seen[key_id] = self._clock()
            self._seen.move_to_end(key_id)
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)

    def discard(self, key_id: str) -> None:
        with self._lock:
            self._seen.pop(key_id, None)


class KeyRing:
    """Keys stored in ``store``; ``admin_key`` (if set) authenticates as admin without a record.

    Ids the store did not hold are remembered for ``unknown_ttl_s`` (0: not at all, for a caller that caches
    refusals itself); known keys are never cached here, so a revocation holds at once. ``deleting(user_id)``
    says whether a deletion of that user is under way (default: never)."""

    def __init__(
        self,
        store: ObjectStore,
        admin_key: str | None = None,
        *,
        unknown_ttl_s: float = 60.0,
        max_unknown: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        deleting: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self._store = store
        self._deleting = deleting
        self._admin_key = admin_key or None
        self._unknown = _UnknownIds(unknown_ttl_s, max_unknown, clock)

    def issue(self, role: Role, user_id: str | None = None) -> tuple[str, KeyRecord]:
        """A new key: (the plaintext, shown once; its record, stored hashed). :class:`UserDeleted` when a
        deletion of ``user_id`` ran while the key was being written."""
        if role is Role.USER:
            check_name(user_id or "", "user_id")
        elif user_id is not None:
            raise InvalidName(f"a {role.value} key acts for every user; it takes no user_id", field="user_id")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(_SECRET_BYTES)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        record = KeyRecord(key_id, role, user_id, _sha256(secret), now)
        if user_id is not None:
            # The index first: a key whose index entry is missing could survive its user's deletion.
            self._store.put(key_index_key(user_id, key_id), b"{}", create_only=True)
        self._store.put(key_record_key(key_id), record.to_json(), create_only=True)
        self._unknown.discard(key_id)
        if user_id is not None and (not self._store.exists(key_index_key(user_id, key_id)) or self._deleting(user_id)):
            # A deletion of this user is under way, or revoked or swept the index entry between the two puts:
            # a record it may not have seen must go too, or the key would outlive its user.
            self._store.delete(key_record_key(key_id))
            self._store.delete(key_index_key(user_id, key_id))
            raise UserDeleted(f"user {user_id!r} is being deleted; no key was issued")
        return format_key(key_id, secret), record

    def admin(self, presented: str) -> Principal | None:
        """The admin principal if ``presented`` is the admin key (constant time), else None."""
        if self._admin_key is not None and hmac.compare_digest(presented.encode(), self._admin_key.encode()):
            return Principal(Role.ADMIN, None, "admin")
        return None

    def screen(self, presented: str | None) -> Principal | tuple[str, str] | None:
        """Authentication's first step, which reads no store: the admin principal; else the (key id, secret) of a
        well-formed key, whose record is then looked up (:func:`holder`); else None, for a key that can never be
        valid. The gateway's cache runs the same steps around its own lookup."""
        if not presented:
            return None
        return self.admin(presented) or parse_key(presented)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal a presented key stands for, or None (unknown, malformed or revoked)."""
        screened = self.screen(presented)
        if not isinstance(screened, tuple):
            return screened
        key_id, secret = screened
        return holder(self.lookup(key_id), secret)

    def lookup(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id``; an id found missing is not read again for ``unknown_ttl_s``."""
        if key_id in self._unknown:
            return None
        record = self.get(key_id)
        if record is None:
            self._unknown.add(key_id)
        return record

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
        parsed = (parse_key_index_key(info.key) for info in self._store.list(key_index_prefix(user_id)))
        return [key_id for user, key_id in filter(None, parsed) if user == user_id]

    def revoke_user(self, user_id: str) -> list[str]:
        """Revoke every key of ``user_id``; the revoked key ids."""
        revoked = []
        for key_id in self.user_keys(user_id):
            self._store.delete(key_record_key(key_id))
            self._store.delete(key_index_key(user_id, key_id))
            revoked.append(key_id)
        return revoked
