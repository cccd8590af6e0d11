"""The compressed format (bases + cores on disk), the PEFT export and the byte/parameter accounting.

Compressions here are built by hand, independent of the solver: random orthonormal bases with random cores, or
an exact compression of real adapters (U, V spanning every adapter's column/row space, so ``U S_i V^T = W_i``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, read_adapter
from soppu.adapter.apply import LoraHooks, apply_adapter
from soppu.compression.accounting import account
from soppu.compression.export import to_lora, write_peft_export
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
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode, ModuleBasis
from soppu.errors import CompressionError
from soppu.models import load_causal_lm

peft = pytest.importorskip("peft")

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"
TOY_SHAPES = {Q: (16, 16), V: (8, 16)}
# The example fixture's tiny Llama: hidden 128, 4 heads, 2 KV heads (so v_proj is 64 x 128), 2 layers.
EXAMPLE_SHAPES = {
    f"model.layers.{layer}.self_attn.{name}": shape
    for layer in range(2)
    for name, shape in (("q_proj", (128, 128)), ("v_proj", (64, 128)))
}
TEXTS = ["My favourite colour is", "My pet is a cat. My home city is"]


# --- builders ------------------------------------------------------------------------------------------


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen))[0]


def random_compression(
    mode: Mode = Mode.FULL,
    *,
    shapes: dict[str, tuple[int, int]] = TOY_SHAPES,
    ranks: dict[str, int] | None = None,
    clusters: int = 1,
    adapters: int = 3,
    seed: int = 0,
) -> Compression:
    """Random orthonormal bases and random cores; adapter i goes to cluster i % clusters."""
    gen = torch.Generator().manual_seed(seed)
    ranks = ranks or dict.fromkeys(shapes, 4)
    built = []
    for _ in range(clusters):
        bases = {
            m: ModuleBasis(_orthonormal(o, ranks[m], gen), _orthonormal(i, ranks[m], gen))
            for m, (o, i) in shapes.items()
        }
        built.append(Cluster(bases))
    members = []
    for index in range(adapters):
        cores = {m: torch.randn((ranks[m],) * (2 if mode is Mode.FULL else 1), generator=gen) for m in shapes}
        members.append(
            CompressedAdapter(
                name=f"user-{index:03d}",
                cluster=index % clusters,
                cores=cores,
                source_ranks=dict.fromkeys(shapes, 8),
                source_scalings=dict.fromkeys(shapes, 2.0),
                errors={m: 0.1 * (index + 1) for m in shapes},
            )
        )
    return Compression(mode, "toy/base-model", ("q_proj", "v_proj"), built, members)


def exact_compression(adapters: dict[str, LoraAdapter], base_model: str | None = None) -> Compression:
    """A lossless JD-Full compression: per module U = qr([B_1 .. B_N]), V = qr([A_1^T .. A_N^T]), so every
    W_i = s_i B_i A_i lies in span(U) x span(V) and S_i = U^T W_i V gives U S_i V^T = W_i."""
    first = next(iter(adapters.values()))
    bases = {}
    for module in first.modules:
        u = torch.linalg.qr(torch.cat([a.modules[module].b for a in adapters.values()], dim=1))[0]
        v = torch.linalg.qr(torch.cat([a.modules[module].a.T for a in adapters.values()], dim=1))[0]
        bases[module] = ModuleBasis(u, v)
    members = []
    for name, adapter in adapters.items():
        cores = {}
        for m, lora in adapter.modules.items():
            cores[m] = lora.scaling * (bases[m].u.T @ lora.b) @ (lora.a @ bases[m].v)
        ranks = {m: lora.rank for m, lora in adapter.modules.items()}
        scalings = {m: lora.scaling for m, lora in adapter.modules.items()}
        members.append(CompressedAdapter(name, 0, cores, ranks, scalings, dict.fromkeys(cores, 0.0)))
    return Compression(Mode.FULL, base_model, first.config.target_modules, [Cluster(bases)], members)


def example_adapters(examples_dir: Path) -> tuple[dict[str, LoraAdapter], str]:
    manifest = json.loads((examples_dir / "users.json").read_text())
    adapters = {user["user_id"]: read_adapter(examples_dir / user["adapter"]) for user in manifest["users"]}
    return adapters, manifest["base_model_id"]


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


# --- the PEFT export -----------------------------------------------------------------------------------


def _logits(model: torch.nn.Module, tokenizer: object, texts: list[str] = TEXTS) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True)  # type: ignore[operator]
    with torch.no_grad():
        return model(**batch).logits


def _reference_logits(examples_dir: Path, compression: Compression, adapter: CompressedAdapter) -> torch.Tensor:
    """U S V^T applied directly: hooks with A = V^T, B = U S (or U diag(s)), scaling 1 (no padding)."""
    factors = {}
    for module, core in adapter.cores.items():
        basis = compression.basis(adapter, module)
        b = basis.u @ core if compression.mode is Mode.FULL else basis.u * core
        factors[module] = (basis.v.T.contiguous(), b, 1.0)
    model, tokenizer = load_causal_lm(examples_dir / "base", "cpu")
    with LoraHooks(model, factors):
        return _logits(model, tokenizer)


def _peft_logits(examples_dir: Path, directory: Path) -> torch.Tensor:
    model, tokenizer = load_causal_lm(examples_dir / "base", "cpu")
    return _logits(peft.PeftModel.from_pretrained(model, str(directory)).eval(), tokenizer)


def test_peft_export_loads_in_peft_and_matches_u_s_vt(examples_dir: Path, tmp_path: Path) -> None:
    adapters, base_model = example_adapters(examples_dir)
    compression = exact_compression(adapters, base_model)
    adapter = compression.adapters[2]
    rank = compression.clusters[0].bases[next(iter(adapter.cores))].rank
    directory = write_peft_export(compression, adapter.name, tmp_path / "export")

    exported = read_adapter(directory, expected_base_model=base_model)
    assert (exported.config.r, exported.config.lora_alpha, exported.config.rank_pattern) == (rank, rank, {})
    assert all(m.scaling == 1.0 for m in exported.modules.values())

    through_peft = _peft_logits(examples_dir, directory)
    torch.testing.assert_close(through_peft, _reference_logits(examples_dir, compression, adapter), rtol=0, atol=1e-4)
    # The compression is lossless, so the export also behaves like the original adapter.
    model, tokenizer = load_causal_lm(examples_dir / "base", "cpu")
    with apply_adapter(model, adapters[adapter.name]):
        original = _logits(model, tokenizer)
    torch.testing.assert_close(through_peft, original, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", list(Mode))
def test_padding_to_the_largest_rank_changes_nothing(examples_dir: Path, tmp_path: Path, mode: Mode) -> None:
    ranks = {m: 12 if "q_proj" in m else 6 for m in EXAMPLE_SHAPES}
    compression = random_compression(mode, shapes=EXAMPLE_SHAPES, ranks=ranks, adapters=1)
    adapter = compression.adapters[0]
    exported = to_lora(compression, adapter)
    assert exported.config.r == exported.config.lora_alpha == 12 and not exported.config.rank_pattern
    v_module = exported.modules["model.layers.1.self_attn.v_proj"]
    assert v_module.a.shape == (12, 128) and v_module.b.shape == (64, 12)
    assert not v_module.a[6:].any() and not v_module.b[:, 6:].any()

    directory = write_peft_export(compression, adapter.name, tmp_path / "padded")
    through_peft = _peft_logits(examples_dir, directory)
    torch.testing.assert_close(through_peft, _reference_logits(examples_dir, compression, adapter), rtol=0, atol=1e-4)


# --- accounting ----------------------------------------------------------------------------------------


def _original(dtype: torch.dtype) -> LoraAdapter:
    config = AdapterConfig(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"))
    modules = {
        m: LoraModule(torch.zeros(d_out, 4, dtype=dtype), torch.zeros(4, d_in, dtype=dtype), 2.0)
        for m, (d_out, d_in) in TOY_SHAPES.items()
    }
    return LoraAdapter(config, modules)


def test_accounting_on_a_hand_computed_case() -> None:
    # Two rank-4 adapters on q (16 x 16) and v (8 x 16): 4 * 32 + 4 * 24 = 224 parameters each.
    # One cluster with R = 4: bases 4 * 32 + 4 * 24 = 224 (counted once), cores 2 x 16 = 32 per adapter.
    compression = random_compression(Mode.FULL, adapters=2)
    originals = [_original(torch.float32), _original(torch.bfloat16)]
    report = account(
        compression, originals, original_file_bytes=[1000, 600], bases_file_bytes=[1200], core_file_bytes=[300, 300]
    )
    assert report["original"] == {"parameters": 448, "bytes": 224 * 4 + 224 * 2, "file_bytes": 1600}
    assert report["compressed"] == {
        "parameters": 224 + 64,
        "bases_parameters": 224,
        "cores_parameters": 64,
        "bytes": 288 * 4,
        "file_bytes": 1800,
    }
    assert report["ratio"]["parameters"] == pytest.approx(448 / 288)
    assert report["ratio"]["bytes"] == pytest.approx(1344 / 1152)
    assert report["ratio"]["file_bytes"] == pytest.approx(1600 / 1800)
    assert report["clusters"] == [
        {"index": 0, "adapters": 2, "bases_parameters": 224, "bases_bytes": 896, "bases_file_bytes": 1200}
    ]
    first, second = report["per_adapter"]
    assert first["amortised_parameters"] == 224 / 2 + 32
    assert first["ratio_parameters"] == pytest.approx(224 / 144)
    assert second["original_bytes"] == 448 and second["ratio_bytes"] == pytest.approx(448 / (144 * 4))
    assert second["amortised_file_bytes"] == 1200 / 2 + 300
    json.dumps(report, allow_nan=False)

    diag = account(random_compression(Mode.DIAG, adapters=2), originals, dtype=torch.float16)
    assert diag["compressed"]["parameters"] == 224 + 2 * 8
    assert diag["compressed"]["bytes"] == (224 + 16) * 2
    assert "file_bytes" not in diag["compressed"]
