"""What we write, peft loads unchanged: read -> write -> PeftModel.from_pretrained gives identical logits."""

from __future__ import annotations

import json
from pathlib import Path

import peft  # the test extras install it: without it these fail, never skip (PEFT is the reference)
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, read_adapter, write_adapter
from soppu.adapter.apply import apply_adapter
from soppu.models import load_causal_lm


def _logits(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


_TEXTS = ["My favourite colour is", "My pet is a cat. My home city is"]


def _peft_logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    model, tokenizer = load_causal_lm(base_dir, "cpu")
    peft_model = peft.PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    return _logits(peft_model, tokenizer, _TEXTS)


def test_rewritten_adapter_loads_in_peft_with_identical_logits(examples_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((examples_dir / "users.json").read_text())
    original_dir = examples_dir / manifest["users"][1]["adapter"]
    adapter = read_adapter(original_dir)
    rewritten_dir = write_adapter(adapter, tmp_path / "rewritten")

    original = _peft_logits(examples_dir / "base", original_dir)
    rewritten = _peft_logits(examples_dir / "base", rewritten_dir)
    assert torch.equal(original, rewritten)

    # Our hook-based reference path computes the same function as peft.
    model, tokenizer = load_causal_lm(examples_dir / "base", "cpu")
    base = _logits(model, tokenizer, _TEXTS)
    with apply_adapter(model, adapter):
        ours = _logits(model, tokenizer, _TEXTS)
    torch.testing.assert_close(ours, original, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base, original, atol=1e-3)  # the adapter really changes the output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rank_pattern_rslora_and_dtype_follow_peft(examples_dir: Path, tmp_path: Path, dtype: torch.dtype) -> None:
    """Per-module ranks/alphas and rsLoRA scaling mean what peft means by them."""
    generator = torch.Generator().manual_seed(0)
    config = AdapterConfig(
        r=4,
        lora_alpha=8,
        target_modules=("q_proj", "v_proj"),
        use_rslora=True,
        rank_pattern={"layers.1.self_attn.q_proj": 6},
        alpha_pattern={"v_proj": 3},
    )
    modules = {}
    for layer in range(2):
        for name, d_out in (("q_proj", 128), ("v_proj", 64)):
            module = f"model.layers.{layer}.self_attn.{name}"
            r = config.rank_for(module)
            b = (torch.randn(d_out, r, generator=generator) * 0.1).to(dtype)
            a = (torch.randn(r, 128, generator=generator) * 0.1).to(dtype)
            modules[module] = LoraModule(b=b, a=a, scaling=config.scaling_for(module))
    assert modules["model.layers.1.self_attn.q_proj"].rank == 6
    assert modules["model.layers.0.self_attn.v_proj"].scaling == pytest.approx(3 / 4**0.5)

    directory = write_adapter(LoraAdapter(config, modules), tmp_path / "patterned")
    adapter = read_adapter(directory)
    assert adapter.modules["model.layers.1.self_attn.q_proj"].a.dtype == dtype

    expected = _peft_logits(examples_dir / "base", directory)
    model, tokenizer = load_causal_lm(examples_dir / "base", "cpu")
    with apply_adapter(model, adapter.to(dtype=torch.float32)):
        ours = _logits(model, tokenizer, _TEXTS)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
