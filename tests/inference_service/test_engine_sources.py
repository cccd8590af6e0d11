"""What the engine may read, and what its errors say: local adapters only under the configured roots (no
``..`` or symlink out of them, and the same answer whether a refused path exists or not), S3 only from the
configured buckets, and load errors that name the adapter id the client sent, never a storage path or an
exception's text. In-process, on the sources and the adapter cache; no model is loaded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from inference_service.engine import AdapterCache, AdapterLoadFailed, AdapterRef, AdapterRefused, SourceRules
from inference_service.engine import AdapterSourceKind as Kind
from inference_service.engine.formats import ModelShapes
from inference_service.engine.sources import LocalSource, S3Source
from inference_service.errors import lorax_error
from soppu.store import S3Store

NO_SHAPES = ModelShapes({}, torch.device("cpu"), torch.float32)


def _refusal(source: LocalSource | S3Source, adapter_id: str) -> str:
    with pytest.raises(AdapterRefused) as refused:
        source.locate(adapter_id)
    assert refused.value.code == "adapter_refused" and lorax_error(refused.value) == (403, "adapter_refused")
    return refused.value.message


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """An allowed root holding an adapter folder, and outside it a real adapter folder and a secret file."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root / "alice", outside / "bob"):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
    (outside / "secret.txt").write_text("secret")
    return {"root": root, "outside": outside}


def test_local_adapters_are_refused_without_roots(tree: dict[str, Path]) -> None:
    source = LocalSource(SourceRules())
    answers = {_refusal(source, str(path)) for path in (tree["root"] / "alice", tree["root"] / "nobody")}
    assert answers == {"this engine does not serve local adapters"}


def test_local_paths_out_of_the_roots_are_refused_alike(tree: dict[str, Path]) -> None:
    root, outside = tree["root"], tree["outside"]
    (root / "link-out").symlink_to(outside / "bob")  # a symlink inside the root, leading out of it
    (root / "alice" / "adapter_model.safetensors").symlink_to(outside / "secret.txt")
    source = LocalSource(SourceRules(local_roots=(root,)))
    assert source.locate(str(root / "alice")).path == str(root.resolve() / "alice")
    refused = [
        outside / "bob",  # exists
        outside / "nobody",  # does not
        f"{root}/../outside/bob",  # .. out of the root, to one that exists
        f"{root}/alice/../../outside/nobody",  # .. to one that does not
        root / "link-out",  # a symlink out
        "alice",  # not absolute
        "/",
    ]
    assert len({_refusal(source, str(path)) for path in refused}) == 1
    # A file linked out of an allowed folder is neither listed nor read.
    location = source.locate(str(root / "alice"))
    assert set(source.listing(location)) == {"adapter_config.json"}
    with pytest.raises(AdapterRefused):
        source.read(location, "adapter_model.safetensors")
    # A core's bases reference is resolved against the core's folder and checked the same way.
    bases, name = location.relative("../../outside/secret.txt")
    with pytest.raises(AdapterRefused):
        source.read(bases, name)


def test_s3_buckets_other_than_the_configured_ones_are_refused_before_any_request() -> None:
    source = S3Source(SourceRules(s3_buckets=("soppu", "team-*")))
    assert source.locate("s3://soppu/exports/u/default/v00000001").root == "soppu"
    assert source.locate("s3://team-a/exports/u/default/v00000001").root == "team-a"
    # No S3 endpoint is configured here: a refusal that reached for the bucket would fail differently.
    answers = {_refusal(source, f"s3://{bucket}/exports/u") for bucket in ("other", "soppu-2", "xteam-a")}
    assert answers == {"this engine does not serve adapters from that bucket"}
    assert _refusal(S3Source(SourceRules()), "s3://soppu/exports/u") in answers


def _load_error(cache: AdapterCache, ref: AdapterRef) -> AdapterLoadFailed | AdapterRefused:
    async def load() -> None:
        await cache.get(ref)

    with pytest.raises((AdapterLoadFailed, AdapterRefused)) as failed:
        asyncio.run(load())
    assert isinstance(failed.value, AdapterLoadFailed | AdapterRefused)
    return failed.value


def test_load_errors_name_the_adapter_id_and_no_storage_path(
    tree: dict[str, Path], s3_store: S3Store, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_server)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    root = tree["root"]
    # A broken core under the root, a missing folder, a dangling link out of the root; on S3 a half adapter
    # and a bucket that does not exist.
    (root / "carol").mkdir()
    (root / "carol" / "core.safetensors").write_bytes(b"not a core")
    (root / "link").symlink_to(tree["outside"] / "nowhere")
    rules = SourceRules(s3_buckets=(s3_store.bucket, "test-missing-*"), local_roots=(root,))
    cache = AdapterCache(NO_SHAPES, budget_bytes=1 << 20, rules=rules)
    s3_store.put("users/dave/v00000001/adapter_config.json", b"{}")  # no weights beside it
    cases = {
        AdapterRef(Kind.LOCAL, str(root / "carol")): "invalid core file",
        AdapterRef(Kind.LOCAL, str(root / "nobody")): "no adapter was found",
        AdapterRef(Kind.LOCAL, str(root / "link")): "adapter roots",  # dangling, and out of the root
        AdapterRef(Kind.S3, f"s3://{s3_store.bucket}/users/dave/v00000001"): "no adapter",
        AdapterRef(Kind.S3, "s3://test-missing-bucket/users/erin/v00000001"): "could not be read from storage",
    }
    for ref, why in cases.items():
        error = _load_error(cache, ref)
        assert error.message.startswith(f"adapter {ref.adapter_id!r} "), error.message
        assert why in error.message, error.message
        rest = error.message.removeprefix(f"adapter {ref.adapter_id!r} ")
        for leak in (str(tree["outside"]), str(root), moto_server, "Errno", "NoSuchBucket", "s3://"):
            assert leak not in rest, (leak, error.message)
