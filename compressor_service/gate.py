"""The compression policy and the quality gate the pipeline runs with, built from the settings.

The gate's behaviour check runs the loaded base model with each original and compressed adapter. Two guards
the core gate leaves to its caller live here: the check is skipped (the error check alone decides) for an
adapter that does not fit the loaded model, since another base model's adapter says nothing about this one's
behaviour and would fail on the shapes; and checks are serialized, because they hook the one shared model.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from soppu.adapter import LoraAdapter
from soppu.compression import Mode
from soppu.models import load_causal_lm, resolve_device
from soppu.registry.policy import CompressionPolicy, QualityGate
from soppu.verify.behaviour import BehaviourThresholds

from .settings import CompressorSettings

__all__ = ["FittingGate", "build_gate", "build_policy", "fits"]

log = logging.getLogger(__name__)


def fits(model: nn.Module, adapter: LoraAdapter) -> bool:
    """Whether every module the adapter adapts is a linear layer of ``model`` with the adapter's shape."""
    for name, module in adapter:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            return False
        weight = getattr(layer, "weight", None)
        if not isinstance(layer, nn.Linear) or weight is None or tuple(weight.shape) != module.shape:
            return False
    return True


@dataclass
class FittingGate(QualityGate):
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def check(self, original: LoraAdapter, exported: LoraAdapter, errors: dict[str, float]) -> dict[str, Any]:
        if self.model is None:
            return super().check(original, exported, errors)
        if not fits(self.model[0], original):
            return QualityGate.check(replace(self, model=None), original, exported, errors)
        with self._lock:
            return super().check(original, exported, errors)


def build_policy(settings: CompressorSettings) -> CompressionPolicy:
    return CompressionPolicy(
        mode=Mode(settings.mode),
        rank=settings.rank if settings.max_error is None else None,
        max_error=settings.max_error,
        refit_after=settings.refit_after,
        device=str(resolve_device(settings.device)),
    )


def build_gate(settings: CompressorSettings) -> FittingGate:
    """The gate; loads the base model (slow: call it in a worker thread) when one is configured."""
    model = None
    if settings.base_model is not None:
        log.info("loading %s for the behaviour check", settings.base_model)
        model = load_causal_lm(settings.base_model, str(resolve_device(settings.device)))
    return FittingGate(
        max_error=settings.gate_max_error,
        thresholds=BehaviourThresholds(
            max_kl_mean=settings.gate_kl_mean, max_kl_max=settings.gate_kl_max, min_agreement=settings.gate_agreement
        ),
        probes=tuple(settings.gate_probes),
        model=model,
        base_model=settings.base_model_id,
    )
