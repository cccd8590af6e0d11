"""The object-store contract of soppu.store.base, run against both backends (local directory, moto S3): round
trips, listing, deletion, etags, create-only and conditional writes. (Races: test_store_races.py; keys and each
backend's own edges: test_store_backends.py.)"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from soppu.errors import InvalidName, ObjectChanged, ObjectExists, ObjectNotFound
from soppu.store import ObjectStore, S3Store


class _OneWayStream(io.BytesIO):
    """A pipe-like stream: S3 needs a length up front, so the backend must spool it."""

    def seekable(self) -> bool:
        return False


@pytest.mark.parametrize("kind", ["bytes", "file", "stream", "path", "bytearray"])
def test_put_get_head_round_trip(store: ObjectStore, tmp_path: Path, kind: str) -> None:
    payload = bytes(range(256)) * 5000  # over 1 MiB, so chunked copies take more than one chunk
    data: Any = {
        "bytes": payload,
        "file": io.BytesIO(payload),
        "stream": _OneWayStream(payload),
        "bytearray": bytearray(payload),
    }.get(kind)
    if kind == "path":
        data = tmp_path / "src.bin"
        data.write_bytes(payload)
    info = store.put("u/alice/adapter.safetensors", data)
    assert info.key == "u/alice/adapter.safetensors"
    assert info.size == len(payload)
    got = store.get("u/alice/adapter.safetensors")
    assert got.data == payload
    assert got.info == info
    assert store.head("u/alice/adapter.safetensors") == info
    assert store.exists("u/alice/adapter.safetensors")
    assert store.url.startswith("s3://" if isinstance(store, S3Store) else "file:///")


def test_put_from_file_object_starts_at_its_position_and_empty_objects(store: ObjectStore) -> None:
    stream = io.BytesIO(b"headerBODY")
    stream.seek(6)
    assert store.put("k", stream).size == 4
    assert store.get("k").data == b"BODY"
    assert store.put("empty", b"").size == 0
    assert store.get("empty").data == b""


def test_missing_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as exc:
        store.get("no/such/key")
    assert exc.value.code == "not_found"
    with pytest.raises(ObjectNotFound):
        store.head("no/such/key")
    assert not store.exists("no/such/key")


def test_list_is_a_sorted_string_prefix_listing(store: ObjectStore) -> None:
    keys = ["a/u2/x", "a/u10/y", "a/u1/z/w", "b/x", "a-b", "a/u1/x"]
    for i, key in enumerate(keys):
        store.put(key, b"x" * i)
    assert [i.key for i in store.list("a/u1")] == ["a/u1/x", "a/u1/z/w", "a/u10/y"]
    assert [i.key for i in store.list("a/u1/")] == ["a/u1/x", "a/u1/z/w"]
    assert [i.key for i in store.list()] == sorted(keys)
    assert list(store.list("nothing")) == []
    assert list(store.list("a/u3/")) == []
    sizes = {i.key: i.size for i in store.list("")}
    assert sizes == {key: i for i, key in enumerate(keys)}
    assert {i.key: i for i in store.list("a/")}["a/u2/x"] == store.head("a/u2/x")
    with pytest.raises(InvalidName):
        store.list("../")  # at the call, before any iteration


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("d/k", b"1")
    store.delete("d/k")
    store.delete("d/k")
    store.delete("never/existed")
    with pytest.raises(ObjectNotFound):
        store.get("d/k")
    assert list(store.list("d/")) == []


def test_delete_prefix(store: ObjectStore) -> None:
    for key in ["u/1/a", "u/1/b/c", "u/10/a", "u/2/a"]:
        store.put(key, b"x")
    assert store.delete_prefix("u/1/") == ["u/1/a", "u/1/b/c"]
    assert [i.key for i in store.list("u/")] == ["u/10/a", "u/2/a"]
    store.put("u/1/a", b"again")  # the pruned directories come back
    assert store.get("u/1/a").data == b"again"


def test_etag_changes_on_overwrite(store: ObjectStore) -> None:
    first = store.put("k", b"A" * 100)
    second = store.put("k", b"B" * 100)  # same size: the ETag must not depend on size alone
    assert first.etag != second.etag
    assert store.head("k").etag == second.etag
    assert store.get("k").info.etag == second.etag
    for _ in range(5):
        a = store.put("k", b"A" * 100)
        b = store.put("k", b"B" * 100)
        assert a.etag != b.etag


def test_create_only(store: ObjectStore) -> None:
    first = store.put("c", b"first", create_only=True)
    with pytest.raises(ObjectExists) as exc:
        store.put("c", b"second", create_only=True)
    assert exc.value.code == "already_exists"
    got = store.get("c")
    assert got.data == b"first"
    assert got.info == first
    store.delete("c")
    store.put("c", b"third", create_only=True)
    assert store.get("c").data == b"third"


def test_conditional_put(store: ObjectStore) -> None:
    first = store.put("p", b"one")
    second = store.put("p", b"two", if_match=first.etag)
    assert store.get("p").data == b"two" and second.etag != first.etag
    with pytest.raises(ObjectChanged) as exc:
        store.put("p", b"stale", if_match=first.etag)  # written from a version that is gone
    assert exc.value.code == "object_changed" and store.get("p").info == store.head("p")
    assert store.get("p").data == b"two"
    with pytest.raises(ObjectNotFound):
        store.put("nothing-here", b"x", if_match=first.etag)
    assert not store.exists("nothing-here")
    with pytest.raises(ValueError):
        store.put("p", b"x", create_only=True, if_match=second.etag)
