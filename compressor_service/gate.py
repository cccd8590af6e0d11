"""The compression policy and the quality gate the pipeline runs with, built from the settings (the gate's
rules are :class:`soppu.registry.policy.QualityGate`'s; this module only loads its base model)."""

from __future__ import annotations

import json
import logging

from soppu.compression import Mode
from soppu.compression.distill import DistillSettings
from soppu.lorax_limits import lorax_dtype
from soppu.models import load_causal_lm, resolve_device
from soppu.registry.policy import JUDGE_SEED, CompressionPolicy, GateThresholds, QualityGate

from .settings import CompressorSettings

__all__ = ["build_gate", "build_policy", "export_dtype"]

log = logging.getLogger(__name__)


def build_policy(settings: CompressorSettings) -> CompressionPolicy:
    return CompressionPolicy(
        mode=Mode(settings.mode),
        rank=settings.rank if settings.max_error is None else None,
        max_error=settings.max_error,
        refit_after=settings.refit_after,
        min_basis_members=settings.min_basis_members,
        device=str(resolve_device(settings.device)),
        export_dtype=export_dtype(settings),
    )


def export_dtype(settings: CompressorSettings) -> str | None:
    """The dtype exports are written in: the setting, or with ``auto`` the one LoRAX serves the base model in
    (read from its config.json), or with no base model the adapter's own."""
    if settings.export_dtype != "auto":
        return settings.export_dtype
    if settings.base_model is None:
        return None
    return lorax_dtype(json.loads((settings.base_model / "config.json").read_text(encoding="utf-8")))


def build_gate(settings: CompressorSettings) -> QualityGate:
    """The gate; loads the base model (slow: call it in a worker thread) when one is configured."""
    model = None
    if settings.base_model is not None:
        log.info("loading %s for the behaviour check", settings.base_model)
        model = load_causal_lm(settings.base_model, str(resolve_device(settings.device)))
    return QualityGate(
        thresholds=GateThresholds(max_kl_lost=settings.gate_kl_lost, min_agreement=settings.gate_agreement),
        prompts=None if settings.gate_prompts is None else tuple(settings.gate_prompts),
        judge=DistillSettings(texts=settings.gate_texts, tokens=settings.gate_tokens, seed=JUDGE_SEED),
        fitting=DistillSettings(texts=settings.fit_texts, tokens=settings.fit_tokens, steps=settings.fit_steps),
        max_error=settings.gate_max_error,
        model=model,
        base_model=settings.base_model_id,
    )
