"""The bucket layout: key shapes, name rules, the LoRAX prefix rule, and the README staying in step."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from soppu.errors import InvalidName
from soppu.store import layout
from soppu.store.base import validate_key
from soppu.store.layout import AdapterVersion

README = Path(__file__).resolve().parents[2] / "README.md"


def test_keys_of_one_version() -> None:
    ref = AdapterVersion("alice", "default", 3)
    assert ref.export_prefix == "exports/alice/default/v00000003"
    assert ref.export_keys() == (
        "exports/alice/default/v00000003/adapter_config.json",
        "exports/alice/default/v00000003/adapter_model.safetensors",
    )
    assert ref.original_keys()[1] == "originals/alice/default/v00000003/adapter_model.safetensors"
    assert ref.core_key == "cores/alice/default/v00000003/core.safetensors"
    assert ref.manifest_key == "manifests/alice/default/v00000003.json"
    assert ref.pointer_key == "pointers/alice/default/current.json"
    assert ref.lorax_adapter_id("soppu") == "s3://soppu/exports/alice/default/v00000003"
    assert layout.basis_key("c1", 2) == "bases/c1/v00000002/bases.safetensors"
    for key in (*ref.export_keys(), *ref.original_keys(), ref.core_key, ref.manifest_key, ref.pointer_key):
        validate_key(key)


def test_no_export_prefix_is_a_prefix_of_another_key() -> None:
    """LoRAX downloads everything under the prefix it is given: ``u1`` must never pick up ``u10``'s files."""
    refs = [
        AdapterVersion(user, adapter, version)
        for user, adapter, version in itertools.product(
            ["u1", "u10", "u1.0", "u-1"], ["a", "a1", "default"], [1, 10, 99_999_999]
        )
    ]
    keys = [key for ref in refs for key in ref.export_keys()]
    for ref in refs:
        under = [key for key in keys if key.startswith(ref.export_prefix)]
        assert sorted(under) == sorted(ref.export_keys())


@pytest.mark.parametrize("name", ["", ".", "..", "-x", "a/b", "a b", "ü", "x" * 65, "a\\b", "_x"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        AdapterVersion(name, "default", 1)
    with pytest.raises(InvalidName):
        layout.pointer_key("u", name)


@pytest.mark.parametrize("version", [0, -1, 100_000_000, "1", 1.0])
def test_bad_versions_are_refused(version: object) -> None:
    with pytest.raises(InvalidName):
        AdapterVersion("u", "a", version)  # type: ignore[arg-type]


def test_versions_round_trip() -> None:
    assert layout.parse_version(layout.format_version(42)) == 42
    for text in ("v1", "v000000001", "v00000000", "x00000001"):
        with pytest.raises(InvalidName):
            layout.parse_version(text)


def test_user_prefixes_cover_every_per_user_kind() -> None:
    prefixes = layout.user_prefixes("u1")
    ref = AdapterVersion("u1", "default", 1)
    owned = (ref.core_key, ref.manifest_key, ref.pointer_key, ref.job_key, layout.idempotency_key("u1", "default", "k"))
    for key in (*ref.original_keys(), *ref.export_keys(), *owned, layout.key_index_key("u1", "0123abcd0123abcd")):
        assert any(key.startswith(p) for p in prefixes), key
    assert not any(AdapterVersion("u10", "d", 1).core_key.startswith(p) for p in prefixes)


def test_adapter_prefixes_cover_its_idempotency_records() -> None:
    key = layout.idempotency_key("u1", "default", "k")
    assert any(key.startswith(p) for p in layout.adapter_prefixes("u1", "default"))
    assert not any(key.startswith(p) for p in layout.adapter_prefixes("u1", "other"))


def test_readme_documents_every_key() -> None:
    text = README.read_text()
    for template in layout.LAYOUT:
        assert template in text, f"README.md does not document {template}"
