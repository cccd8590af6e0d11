"""Our adapters as peft 0.4.0 really reads them: the library LoRAX 0.12.1 loads adapter configs with.

The libraries come from ``make lorax-libs`` (``make test`` runs it): LoRAX's pins in a folder of their own, put
in front of the venv's newer ones by PYTHONPATH in a subprocess that runs ``peft040_probe.py``. One probe run
reads every adapter of this file (the imports cost seconds; the adapters nothing).

Two groups:

- what peft 0.4.0 itself does to SOPPU's adapters written as they are: it keeps r, lora_alpha, target_modules
  and fan_in_fan_out, drops use_rslora, rank_pattern, alpha_pattern and use_dora without a word, scales every
  module ``lora_alpha / r``, and refuses weights whose rank is not ``r``. So an rsLoRA or alpha-patterned
  original served raw is mis-scaled, and a rank-patterned one does not load;
- the served form (``soppu.adapter.served_form.served_form``), written by the same writer: peft 0.4.0 computes
  exactly SOPPU's delta of the original, on every module, for every case.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, read_adapter, write_adapter

ROOT = Path(__file__).resolve().parents[2]
LORAX_LIBS = ROOT / ".cache" / "lorax-libs"
PROBE = Path(__file__).with_name("peft040_probe.py")
# LoRAX 0.12.1's pins (Makefile: LORAX_LIB_PINS); the probe reports what it really imported.
PINS = {
    "peft": "0.4.0",
    "transformers": "4.45.1",
    "huggingface_hub": "0.23.5",
    "tokenizers": "0.20.0",
    "accelerate": "0.24.1",
}

# A tiny random Llama (transformers 4.45.1 builds it on CPU in milliseconds): head_dim 8, two KV heads.
LLAMA = {
    "vocab_size": 32,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
# (d_out, d_in) of the layer types the adapters adapt, on every layer.
LAYER_SHAPES = {"self_attn.q_proj": (32, 32), "self_attn.v_proj": (16, 32), "mlp.down_proj": (32, 48)}
SHAPES = {
    f"model.layers.{layer}.{name}": shape
    for layer in range(LLAMA["num_hidden_layers"])
    for name, shape in LAYER_SHAPES.items()
}
TARGETS = tuple(sorted(name.rsplit(".", 1)[-1] for name in LAYER_SHAPES))
DROPPED = ["alpha_pattern", "rank_pattern", "use_dora", "use_rslora"]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@dataclass(frozen=True)
class Case:
    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None

    def config(self) -> AdapterConfig:
        return AdapterConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            target_modules=TARGETS,
            base_model_name_or_path="toy/tiny-llama",
            use_rslora=self.use_rslora,
            rank_pattern=dict(self.rank_pattern or {}),
            alpha_pattern=dict(self.alpha_pattern or {}),
        )


CASES = {
    "plain": Case(r=8, lora_alpha=16),
    "r4": Case(r=4, lora_alpha=16),
    "r12": Case(r=12, lora_alpha=16),
    "rslora": Case(r=8, lora_alpha=16, use_rslora=True),
    "rank_pattern": Case(r=4, lora_alpha=8, rank_pattern={"layers.1.self_attn.q_proj": 12, "down_proj": 6}),
    "alpha_pattern": Case(r=8, lora_alpha=16, alpha_pattern={"v_proj": 3, "layers.0.mlp.down_proj": 40}),
}


def make_original(case: Case, seed: int) -> LoraAdapter:
    """An adapter as a user would upload it: SOPPU's in-memory form, every module scaled as PEFT means it."""
    config = case.config()
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for module, (d_out, d_in) in SHAPES.items():
        rank = config.rank_for(module)
        a = torch.randn(rank, d_in, generator=generator) * 0.3
        b = torch.randn(d_out, rank, generator=generator) * 0.3
        modules[module] = LoraModule(b=b, a=a, scaling=config.scaling_for(module))
    return LoraAdapter(config=config, modules=modules)


