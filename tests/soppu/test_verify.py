"""Verification: the error report, the per-layer plot, and the behaviour check on the example model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from soppu.adapter import LoraAdapter, LoraModule
from soppu.compression.export import to_lora
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode, ModuleBasis
from soppu.models import load_causal_lm
from soppu.verify import (
    BehaviourThresholds,
    check_behaviour,
    error_report,
    module_position,
    next_token_kl,
    plot_errors,
    write_report,
)
from tests.soppu.compression_builders import exact_compression, example_adapters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROBES = ["My favourite colour is", "My pet is a", "My home city is"]


def _module(layer: int | None, kind: str) -> str:
    if layer is None:
        return kind
    block = "mlp" if kind in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{block}.{kind}"


def _compression(errors: dict[str, dict[str, float]], mode: Mode = Mode.FULL, rank: int = 2) -> Compression:
    """A compression whose adapters carry the given errors (module -> error per adapter name)."""
    modules = sorted({m for per in errors.values() for m in per}) or [_module(0, "q_proj")]
    eye = torch.eye(4)[:, :rank]
    bases = {m: ModuleBasis(eye, eye) for m in modules}
    core = torch.zeros((rank, rank) if mode is Mode.FULL else (rank,))
    adapters = [CompressedAdapter(name, 0, dict.fromkeys(modules, core), {}, {}, per) for name, per in errors.items()]
    return Compression(mode, "toy/base", ("q_proj", "v_proj"), [Cluster(bases)], adapters)


# --- the error report ----------------------------------------------------------------------------------


def test_error_report_structure_and_numbers(tmp_path: Path) -> None:
    q, v = _module(0, "q_proj"), _module(0, "v_proj")
    compression = _compression({"alice": {q: 0.1, v: 0.3}, "bob": {q: 0.5, v: 0.1}, "carol": {q: 0.2}})
    report = error_report(compression)
    assert report["mode"] == "full" and report["ranks"] == [{q: 2, v: 2}] and report["max_rank"] == 2
    assert report["adapters_count"] == 3 and report["clusters"] == 1
    assert report["adapters"]["alice"] == {"cluster": 0, "errors": {q: 0.1, v: 0.3}, "mean": 0.2, "max": 0.3}
    assert report["modules"][q]["mean"] == pytest.approx(0.8 / 3)
    assert report["modules"][q]["max"] == 0.5 and report["modules"][q]["worst_adapter"] == "bob"
    assert report["modules"][v]["count"] == 2
    assert report["worst_adapter"] == {"name": "bob", "mean": 0.3, "max": 0.5}
    assert report["overall"]["max"] == 0.5 and report["overall"]["count"] == 5
    assert report["overall"]["mean"] == pytest.approx(1.2 / 5)
    assert report["missing"] == [{"adapter": "carol", "module": v}]

    path = write_report(report, tmp_path / "out" / "report.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))


def test_error_report_without_errors() -> None:
    report = error_report(_compression({"alice": {}}))
    assert report["overall"] is None and report["worst_adapter"] is None and report["modules"] == {}


# --- the plot ------------------------------------------------------------------------------------------


def test_module_positions() -> None:
    assert module_position("model.layers.12.self_attn.q_proj") == (12, "q_proj")
    assert module_position("model.layers.3.mlp.down_proj") == (3, "down_proj")
    assert module_position("lm_head") == (None, "lm_head")


def test_plot_is_a_png(tmp_path: Path) -> None:
    kinds = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    gen = torch.Generator().manual_seed(0)
    errors = {
        f"user-{i}": {
            **{_module(layer, kind): float(torch.rand((), generator=gen)) for layer in range(3) for kind in kinds},
            "lm_head": 0.05 * i,
        }
        for i in range(4)
    }
    path = plot_errors(_compression(errors, Mode.DIAG), tmp_path / "plots" / "errors.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # axes, bars, dots, legend: far more than an empty canvas
    # Without any recorded error it still writes a (captioned) plot.
    assert plot_errors(_compression({"alice": {}}), tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)


# --- the behaviour check -------------------------------------------------------------------------------


def test_kl_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(next_token_kl(logits, logits), torch.zeros(5))
    assert (next_token_kl(logits, -logits) > 0).all()


def test_thresholds_name_what_fails() -> None:
    thresholds = BehaviourThresholds(max_kl_mean=0.1, max_kl_max=1.0, min_agreement=0.8)
    assert thresholds.failures(0.1, 1.0, 0.8) == ()
    assert thresholds.failures(0.2, 2.0, 0.5) == ("max_kl_mean", "max_kl_max", "min_agreement")
    assert thresholds.failures(0.0, 1.5, 1.0) == ("max_kl_max",)
    with pytest.raises(ValueError):
        BehaviourThresholds(min_agreement=1.5)


@pytest.fixture(scope="module")
def model_and_adapters(examples_dir: Path) -> tuple[torch.nn.Module, object, dict[str, LoraAdapter], Compression]:
    adapters, base_model = example_adapters(examples_dir)
    model, tokenizer = load_causal_lm(examples_dir / "base", "cpu")
    return model, tokenizer, adapters, exact_compression(adapters, base_model)


def test_an_exact_compression_passes(model_and_adapters: tuple) -> None:
    model, tokenizer, originals, compression = model_and_adapters
    # The original as its own "compressed" form: bit-identical logits, so even zero tolerances pass.
    strict = BehaviourThresholds(max_kl_mean=0.0, max_kl_max=0.0, min_agreement=1.0)
    itself = check_behaviour(model, tokenizer, originals, originals, PROBES, max_new_tokens=4, thresholds=strict)
    assert itself.passed
    assert all(a.kl_max == 0.0 and a.agreement == 1.0 and a.identical for a in itself.adapters)

    exported = {a.name: to_lora(compression, a) for a in compression.adapters}
    report = check_behaviour(model, tokenizer, originals, exported, PROBES, max_new_tokens=6)
    assert report.passed and report.max_new_tokens == 6
    for adapter in report.adapters:
        assert adapter.kl_max < 1e-4 and adapter.agreement == 1.0 and adapter.identical and not adapter.failures
        assert len(adapter.probes) == len(PROBES)
        assert all(1 <= p.tokens <= 6 and p.positions > p.tokens for p in adapter.probes)
    body = report.to_dict()
    assert json.loads(json.dumps(body, allow_nan=False)) == body
    assert body["passed"] is True and set(body["adapters"]) == set(originals)
    assert body["thresholds"] == dataclasses.asdict(BehaviourThresholds())
    first = body["adapters"][compression.adapters[0].name]
    assert first["passed"] is True and first["failures"] == [] and len(first["probes"]) == len(PROBES)


def _damaged(compression: Compression, factor: float) -> Compression:
    adapters = [
        dataclasses.replace(a, cores={m: factor * core for m, core in a.cores.items()}) for a in compression.adapters
    ]
    return dataclasses.replace(compression, adapters=adapters)


def test_a_damaged_compression_fails_unless_the_thresholds_allow_it(model_and_adapters: tuple) -> None:
    model, tokenizer, originals, compression = model_and_adapters
    damaged = _damaged(compression, -3.0)
    exported = {a.name: to_lora(damaged, a) for a in damaged.adapters}
    report = check_behaviour(model, tokenizer, originals, exported, PROBES, max_new_tokens=4)
    assert not report.passed
    assert all(not a.passed and "max_kl_mean" in a.failures for a in report.adapters)
    assert all(a.kl_mean > 0.5 for a in report.adapters)
    assert report.to_dict()["passed"] is False

    lenient = BehaviourThresholds(max_kl_mean=float("inf"), max_kl_max=float("inf"), min_agreement=0.0)
    one = {name: originals[name] for name in list(originals)[:1]}
    allowed = check_behaviour(
        model, tokenizer, one, {n: exported[n] for n in one}, PROBES[:1], max_new_tokens=2, thresholds=lenient
    )
    assert allowed.passed


def test_behaviour_check_rejects_mismatched_inputs(model_and_adapters: tuple) -> None:
    model, tokenizer, originals, _ = model_and_adapters
    name = next(iter(originals))
    with pytest.raises(ValueError, match="match the originals"):
        check_behaviour(model, tokenizer, originals, {name: originals[name]}, PROBES)
    with pytest.raises(ValueError, match="probe"):
        check_behaviour(model, tokenizer, originals, originals, [])


def test_behaviour_check_works_with_a_bf16_adapter(model_and_adapters: tuple) -> None:
    model, tokenizer, originals, _ = model_and_adapters
    name, original = next(iter(originals.items()))
    low = LoraAdapter(
        original.config,
        {m: LoraModule(x.b.to(torch.bfloat16), x.a.to(torch.bfloat16), x.scaling) for m, x in original.modules.items()},
    )
    report = check_behaviour(model, tokenizer, {name: original}, {name: low}, PROBES[:2], max_new_tokens=3)
    assert report.adapter(name).kl_mean < 0.05
