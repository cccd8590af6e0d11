"""The report of a published version (:class:`soppu.registry.results.VersionReport`): what its compression gave
(the ratio, per-module errors), the steps of the fallback ladder and the gate's verdict on the last, and the form
that serves it. Arithmetic over the compression and the ladder; no I/O."""

from __future__ import annotations

from soppu.adapter import LoraAdapter
from soppu.compression import Compression
from soppu.compression.accounting import bases_parameters, core_parameters
from soppu.compression.model import CompressedAdapter
from soppu.registry.ladder import served_by
from soppu.registry.records import CohortState
from soppu.registry.results import LadderStep, ServedFrom, VersionReport

__all__ = ["version_report"]


def version_report(
    state: CohortState,
    member: str,
    compression: Compression,
    compressed: CompressedAdapter,
    original: LoraAdapter,
    ladder: list[LadderStep],
    probes: int,
) -> VersionReport:
    """The report of ``member`` ("user/adapter") in the cohort ``state``, whose ladder ended with ``compressed``.
    Its ratio counts the cohort's bases shared by every member (itself included); served from the original
    (the last step failed the gate), it stores the original, and the ratio is 1.0."""
    gate = ladder[-1].gate
    members = max(1, len(state.members) + (member not in state.members))
    stored = core_parameters(compressed) + bases_parameters(compression.clusters[0]) / members
    return VersionReport(
        cohort=state.cohort,
        basis_version=state.basis_version,
        mode=compression.mode.value,
        rank=next(iter(compression.clusters[0].bases.values())).rank,
        original_parameters=original.num_parameters(),
        ratio=round(original.num_parameters() / stored, 3) if gate.passed else 1.0,
        errors={m: round(float(e), 6) for m, e in sorted(compressed.errors.items())},
        gate=gate,
        served_from=ServedFrom.COMPRESSED if gate.passed else ServedFrom.ORIGINAL,
        ladder=tuple(step.record for step in ladder),
        probes=probes,
        served_by=served_by(ladder),
    )