def run_probe(directories: list[Path], out: Path) -> dict[str, Any]:
    """peft040_probe.py on ``directories`` under LoRAX's pinned libraries; its JSON report."""
    if not (LORAX_LIBS / ".installed").exists():
        pytest.fail(
            f"LoRAX 0.12.1's pinned libraries are not installed in {LORAX_LIBS}: run `make lorax-libs` (or `make test`)"
        )
    env = {
        **os.environ,
        "PYTHONPATH": str(LORAX_LIBS),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, str(PROBE), "--model-config", json.dumps(LLAMA), "--out", str(out)]
    done = subprocess.run(
        [*command, *map(str, directories)], env=env, capture_output=True, text=True, check=False, cwd=out.parent
    )
    assert done.returncode == 0, f"the peft 0.4.0 probe failed:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    versions = {name: report["versions"][name] for name in PINS}
    assert versions == PINS, f"the probe did not import LoRAX's pins (from {report['versions']['peft_file']})"
    assert report["versions"]["peft_file"].startswith(str(LORAX_LIBS))
    return report


@dataclass(frozen=True)
class Reading:
    """One adapter as SOPPU wrote it, and peft 0.4.0's reading of it."""

    original: LoraAdapter
    written: LoraAdapter  # what the written directory holds, read back with SOPPU's reader
    entry: dict[str, Any]

    @property
    def model(self) -> dict[str, Any]:
        return self.entry["model"]

    def deltas(self) -> dict[str, torch.Tensor]:
        assert self.model["loaded"], self.model.get("error")
        return load_file(self.model["deltas_file"])


@pytest.fixture(scope="module")
def readings(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Reading]:
    """(form, case) -> Reading, for form "original" (written as uploaded) and "served" (its served form; absent
    when soppu.adapter.served_form cannot be imported, which fails the served-form tests alone)."""
    try:
        from soppu.adapter.served_form import served_form
    except ImportError:
        served_form = None

    root = tmp_path_factory.mktemp("peft040")
    written: dict[tuple[str, str], tuple[LoraAdapter, Path]] = {}
    for seed, (name, case) in enumerate(CASES.items()):
        original = make_original(case, seed)
        forms = {"original": original}
        if served_form is not None:
            forms["served"] = served_form(original, shapes=SHAPES)
        for form, adapter in forms.items():
            written[form, name] = (original, write_adapter(adapter, root / form / name))
    report = run_probe([directory for _, directory in written.values()], root / "deltas")
    return {
        key: Reading(original, read_adapter(directory), entry)
        for (key, (original, directory)), entry in zip(written.items(), report["adapters"], strict=True)
    }


def served(readings: dict[tuple[str, str], Reading], name: str) -> Reading:
    if ("served", name) not in readings:
        pytest.fail("soppu.adapter.served_form (served_form) cannot be imported: nothing to hold against peft 0.4.0")
    return readings["served", name]


def soppu_deltas(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    return {module: lora.delta() for module, lora in adapter}


# --- peft 0.4.0 on adapters written as uploaded -------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_peft040_keeps_the_plain_fields_and_drops_the_rest_silently(
    readings: dict[tuple[str, str], Reading], name: str
) -> None:
    reading = readings["original", name]
    case = CASES[name]
    raw = json.loads((Path(reading.entry["dir"]) / "adapter_config.json").read_text())
    assert raw["use_rslora"] is case.use_rslora  # our writer does write them ...
    assert raw["rank_pattern"] == (case.rank_pattern or {})
    assert raw["alpha_pattern"] == (case.alpha_pattern or {})
    assert reading.entry["config"] == {
        "r": case.r,
        "lora_alpha": case.lora_alpha,
        "target_modules": list(TARGETS),
        "fan_in_fan_out": False,
        "base_model_name_or_path": "toy/tiny-llama",
    }
    # ... and peft 0.4.0's LoraConfig has no field for them: from_pretrained skips them without a warning, so
    # LoRAX's `hf_config.use_rslora if hasattr(hf_config, "use_rslora") else False` is always False.
    assert reading.entry["dropped"] == DROPPED
    assert reading.entry["has"] == dict.fromkeys(["use_rslora", "rank_pattern", "alpha_pattern", "use_dora"], False)


