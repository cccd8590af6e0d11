"""API keys (soppu.auth) over a store that counts its reads: what a bad key costs, and a key issued while its
user is being deleted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from soppu.auth import KeyRing, Role, UserDeleted, format_key, parse_key
from soppu.store import LocalStore
from soppu.store.base import ObjectInfo, StoredObject
from soppu.store.layout import key_index_prefix, key_record_key


class CountingStore(LocalStore):
    """A local store that counts ``get`` calls and can run a hook right after a put of a chosen key prefix."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets = 0
        self.after_put: tuple[str, Callable[[], None]] | None = None

    def get(self, key: str) -> StoredObject:
        self.gets += 1
        return super().get(key)

    def put(self, key: str, data: object, *, create_only: bool = False) -> ObjectInfo:
        info = super().put(key, data, create_only=create_only)  # type: ignore[arg-type]
        if self.after_put is not None and key.startswith(self.after_put[0]):
            hook, self.after_put = self.after_put[1], None
            hook()
        return info


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_issued_keys_parse_and_altered_ones_do_not(tmp_path: Path) -> None:
    key, record = KeyRing(LocalStore(tmp_path)).issue(Role.SERVICE)
    assert parse_key(key) is not None and parse_key(key)[0] == record.key_id  # type: ignore[index]
    secret = parse_key(key)[1]  # type: ignore[index]
    assert key == format_key(record.key_id, secret)
    for altered in (key[:-1] + ("0" if key[-1] != "0" else "1"), key + "0", key[:-9] + key[-8:], key.upper()):
        assert parse_key(altered) is None, altered


def test_malformed_keys_cost_no_store_read(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    ring = KeyRing(store, "the-admin-key")
    bad = [
        "sk-soppu-0123456789abcdef.wrong",
        format_key("0123456789abcdef", "s" * 43)[:-1] + "x",  # checksum broken
        "sk-soppu-" + "0" * 60,
        "the-admin-kez",
        "",
    ]
    assert all(ring.authenticate(key) is None for key in bad)
    assert ring.authenticate("the-admin-key") is not None
    assert store.gets == 0


def test_an_unknown_well_formed_id_costs_one_read_per_ttl(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    clock = FakeClock()
    ring = KeyRing(store, unknown_ttl_s=10, max_unknown=2, clock=clock)
    forged = [format_key(f"{n:016x}", "s" * 43) for n in range(3)]
    for _ in range(5):
        assert ring.authenticate(forged[0]) is None
    assert store.gets == 1
    clock.now = 11  # the TTL has passed: read again
    assert ring.authenticate(forged[0]) is None
    assert store.gets == 2
    for key in forged:  # the set is bounded: a third id pushes out the oldest
        ring.authenticate(key)
    assert store.gets == 4
    ring.authenticate(forged[0])
    assert store.gets == 5
    # A real key is read every time (a revocation holds at once) and a wrong secret for it is refused.
    key, record = ring.issue(Role.SERVICE)
    assert ring.authenticate(key) == record.principal
    assert ring.authenticate(format_key(record.key_id, "s" * 43)) is None
    ring.revoke(record.key_id)
    assert ring.authenticate(key) is None


def _delete_user(ring: KeyRing, store: LocalStore, user_id: str) -> None:
    """What soppu.registry.catalog.delete_user does to keys: revoke the indexed ones, sweep the index."""
    ring.revoke_user(user_id)
    store.delete_prefix(key_index_prefix(user_id))


@pytest.mark.parametrize("between", ["keys/", "key-index/"])
def test_a_key_issued_while_its_user_is_deleted_does_not_survive(tmp_path: Path, between: str) -> None:
    store = CountingStore(tmp_path)
    ring = KeyRing(store)
    store.after_put = (between, lambda: _delete_user(ring, store, "alice"))  # the deletion runs mid-issue
    with pytest.raises(UserDeleted, match="being deleted"):
        ring.issue(Role.USER, "alice")
    assert list(store.list("keys/")) == [] and list(store.list(key_index_prefix("alice"))) == []
    key, record = ring.issue(Role.USER, "alice")  # afterwards the id is a new user's
    assert ring.authenticate(key) == record.principal and store.exists(key_record_key(record.key_id))


def test_a_key_issued_while_a_deletion_is_under_way_is_withdrawn(tmp_path: Path) -> None:
    # The deletion has begun (its tombstone says so) but has not reached the keys yet: the index entry is still
    # there when the issue checks, and a later sweep would leave the record behind. The issue must withdraw.
    store = LocalStore(tmp_path)
    deleting = {"alice"}
    ring = KeyRing(store, deleting=deleting.__contains__)
    with pytest.raises(UserDeleted) as refused:
        ring.issue(Role.USER, "alice")
    assert refused.value.code == "user_deleted"
    assert list(store.list("keys/")) == [] and list(store.list(key_index_prefix("alice"))) == []
    assert ring.issue(Role.USER, "bob")[1].user_id == "bob"
    assert ring.issue(Role.SERVICE)[1].user_id is None  # a service key belongs to no user
