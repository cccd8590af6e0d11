"""Keys and each object-store backend's own edges: invalid keys refused on both; the local store never writes
outside its root and hides its temporary files; S3 unreachable or without its bucket is unavailable, and keeps its
secret out of its repr; open_store builds either from a URL."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from soppu.errors import InvalidName, ObjectExists, ObjectNotFound, StoreError, StoreUnavailable
from soppu.store import LocalStore, ObjectStore, S3Store, open_store

TEST_CREDENTIALS = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}
INVALID_KEYS = ["../x", "/abs", "a//b", "a/./b", ".hidden", "a\\b", "", "a/", "a/../b", "sp ace"]


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidName):
        store.put(key, b"x")
    for op in (store.get, store.head, store.delete):
        with pytest.raises(InvalidName):
            op(key)
    assert list(store.list()) == []


# --- local backend only -------------------------------------------------------------------------------


def test_local_never_writes_outside_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    for key in INVALID_KEYS:
        with pytest.raises(InvalidName):
            store.put(key, b"escape")
    store.put("a/b/c", b"inside")
    store.delete("a/b/c")
    store.put("x", b"inside")
    assert [p.name for p in tmp_path.iterdir()] == ["root"]
    outside = [p for p in tmp_path.rglob("*") if tmp_path / "root" not in [p, *p.parents]]
    assert outside == []
    assert not (tmp_path / "root" / "a").exists()  # delete pruned the empty directories


def test_local_refuses_components_the_filesystem_cannot_hold(local_store: LocalStore) -> None:
    with pytest.raises(InvalidName):
        local_store.put("u/" + "x" * 256, b"v")
    local_store.put("u/" + "x" * 255, b"v")


def test_local_temp_dir_is_not_listed(local_store: LocalStore) -> None:
    (local_store.root / ".tmp" / "put-leftover").write_bytes(b"crash debris")
    (local_store.root / ".tmp" / "sub").mkdir()
    (local_store.root / ".tmp" / "sub" / "f").write_bytes(b"x")
    local_store.put("k", b"v")
    assert [i.key for i in local_store.list()] == ["k"]
    assert [i.key for i in local_store.list(".")] == []


def test_local_key_that_is_a_directory_is_not_an_object(local_store: LocalStore) -> None:
    local_store.put("a/b", b"x")
    with pytest.raises(ObjectNotFound):
        local_store.get("a")
    with pytest.raises(ObjectNotFound):
        local_store.head("a")
    with pytest.raises(StoreError):
        local_store.put("a", b"clashes with the directory a/")
    for create_only in (False, True):
        with pytest.raises(StoreError) as exc:
            local_store.put("a/b/c", b"clashes with the file a/b", create_only=create_only)
        assert not isinstance(exc.value, ObjectExists)
    assert local_store.get("a/b").data == b"x"


def test_local_check(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "new" / "root")
    store.check()
    assert store.url == f"file://{tmp_path / 'new' / 'root'}"
    (tmp_path / "new" / "root" / ".tmp").rmdir()
    (tmp_path / "new" / "root").rmdir()
    with pytest.raises(StoreUnavailable):
        store.check()


# --- S3 backend only ----------------------------------------------------------------------------------


def _closed_port() -> int:
    # Bound then released: nothing listens there, so connects are refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_s3_unreachable_endpoint_is_unavailable() -> None:
    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{_closed_port()}", **TEST_CREDENTIALS)
    with pytest.raises(StoreUnavailable) as exc:
        store.check()
    assert exc.value.code == "store_unavailable"
    with pytest.raises(StoreUnavailable):
        store.put("k", b"v")


def test_s3_missing_bucket_is_unavailable_until_ensured(moto_server: str) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=moto_server, **TEST_CREDENTIALS)
    with pytest.raises(StoreUnavailable):
        store.check()
    with pytest.raises(StoreUnavailable):
        store.put("k", b"v")
    with pytest.raises(StoreUnavailable):
        list(store.list())
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.check()


def test_s3_repr_has_no_secret(moto_server: str) -> None:
    store = S3Store("b-repr", endpoint_url=moto_server, access_key="AKIDX", secret_key="s3cr3t-value")
    assert "s3cr3t-value" not in repr(store)
    with pytest.raises(StoreUnavailable) as exc:
        store.check()
    assert "s3cr3t-value" not in str(exc.value)


def test_s3_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch, moto_server: str) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3Store("env-bucket")
    store.ensure_bucket()
    store.put("k", b"v")
    assert store.get("k").data == b"v"


# --- open_store ---------------------------------------------------------------------------------------


def test_open_store(tmp_path: Path) -> None:
    s3 = open_store("s3://my-bucket", endpoint_url="http://127.0.0.1:9", **TEST_CREDENTIALS)
    assert isinstance(s3, S3Store)
    assert s3.url == "s3://my-bucket"
    local = open_store(f"file://{tmp_path}/a", endpoint_url="ignored")
    assert isinstance(local, LocalStore)
    assert local.root == tmp_path / "a"
    plain = open_store(str(tmp_path / "b"))
    assert isinstance(plain, LocalStore)
    assert plain.url == f"file://{tmp_path / 'b'}"


@pytest.mark.parametrize(
    "url", ["", "http://host/x", "gs://bucket", "s3://", "s3://Bad_Bucket", "s3://b/sub", "file://host/x"]
)
def test_open_store_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)
