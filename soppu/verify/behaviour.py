"""The behaviour check: does a compressed adapter make the base model act like the original adapter?

Reconstruction error overstates the damage (44% relative error can leave every greedy answer intact) and can
also hide it, so verification runs the model. For each adapter and each probe prompt:

1. generate ``max_new_tokens`` tokens greedily with the ORIGINAL adapter (the reference continuation);
2. run the prompt + that continuation once with each adapter (teacher-forced) and compare, at every position,
   the next-token distributions: ``KL(p_orig || p_comp)`` in nats (mean and max over positions);
3. greedy agreement: the share of continuation positions where the compressed adapter's argmax equals the
   original's token. When every position agrees, the compressed adapter's own greedy continuation is
   identical (by induction over the shared prefix), which is reported as ``identical``.

:class:`BehaviourThresholds` turns the numbers into pass/fail per adapter; the check passes when every adapter
does. Both adapters are applied through :func:`soppu.adapter.apply.apply_adapter` (the reference path) on the
model's own device, without gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from soppu.adapter import LoraAdapter
from soppu.adapter.apply import apply_adapter
from soppu.compression.distill import position_kl
from soppu.generation import greedy_generate

__all__ = [
    "AdapterBehaviour",
    "BehaviourReport",
    "BehaviourThresholds",
    "ProbeBehaviour",
    "check_behaviour",
    "next_token_kl",
]


@dataclass(frozen=True)
class BehaviourThresholds:
    """When a compressed adapter counts as behaving like its original (KL in nats).

    Defaults: ``max_kl_mean=0.1`` (on average the next-token distributions stay close: 0.1 nats is about what
    moving 10% of the probability mass to other tokens costs), ``max_kl_max=2.0`` (no single position may flip a
    confident prediction; a flat distribution may still reshuffle) and ``min_agreement=0.9`` (at least 90% of the
    original's greedy tokens stay the compressed adapter's argmax). Measured on the example fixture (20 users,
    JD-Full, R = 16..48, 4 probes, 8 tokens): they pass 30 of the 55 adapters that kept every answer and 3 of the
    45 that lost some (each of those 3 lost one answer of four). They are deliberately stricter than "the answer
    survives" and far looser than float rounding (an exact compression scores KL ~1e-7 and agreement 1).
    """

    max_kl_mean: float = 0.1
    max_kl_max: float = 2.0
    min_agreement: float = 0.9

    def __post_init__(self) -> None:
        if not (self.max_kl_mean >= 0 and self.max_kl_max >= 0):
            raise ValueError(f"KL thresholds must be non-negative, got {self.max_kl_mean}, {self.max_kl_max}")
        if not 0 <= self.min_agreement <= 1:
            raise ValueError(f"min_agreement must lie in [0, 1], got {self.min_agreement}")

    def failures(self, kl_mean: float, kl_max: float, agreement: float) -> tuple[str, ...]:
        """The names of the thresholds these numbers break (empty when they pass)."""
        broken = []
        if kl_mean > self.max_kl_mean:
            broken.append("max_kl_mean")
        if kl_max > self.max_kl_max:
            broken.append("max_kl_max")
        if agreement < self.min_agreement:
            broken.append("min_agreement")
        return tuple(broken)


@dataclass(frozen=True)
class ProbeBehaviour:
    """One probe prompt for one adapter."""

    prompt: str
    positions: int  # teacher-forced positions compared by KL (prompt + continuation)
    tokens: int  # continuation tokens compared for agreement
    kl_mean: float
    kl_max: float
    agreement: float
    identical: bool
    continuation: list[int]  # the original adapter's greedy token ids


@dataclass(frozen=True)
class AdapterBehaviour:
    """One adapter over every probe: KL pooled over all positions, agreement over all continuation tokens."""

    name: str
    kl_mean: float
    kl_max: float
    agreement: float
    identical: bool  # every probe's greedy continuation is the same with both adapters
    failures: tuple[str, ...]  # the thresholds broken; empty when it passes
    probes: tuple[ProbeBehaviour, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class BehaviourReport:
    thresholds: BehaviourThresholds
    max_new_tokens: int
    adapters: tuple[AdapterBehaviour, ...]

    @property
    def passed(self) -> bool:
        return all(adapter.passed for adapter in self.adapters)

    def adapter(self, name: str) -> AdapterBehaviour:
        for candidate in self.adapters:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: thresholds, overall pass, and per adapter its numbers, pass flag and probes."""
        return {
            "passed": self.passed,
            "max_new_tokens": self.max_new_tokens,
            "thresholds": dataclasses.asdict(self.thresholds),
            "adapters": {a.name: _adapter_dict(a) for a in self.adapters},
        }