@pytest.mark.parametrize("name", ["plain", "r4", "r12"])
def test_peft040_applies_a_plain_adapter_as_soppu_does(readings: dict[tuple[str, str], Reading], name: str) -> None:
    """Any rank, peft 0.4.0 included, scales ``lora_alpha / r`` (LoRAX's own rank padding is another matter)."""
    reading = readings["original", name]
    case = CASES[name]
    deltas = reading.deltas()
    assert sorted(deltas) == sorted(SHAPES)
    for module, expected in soppu_deltas(reading.original).items():
        torch.testing.assert_close(deltas[module], expected, **TOLERANCE)
        assert reading.model["modules"][module]["scaling"] == pytest.approx(case.lora_alpha / case.r)
        assert reading.model["modules"][module]["merge_vs_forward_max_abs"] < 1e-4


def test_peft040_mis_scales_rslora_by_sqrt_r(readings: dict[tuple[str, str], Reading]) -> None:
    """use_rslora is dropped: ``alpha / r`` instead of ``alpha / sqrt(r)``, every module too small by sqrt(r)."""
    reading = readings["original", "rslora"]
    case = CASES["rslora"]
    deltas = reading.deltas()
    for module, expected in soppu_deltas(reading.original).items():
        assert reading.model["modules"][module]["scaling"] == pytest.approx(case.lora_alpha / case.r)
        torch.testing.assert_close(deltas[module], expected / math.sqrt(case.r), **TOLERANCE)
        assert not torch.allclose(deltas[module], expected, rtol=0.1)


def test_peft040_mis_scales_alpha_patterned_modules(readings: dict[tuple[str, str], Reading]) -> None:
    """alpha_pattern is dropped: the patterned modules get ``lora_alpha / r``, the others stay right."""
    reading = readings["original", "alpha_pattern"]
    config = reading.original.config
    deltas = reading.deltas()
    mis_scaled = []
    for module, expected in soppu_deltas(reading.original).items():
        alpha = config.alpha_for(module)
        torch.testing.assert_close(deltas[module], expected * config.lora_alpha / alpha, **TOLERANCE)
        if alpha != config.lora_alpha:
            mis_scaled.append(module)
            assert not torch.allclose(deltas[module], expected, rtol=0.1)
    assert mis_scaled == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.v_proj",
    ]


def test_peft040_refuses_rank_patterned_weights(readings: dict[tuple[str, str], Reading]) -> None:
    """rank_pattern is dropped: every LoRA layer is built with rank r, so the other ranks' weights do not fit."""
    model = readings["original", "rank_pattern"].model
    assert model["loaded"] is False
    assert "size mismatch" in model["error"]
    assert "model.layers.1.self_attn.q_proj.lora_A" in model["error"]
    assert "model.layers.0.mlp.down_proj.lora_A" in model["error"]


# --- peft 0.4.0 on the served form ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_served_form_config_survives_peft040_whole(readings: dict[tuple[str, str], Reading], name: str) -> None:
    """Nothing that matters is dropped: r = lora_alpha from the served ranks, no patterns, no rsLoRA."""
    reading = served(readings, name)
    config = reading.entry["config"]
    assert config["r"] in (8, 16, 32, 64, 128)
    assert config["lora_alpha"] == config["r"]
    assert config["target_modules"] == list(TARGETS)
    assert config["fan_in_fan_out"] is False
    raw = json.loads((Path(reading.entry["dir"]) / "adapter_config.json").read_text())
    assert raw["use_rslora"] is False
    assert raw["rank_pattern"] == {}
    assert raw["alpha_pattern"] == {}
    assert raw["use_dora"] is False
    for module in SHAPES:
        assert reading.written.modules[module].rank == config["r"]


@pytest.mark.parametrize("name", list(CASES))
def test_served_form_under_peft040_computes_soppus_delta_of_the_original(
    readings: dict[tuple[str, str], Reading], name: str
) -> None:
    reading = served(readings, name)
    deltas = reading.deltas()
    assert sorted(deltas) == sorted(SHAPES)
    for module, expected in soppu_deltas(reading.original).items():
        assert reading.model["modules"][module]["scaling"] == 1.0
        torch.testing.assert_close(deltas[module], expected, **TOLERANCE)
