"""How the registry compresses and when it trusts the result: the compression policy and the quality gate.

The gate passes a compressed adapter when its worst per-module relative error is within ``max_error`` and, if
a base model is loaded for checking and the adapter fits it, its greedy answers and next-token distributions
on the probes stay within the behaviour thresholds (:mod:`soppu.verify.behaviour`). An adapter for another
base model says nothing about this one's behaviour (and would fail on the shapes), so for it the error check
alone decides. Behaviour checks hook the one shared model, so they run one at a time. An adapter that fails
is served from its original instead: a failed verification is never served.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from soppu.adapter import LoraAdapter
from soppu.compression import Mode, RankPolicy
from soppu.verify.behaviour import BehaviourThresholds, check_behaviour

__all__ = ["DEFAULT_PROBES", "CompressionPolicy", "QualityGate", "cohort_name", "fits"]

# Generic prompts for the behaviour check when the operator configures none.
DEFAULT_PROBES = ("My favourite colour is", "My home city is", "My pet is a", "My favourite food is", "Hello,")


@dataclass(frozen=True)
class CompressionPolicy:
    mode: Mode = Mode.FULL
    rank: int | None = 16  # the shared rank R of a cohort's bases; or None to use max_error
    max_error: float | None = None  # pick R to meet this mean relative error instead
    refit_after: int = 1  # refit a cohort once this many members wait on originals
    device: str = "auto"
    seed: int = 0

    def rank_policy(self) -> RankPolicy:
        if self.rank is not None:
            return RankPolicy.fixed(self.rank)
        return RankPolicy.for_error(self.max_error if self.max_error is not None else 0.05)


@dataclass
class QualityGate:
    max_error: float = 0.5  # worst module's relative Frobenius error
    thresholds: BehaviourThresholds = field(default_factory=BehaviourThresholds)
    probes: Sequence[str] = DEFAULT_PROBES
    max_new_tokens: int = 4
    model: Any = None  # (model, tokenizer) of the base model, or None: the error check only
    base_model: str | None = None  # the base model the loaded model stands for (None: any)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def check(self, original: LoraAdapter, exported: LoraAdapter, errors: dict[str, float]) -> dict[str, Any]:
        """{"passed", "reasons", "max_error", "behaviour"}: ``exported`` is the compressed adapter as plain LoRA."""
        worst = max(errors.values(), default=0.0)
        reasons = [] if worst <= self.max_error else [f"max relative error {worst:.3f} > {self.max_error}"]
        behaviour = None
        if self._checks_behaviour(original):
            model, tokenizer = self.model
            with self._lock:
                report = self._behaviour(model, tokenizer, original, exported)
            behaviour = report.to_dict()
            if not report.passed:
                reasons.append("behaviour check failed: " + ", ".join(report.adapter("x").failures))
        return {"passed": not reasons, "reasons": reasons, "max_error": worst, "behaviour": behaviour}

    def _checks_behaviour(self, original: LoraAdapter) -> bool:
        if self.model is None or self.base_model not in (None, original.base_model):
            return False
        return fits(self.model[0], original)

    def _behaviour(self, model: nn.Module, tokenizer: Any, original: LoraAdapter, exported: LoraAdapter) -> Any:
        return check_behaviour(
            model,
            tokenizer,
            {"x": original},
            {"x": exported},
            list(self.probes),
            max_new_tokens=self.max_new_tokens,
            thresholds=self.thresholds,
        )


def fits(model: nn.Module, adapter: LoraAdapter) -> bool:
    """Whether every module the adapter adapts is a linear layer of ``model`` with the adapter's shape."""
    for name, module in adapter:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            return False
        if not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != module.shape:
            return False
    return True


def cohort_name(adapter: LoraAdapter) -> str:
    """Adapters share a cohort (and so a basis) when they adapt the same modules, with the same shapes, of the
    same base model: the name is a digest of exactly that."""
    signature = {
        "base_model": adapter.base_model,
        "modules": {name: list(module.shape) for name, module in adapter},
    }
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:12]
    return f"c-{digest}"
