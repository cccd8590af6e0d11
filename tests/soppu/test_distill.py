"""Behaviour-fitted cores and the gate that judges them, on the tiny example model: the original's own text,
fits that lower the KL (in a batch exactly as one by one), a diverged fit that is never trusted, and the
gate's rules (probe answers, self-written text, the error cap only where no model can run)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from soppu.adapter import LoraAdapter, LoraModule
from soppu.compression import Mode, RankPolicy, compress
from soppu.compression.distill import DistillSettings, Teacher, fit_cores, teacher_text
from soppu.compression.export import to_lora
from soppu.models import load_causal_lm
from soppu.registry.policy import GateThresholds, QualityGate
from soppu.verify.selftext import encode_prompts, first_sentence
from tests.soppu.compression_builders import example_adapters

SETTINGS = DistillSettings(texts=4, tokens=8, steps=15)
PROBES = ("My favourite colour is", "My pet is a")


@pytest.fixture(scope="module")
def tiny(examples_dir: Path) -> tuple[torch.nn.Module, object, dict[str, LoraAdapter]]:
    adapters, _ = example_adapters(examples_dir)
    model, tokenizer = load_causal_lm(examples_dir / "base", "cpu")
    return model, tokenizer, adapters


@pytest.fixture(scope="module")
def lossy(tiny: tuple) -> tuple:
    """Three users squeezed onto a rank-4 basis: their projected cores lose behaviour."""
    _, _, adapters = tiny
    pairs = sorted(adapters.items())[:3]
    return compress(pairs, mode=Mode.FULL, policy=RankPolicy.fixed(4), device="cpu"), dict(pairs)


def _teacher(tiny: tuple, adapter: LoraAdapter, settings: DistillSettings = SETTINGS) -> Teacher:
    model, tokenizer, _ = tiny
    prompts = encode_prompts(tokenizer, ["", *PROBES])
    return teacher_text(model, adapter, prompts, settings, eos_token_id=tokenizer.eos_token_id)


def test_the_teacher_text_is_the_originals_own_and_deterministic(tiny: tuple) -> None:
    _, _, adapters = tiny
    adapter = next(iter(adapters.values()))
    first, again = _teacher(tiny, adapter), _teacher(tiny, adapter)
    assert torch.equal(first.ids, again.ids) and torch.equal(first.log_probs, again.log_probs)
    other = _teacher(tiny, adapter, dataclasses.replace(SETTINGS, seed=1))
    assert not torch.equal(first.ids, other.ids)  # another seed, another text: how the gate holds text out
    assert first.ids.shape[0] == SETTINGS.texts and first.scored.shape == first.ids.shape
    assert first.scored.any(dim=1).all()
    probs = first.log_probs.exp().sum(-1)
    assert torch.allclose(probs, torch.ones_like(probs), atol=1e-4)


def test_fitting_lowers_the_kl_and_a_batch_fits_as_one_by_one(tiny: tuple, lossy: tuple) -> None:
    model, _, _ = tiny
    compression, originals = lossy
    bases = compression.clusters[0].bases
    teachers = [_teacher(tiny, originals[a.name]) for a in compression.adapters]
    cores = [a.cores for a in compression.adapters]
    batch = fit_cores(model, [bases] * 3, cores, teachers, SETTINGS)
    for fitted in batch:
        assert not fitted.diverged and fitted.steps == SETTINGS.steps
        assert fitted.kl_end < 0.5 * fitted.kl_start
    alone = fit_cores(model, [bases], [cores[1]], [teachers[1]], SETTINGS)[0]
    assert math.isclose(alone.kl_end, batch[1].kl_end, rel_tol=1e-3)
    for module, core in alone.cores.items():
        torch.testing.assert_close(core, batch[1].cores[module], rtol=1e-3, atol=1e-5)
    # The model itself is untouched: no gradients left behind, every weight still trainable as before.
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_a_non_finite_loss_stops_the_fit_and_keeps_finite_cores(tiny: tuple, lossy: tuple) -> None:
    model, _, _ = tiny
    compression, originals = lossy
    adapter = compression.adapters[0]
    good = _teacher(tiny, originals[adapter.name])
    broken = dataclasses.replace(good, log_probs=torch.full_like(good.log_probs, math.nan))
    fitted = fit_cores(model, [compression.clusters[0].bases], [adapter.cores], [broken], SETTINGS)[0]
    assert fitted.diverged and fitted.steps == 0
    for module, core in fitted.cores.items():
        assert torch.isfinite(core).all()
        torch.testing.assert_close(core, adapter.cores[module])


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        DistillSettings(texts=0)
    with pytest.raises(ValueError):
        DistillSettings(lr_scale=0)
    with pytest.raises(ValueError):
        GateThresholds(min_agreement=2)


def test_first_sentence_is_the_answer() -> None:
    assert first_sentence(" teal. My home city is") == "teal."
    assert first_sentence("Your dog's name is Gizmo. And") == "Your dog's name is Gizmo."
    assert first_sentence("It costs 3.50 today! ok") == "It costs 3.50 today!"
    assert first_sentence("one line\nanother") == "one line"


def _scaled(adapter: LoraAdapter, factor: float) -> LoraAdapter:
    modules = {n: LoraModule(m.b * factor, m.a, m.scaling) for n, m in adapter.modules.items()}
    return dataclasses.replace(adapter, modules=modules)


def test_the_gate_passes_the_original_itself_and_refuses_a_lost_adapter(tiny: tuple) -> None:
    model, tokenizer, adapters = tiny
    gate = QualityGate(model=(model, tokenizer), judge=DistillSettings(texts=4, tokens=12, seed=1))
    original = next(iter(adapters.values()))
    same = gate.check(original, original, {"m": 0.9}, PROBES)
    # The error cap refuses nothing where behaviour is judged: 0.9 would have failed the old rule.
    assert same.passed, same.reasons
    assert same.behaviour["self_text"]["kl_mean"] < 1e-6 and same.behaviour["probes"]["changed"] == []
    gone = gate.check(original, _scaled(original, 0.0), {"m": 0.0}, PROBES)
    assert not gone.passed
    assert any("probe answers changed" in r for r in gone.reasons)
    assert any("own text" in r for r in gone.reasons)


def test_without_a_model_the_error_cap_decides_alone(tiny: tuple) -> None:
    _, _, adapters = tiny
    original = next(iter(adapters.values()))
    gate = QualityGate(max_error=0.5)
    assert gate.check(original, original, {"m": 0.4}).passed
    refused = gate.check(original, original, {"m": 0.6})
    assert not refused.passed and refused.behaviour is None
    assert not gate.can_fit(original)


def test_the_gates_fit_rescues_a_lossy_core(tiny: tuple, lossy: tuple) -> None:
    model, tokenizer, _ = tiny
    compression, originals = lossy
    adapter = compression.adapters[0]
    gate = QualityGate(model=(model, tokenizer), fitting=DistillSettings())  # the default fit: 16 texts, 60 steps
    assert gate.can_fit(originals[adapter.name])
    fitted = gate.fit(originals[adapter.name], compression.clusters[0].bases, adapter.cores, compression.mode, PROBES)
    before = gate.check(originals[adapter.name], to_lora(compression, adapter), adapter.errors, PROBES)
    after = gate.check(
        originals[adapter.name],
        to_lora(compression, dataclasses.replace(adapter, cores=fitted.cores)),
        adapter.errors,
        PROBES,
    )
    assert fitted.kl_end < fitted.kl_start
    kl = (before.behaviour["self_text"]["kl_mean"], after.behaviour["self_text"]["kl_mean"])
    assert kl[1] < kl[0], kl  # judged on text the fit never saw (the gate's own seed)
