"""The PEFT export of a compression (it loads in PEFT and computes ``U S V^T``, padded to the largest rank) and the
byte/parameter accounting, on compressions built by hand (:mod:`tests.soppu.compression_builders`)."""

from __future__ import annotations

import json
from pathlib import Path

import peft  # the test extras install it: without it these fail, never skip (PEFT is the reference)
import pytest
import torch

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, read_adapter
from soppu.adapter.apply import LoraHooks, apply_adapter
from soppu.compression.accounting import account
from soppu.compression.export import to_lora, write_peft_export
from soppu.compression.model import CompressedAdapter, Compression, Mode
from soppu.models import load_causal_lm
from tests.soppu.compression_builders import (
    EXAMPLE_SHAPES,
    TOY_SHAPES,
    exact_compression,
    example_adapters,
    random_compression,
)

TEXTS = ["My favourite colour is", "My pet is a cat. My home city is"]


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
