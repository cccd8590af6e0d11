"""The bucket layout: key shapes, name rules, the LoRAX prefix rule, and the README staying in step."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from soppu.errors import InvalidName
from soppu.store import layout
from soppu.store.base import validate_key
from soppu.store.layout import AdapterVersion, s3_adapter_id

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
    assert s3_adapter_id("soppu", ref.export_prefix) == "s3://soppu/exports/alice/default/v00000003"
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


_SEVEN = AdapterVersion("u1", "default", 7)


def _every_kind_of_key(user: str = "u1", adapter: str = "default") -> list[str]:
    ref = AdapterVersion(user, adapter, 7)
    return [
        *ref.original_keys(),
        ref.probes_key,
        *ref.export_keys(),
        ref.core_key,
        ref.manifest_key,
        ref.pointer_key,
        ref.job_key,
        layout.basis_key("c1", 2),
        layout.idempotency_key(user, adapter, "k"),
        layout.cohort_state_key("c1"),
        layout.tombstone_key(user),
        layout.lease_key("cohort:c1"),
        layout.key_record_key("0123abcd0123abcd"),
        layout.key_index_key(user, "0123abcd0123abcd"),
    ]


def test_original_keys_round_trip_and_sit_under_their_prefixes() -> None:
    for user, adapter, number in itertools.product(["u1", "u10", "a.b-c_d"], ["default", "x"], [1, 42, 99_999_999]):
        ref = AdapterVersion(user, adapter, number)
        for key in (*ref.original_keys(), ref.probes_key):
            assert layout.parse_original_key(key) == ref
            assert key.startswith(layout.versions_prefix(user, adapter))
            assert key.startswith(layout.adapters_prefix(user))
    assert not AdapterVersion("u10", "a", 1).original_keys()[0].startswith(layout.adapters_prefix("u1"))
    assert not AdapterVersion("u1", "a1", 1).original_keys()[0].startswith(layout.versions_prefix("u1", "a"))


def test_pointer_cohort_and_key_index_keys_round_trip() -> None:
    assert layout.parse_pointer_key(layout.pointer_key("u1", "default")) == ("u1", "default")
    assert layout.pointer_key("u1", "default").startswith(layout.pointers_prefix("u1"))
    assert not layout.pointer_key("u10", "default").startswith(layout.pointers_prefix("u1"))
    assert layout.parse_cohort_state_key(layout.cohort_state_key("c-1")) == "c-1"
    assert layout.cohort_state_key("c-1").startswith(layout.cohorts_prefix())
    key = layout.key_index_key("u1", "0123abcd0123abcd")
    assert layout.parse_key_index_key(key) == ("u1", "0123abcd0123abcd")
    assert key.startswith(layout.key_index_prefix("u1"))


def test_prefixes_hold_the_keys_of_their_kind() -> None:
    ref = AdapterVersion("u1", "default", 3)
    assert ref.manifest_key.startswith(layout.manifests_prefix("u1", "default"))
    assert ref.job_key.startswith(layout.adapter_jobs_prefix("u1", "default"))
    assert ref.job_key.startswith(layout.jobs_prefix())
    assert not AdapterVersion("u1", "default1", 3).manifest_key.startswith(layout.manifests_prefix("u1", "default"))
    for prefix in (layout.versions_prefix("u1", "default"), layout.pointers_prefix("u1"), layout.cohorts_prefix()):
        assert prefix.endswith("/")


@pytest.mark.parametrize(
    ("parse", "own"),
    [
        (layout.parse_original_key, {*_SEVEN.original_keys(), _SEVEN.probes_key}),
        (layout.parse_pointer_key, {layout.pointer_key("u1", "default")}),
        (layout.parse_cohort_state_key, {layout.cohort_state_key("c1")}),
        (layout.parse_key_index_key, {layout.key_index_key("u1", "0123abcd0123abcd")}),
    ],
)
def test_parsers_reject_keys_of_other_kinds(parse: Callable[[str], object], own: set[str]) -> None:
    for key in _every_kind_of_key():
        assert (parse(key) is not None) == (key in own), key


@pytest.mark.parametrize(
    "key",
    [
        "originals/u1/default/v00000000/adapter_config.json",
        "originals/u1/default/v1/adapter_config.json",
        "originals/u1/default/v00000001/other.json",
        "originals/u1/default/v00000001",
        "originals/u1/default/v00000001/adapter_config.json/x",
        "originals/../default/v00000001/adapter_config.json",
        "pointers/u1/default/other.json",
        "pointers/u1/current.json",
        "pointers/u1/-x/current.json",
        "cohorts/c1/other.json",
        "cohorts/state.json",
        "key-index/u1",
        "key-index/u1/a/b",
        "",
    ],
)
def test_malformed_keys_parse_to_none(key: str) -> None:
    for parse in (
        layout.parse_original_key,
        layout.parse_pointer_key,
        layout.parse_cohort_state_key,
        layout.parse_key_index_key,
    ):
        assert parse(key) is None