def _adapter_dict(adapter: AdapterBehaviour) -> dict[str, Any]:
    return {
        **{
            f.name: getattr(adapter, f.name)
            for f in dataclasses.fields(adapter)
            if f.name not in ("failures", "probes")
        },
        "passed": adapter.passed,
        "failures": list(adapter.failures),
        "probes": [dataclasses.asdict(probe) for probe in adapter.probes],
    }


def next_token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(p) || softmax(q))`` in nats over the last axis, per position, computed in float32."""
    return position_kl(torch.log_softmax(logits_p.float(), dim=-1), logits_q).clamp_min(0.0)


def _logits(model: nn.Module, ids: list[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    logits: torch.Tensor = model(input_ids=torch.tensor([ids], device=device)).logits[0]
    return logits


def _compare(
    prompt: str, prompt_len: int, continuation: list[int], original: torch.Tensor, compressed: torch.Tensor
) -> ProbeBehaviour:
    kl = next_token_kl(original, compressed)
    # The logits at position t predict token t + 1: the continuation is predicted from prompt_len - 1 on.
    predicted = compressed[prompt_len - 1 : prompt_len - 1 + len(continuation)].argmax(-1).tolist()
    matches = sum(int(p == t) for p, t in zip(predicted, continuation, strict=True))
    return ProbeBehaviour(
        prompt=prompt,
        positions=kl.numel(),
        tokens=len(continuation),
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        agreement=matches / len(continuation),
        identical=matches == len(continuation),
        continuation=continuation,
    )


def _summarise(name: str, probes: list[ProbeBehaviour], thresholds: BehaviourThresholds) -> AdapterBehaviour:
    positions = sum(p.positions for p in probes)
    tokens = sum(p.tokens for p in probes)
    kl_mean = sum(p.kl_mean * p.positions for p in probes) / positions
    kl_max = max(p.kl_max for p in probes)
    agreement = sum(p.agreement * p.tokens for p in probes) / tokens
    return AdapterBehaviour(
        name=name,
        kl_mean=kl_mean,
        kl_max=kl_max,
        agreement=agreement,
        identical=all(p.identical for p in probes),
        failures=thresholds.failures(kl_mean, kl_max, agreement),
        probes=tuple(probes),
    )


@torch.no_grad()
def check_behaviour(
    model: nn.Module,
    tokenizer: Any,
    originals: Mapping[str, LoraAdapter],
    compressed: Mapping[str, LoraAdapter],
    probes: Sequence[str],
    *,
    max_new_tokens: int = 8,
    thresholds: BehaviourThresholds | None = None,
) -> BehaviourReport:
    """Compare each compressed adapter (PEFT form, e.g. from :func:`soppu.compression.export.to_lora`) with its
    original on ``probes``; ``compressed`` must hold exactly the names of ``originals``."""
    thresholds = thresholds or BehaviourThresholds()
    if set(originals) != set(compressed):
        missing, extra = sorted(set(originals) - set(compressed)), sorted(set(compressed) - set(originals))
        raise ValueError(f"compressed adapters must match the originals (missing {missing}, extra {extra})")
    if not probes:
        raise ValueError("the behaviour check needs at least one probe prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    prompt_ids = [list(tokenizer(probe)["input_ids"]) for probe in probes]
    eos = getattr(tokenizer, "eos_token_id", None)

    results = []
    for name, original in originals.items():
        with apply_adapter(model, original):
            continuations = [
                greedy_generate(model, ids, max_new_tokens=max_new_tokens, eos_token_id=eos) for ids in prompt_ids
            ]
            reference = [_logits(model, ids + cont) for ids, cont in zip(prompt_ids, continuations, strict=True)]
        with apply_adapter(model, compressed[name]):
            candidate = [_logits(model, ids + cont) for ids, cont in zip(prompt_ids, continuations, strict=True)]
        probe_results = [
            _compare(probe, len(ids), cont, ref, cand)
            for probe, ids, cont, ref, cand in zip(probes, prompt_ids, continuations, reference, candidate, strict=True)
        ]
        results.append(_summarise(name, probe_results, thresholds))
    return BehaviourReport(thresholds=thresholds, max_new_tokens=max_new_tokens, adapters=tuple(results))
