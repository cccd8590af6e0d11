"""The fallback ladder: which form of a user's adapter is served. Each step is tried only if the one before
failed the quality gate (:class:`soppu.registry.policy.QualityGate`):

1. ``projection``: the cores ``U^T W V`` on the cohort's bases;
2. ``fitted``: behaviour-fitted cores on the same bases (:meth:`QualityGate.fit`), when the gate has a model;
3. ``original``: the upload itself (the caller serves it when no step passed).

A newcomer (a member whose update did not help fit the basis) climbs only onto a basis fitted on at least
``policy.min_basis_members`` members: a basis fitted on one or two users spans little of anyone else's update,
no core on it can make up for that, and running the model to judge it would only cost time (the refit is the
way there). Where no model runs, the error cap judges such a newcomer as it judges anyone.

A fit whose loss turned non-finite is refused outright. Every step tried leaves an entry with its gate result,
and a skipped step says why. No I/O: the pipeline publishes what this chooses.
"""

from __future__ import annotations

import time
from dataclasses import replace

from soppu.adapter import LoraAdapter
from soppu.adapter.served_form import SERVED_RANKS
from soppu.compression import Compression, reconstruction_errors
from soppu.compression.export import to_lora
from soppu.compression.model import CompressedAdapter
from soppu.registry.policy import CompressionPolicy, QualityGate
from soppu.registry.results import GateVerdict, LadderStep, StepRecord

__all__ = ["climb", "served_by"]


def served_by(ladder: list[LadderStep]) -> str:
    """The step that serves the user: the last one tried if its gate passed, else ``original``."""
    return ladder[-1].record.step if ladder[-1].gate.passed else "original"


def _skipped_projection(compressed: CompressedAdapter, reason: str) -> LadderStep:
    worst = max(compressed.errors.values(), default=0.0)
    return LadderStep(StepRecord("projection", skipped=reason), GateVerdict.refused(reason, worst))


def climb(
    gate: QualityGate,
    policy: CompressionPolicy,
    compression: Compression,
    compressed: CompressedAdapter,
    original: LoraAdapter,
    probes: tuple[str, ...],
    member: str,
    contributors: list[str],
) -> tuple[CompressedAdapter, LoraAdapter, list[LadderStep]]:
    """The candidate that passed (or the last one tried), its export, and one entry per step (its record: the
    step's name and own figures, or why it was skipped; and the gate's verdict). The last entry's gate decides."""
    exported = to_lora(compression, compressed)
    if exported.config.r > SERVED_RANKS[-1]:
        reason = f"the export's rank {exported.config.r} is over {SERVED_RANKS[-1]}, the largest LoRAX serves"
        return compressed, exported, [_skipped_projection(compressed, reason)]
    young = member not in contributors and len(contributors) < policy.min_basis_members
    if young and gate.judges_behaviour(original):  # without a model the cheap error cap judges it anyway
        reason = (
            f"the basis was fitted on {len(contributors)} member(s) < {policy.min_basis_members}: wait for the refit"
        )
        return compressed, exported, [_skipped_projection(compressed, reason)]
    reference = gate.reference(original, probes)  # the original's side, once for every step
    projected = gate.check(original, exported, compressed.errors, probes, reference)
    ladder = [LadderStep(StepRecord("projection"), projected)]
    if projected.passed:
        return compressed, exported, ladder
    if not gate.can_fit(original):
        skipped = StepRecord("fitted", skipped="no base model to fit on (or fitting is off)")
        return compressed, exported, [*ladder, LadderStep(skipped, projected)]
    started = time.monotonic()
    bases = {m: compression.basis(compressed, m) for m in compressed.cores}
    fitted = gate.fit(original, bases, compressed.cores, compression.mode, probes)
    step = StepRecord(
        "fitted",
        kl=(round(fitted.kl_start, 6), round(fitted.kl_end, 6)),
        fit_steps=fitted.steps,
        seconds=round(time.monotonic() - started, 3),
    )
    if fitted.diverged:
        # Its best finite cores may still be fine, but a diverged fit is a sign of trouble: never served.
        diverged = GateVerdict.refused("the fit diverged (a non-finite loss)", max_error=None)
        return compressed, exported, [*ladder, LadderStep(step, diverged)]
    candidate = replace(compressed, cores=fitted.cores)
    errors = reconstruction_errors(
        replace(compression, adapters=[candidate]), candidate.name, original, device=policy.device
    )
    candidate = replace(candidate, errors=errors)
    exported = to_lora(compression, candidate)
    return candidate, exported, [*ladder, LadderStep(step, gate.check(original, exported, errors, probes, reference))]
