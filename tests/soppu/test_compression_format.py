"""The compressed format (bases + cores on disk): exact round trips, storage dtypes, metadata, and the errors of
foreign, inconsistent or mismatched files.

Compressions here are built by hand, independent of the solver (:mod:`tests.soppu.compression_builders`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from soppu.compression.format import (
    MANIFEST_NAME,
    bases_bytes,
    bases_file_name,
    compute_basis_id,
    core_bytes,
    core_file_name,
    read_bases,
    read_compression,
    read_core,
    write_compression,
)
from soppu.compression.model import CompressedAdapter, Compression, Mode
from soppu.errors import CompressionError
from tests.soppu.compression_builders import (
    EXAMPLE_SHAPES,
    Q,
    V,
    random_compression,
)


def _metadata(data: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])["__metadata__"]


def _resave(data: bytes, **changes: str) -> bytes:
    """The same tensors under changed metadata (what a tamperer or a foreign writer produces)."""
    return save_safetensors(load_safetensors(data), metadata={**_metadata(data), **changes})


def _assert_same(left: Compression, right: Compression) -> None:
    assert (left.mode, left.base_model, left.target_modules) == (right.mode, right.base_model, right.target_modules)
    assert len(left.clusters) == len(right.clusters)
    for a, b in zip(left.clusters, right.clusters, strict=True):
        assert a.bases.keys() == b.bases.keys()
        for module in a.bases:
            assert torch.equal(a.bases[module].u, b.bases[module].u)
            assert torch.equal(a.bases[module].v, b.bases[module].v)
    assert [a.name for a in left.adapters] == [a.name for a in right.adapters]
    for a, b in zip(left.adapters, right.adapters, strict=True):
        assert (a.cluster, a.source_ranks, a.source_scalings, a.errors) == (
            b.cluster,
            b.source_ranks,
            b.source_scalings,
            b.errors,
        )
        assert a.cores.keys() == b.cores.keys()
        assert all(torch.equal(a.cores[m], b.cores[m]) for m in a.cores)


# --- the format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode))
def test_round_trip_is_exact_and_byte_identical(tmp_path: Path, mode: Mode) -> None:
    compression = random_compression(mode, ranks={Q: 4, V: 3}, clusters=2, adapters=5)
    first = write_compression(compression, tmp_path / "a")
    second = write_compression(compression, tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(first, second, strict=True))
    assert {p.relative_to(tmp_path / "a").as_posix() for p in first} == {
        "bases-000.safetensors",
        "bases-001.safetensors",
        *(f"cores/user-{i:03d}.safetensors" for i in range(5)),
        MANIFEST_NAME,
    }
    back = read_compression(tmp_path / "a")
    _assert_same(compression, back)
    # Reading and writing again reproduces the same bytes.
    again = write_compression(back, tmp_path / "c")
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(first, again, strict=True))

    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert manifest["adapters"][1] == {
        "name": "user-001",
        "cluster": 1,
        "bases": "bases-001.safetensors",
        "core": "cores/user-001.safetensors",
        "basis_id": compute_basis_id(compression.clusters[1]),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_storage_dtype_rounds_and_reads_back_as_float32(tmp_path: Path, dtype: torch.dtype) -> None:
    compression = random_compression()
    write_compression(compression, tmp_path, dtype=dtype)
    back = read_compression(tmp_path)
    core = back.adapters[0].cores[Q]
    assert core.dtype == torch.float32
    assert torch.equal(core, compression.adapters[0].cores[Q].to(dtype).float())
    assert compute_basis_id(compression.clusters[0], dtype) != compute_basis_id(compression.clusters[0])
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["dtype"] == str(dtype).removeprefix("torch.")


def test_metadata_fields() -> None:
    compression = random_compression(Mode.DIAG, ranks={Q: 4, V: 3})
    cluster, adapter = compression.clusters[0], compression.adapters[1]
    bases_meta = _metadata(bases_bytes(cluster, compression))
    basis_id = compute_basis_id(cluster)
    assert bases_meta == {
        "format": "soppu-jd",
        "format_version": "1",
        "kind": "bases",
        "mode": "diag",
        "base_model": "toy/base-model",
        "target_modules": '["q_proj","v_proj"]',
        "modules": json.dumps(
            {Q: {"d_in": 16, "d_out": 16, "rank": 4}, V: {"d_in": 16, "d_out": 8, "rank": 3}},
            separators=(",", ":"),
            sort_keys=True,
        ),
        "basis_id": basis_id,
    }
    core_meta = _metadata(core_bytes(compression, adapter))
    assert {k: core_meta[k] for k in ("format", "format_version", "kind", "mode", "basis_id", "name")} == {
        "format": "soppu-jd",
        "format_version": "1",
        "kind": "core",
        "mode": "diag",
        "basis_id": basis_id,
        "name": "user-001",
    }
    assert json.loads(core_meta["modules"])[V] == {
        "rank": 3,
        "scaling": 1.0,
        "source_rank": 8,
        "source_scaling": 2.0,
        "error": pytest.approx(0.2),
    }
    assert set(load_safetensors(core_bytes(compression, adapter))) == {f"{Q}.S", f"{V}.S"}


def _codes(action: object) -> str:
    with pytest.raises(CompressionError) as info:
        action()  # type: ignore[operator]
    return info.value.code


def test_foreign_and_unknown_files_are_bad_compressed_format() -> None:
    compression = random_compression()
    bases = bases_bytes(compression.clusters[0], compression)
    core = core_bytes(compression, compression.adapters[0])
    peft_like = save_safetensors({"x": torch.zeros(2)}, metadata={"format": "pt"})
    for data in (peft_like, b"not safetensors at all", _resave(bases, format_version="2"), _resave(bases, format="x")):
        assert _codes(lambda data=data: read_bases(data)) == "bad_compressed_format"
    assert _codes(lambda: read_core(_resave(core, format_version="0"))) == "bad_compressed_format"
    # A core offered as bases (and the reverse) is refused by its kind.
    assert _codes(lambda: read_bases(core)) == "bad_compressed_format"
    assert _codes(lambda: read_core(bases)) == "bad_compressed_format"


def test_inconsistent_content_is_bad_compressed_format() -> None:
    compression = random_compression()
    bases = bases_bytes(compression.clusters[0], compression)
    core = core_bytes(compression, compression.adapters[0])
    tensors = load_safetensors(core)
    wrong_rank = json.loads(_metadata(core)["modules"])
    wrong_rank[Q]["rank"] = 5
    tampered = [
        _resave(core, modules=json.dumps(wrong_rank)),  # shape disagrees with the metadata
        _resave(core, mode="bogus"),
        save_safetensors({**tensors, f"{Q}.S": torch.full((4, 4), float("nan"))}, metadata=_metadata(core)),
        save_safetensors({**tensors, "extra.S": torch.zeros(4, 4)}, metadata=_metadata(core)),
    ]
    for data in tampered:
        assert _codes(lambda data=data: read_core(data)) == "bad_compressed_format"
    # Bases whose content no longer matches their basis_id are corrupt.
    altered = _resave(bases, basis_id="0" * 64)
    assert _codes(lambda: read_bases(altered)) == "bad_compressed_format"


def test_core_of_another_basis_is_basis_mismatch(tmp_path: Path) -> None:
    compression = random_compression()
    other = random_compression(seed=1)
    bases = read_bases(bases_bytes(compression.clusters[0], compression))
    core = core_bytes(compression, compression.adapters[0])
    assert read_core(core, bases=bases).basis_id == bases.basis_id
    foreign = core_bytes(other, other.adapters[0])
    assert _codes(lambda: read_core(foreign, bases=bases)) == "basis_mismatch"
    retagged = _resave(core, basis_id=compute_basis_id(other.clusters[0]))
    assert _codes(lambda: read_core(retagged, bases=bases)) == "basis_mismatch"
    # A core claiming the right basis_id but with the wrong rank still does not fit.
    smaller = random_compression(ranks={Q: 3, V: 4})
    forged = _resave(core_bytes(smaller, smaller.adapters[0]), basis_id=bases.basis_id)
    assert _codes(lambda: read_core(forged, bases=bases)) == "basis_mismatch"

    # The same in a directory: a core swapped in from another compression.
    write_compression(compression, tmp_path)
    (tmp_path / core_file_name("user-001")).write_bytes(foreign)
    assert _codes(lambda: read_compression(tmp_path)) == "basis_mismatch"
    (tmp_path / bases_file_name(0)).write_bytes(b"garbage")
    assert _codes(lambda: read_compression(tmp_path)) == "bad_compressed_format"


def test_writing_rejects_cores_that_do_not_fit_their_basis() -> None:
    compression = random_compression()
    bad = CompressedAdapter("bad", 0, {Q: torch.zeros(3, 3), V: torch.zeros(4, 4)}, {}, {})
    assert _codes(lambda: core_bytes(compression, bad)) == "basis_mismatch"
    with pytest.raises(ValueError, match="storage dtype"):
        bases_bytes(compression.clusters[0], compression, dtype=torch.float64)


def test_core_file_is_a_few_kilobytes_for_the_example_sizes() -> None:
    compression = random_compression(shapes=EXAMPLE_SHAPES, ranks=dict.fromkeys(EXAMPLE_SHAPES, 16), adapters=1)
    core = core_bytes(compression, compression.adapters[0])
    bases = bases_bytes(compression.clusters[0], compression)
    # 4 modules x 16 x 16 float32 = 4 KiB of tensors plus a small header.
    assert 4 * 1024 < len(core) < 6 * 1024
    assert len(bases) > 10 * len(core)  # 14336 vs 1024 parameters
