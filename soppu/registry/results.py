"""What the registry finds out, as typed values: the quality gate's verdict, the steps of the fallback ladder, the
report of a published version, and the catalog's entries (an adapter with its versions).

The report is kept in the bucket inside the version's job record and manifest (:mod:`soppu.registry.records`).
``to_dict`` gives the JSON shape every release has written (an optional key is left out while unset, as it always
was), and ``from_dict`` reads the records of every release: keys an older release did not write yet come back as
None, and keys it does not know are ignored. The compressor's response shapes are derived from these classes
(``compressor_service.schemas``), so each field is defined here once. Shapes only: no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

__all__ = ["AdapterEntry", "GateVerdict", "LadderStep", "ServedFrom", "StepRecord", "VersionEntry", "VersionReport"]


class ServedFrom(StrEnum):
    COMPRESSED = "compressed"
    ORIGINAL = "original"


def _doc(text: str) -> dict[str, str]:
    """A field's description (the compressor's API documentation reads it)."""
    return {"description": text}


def known_fields(cls: type[Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``raw`` that are fields of the dataclass ``cls``: a stored record's keys a newer release added
    are ignored, so an older reader survives them."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def _set(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the optional keys left unset (None): stored records leave them out."""
    return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class GateVerdict:
    """The quality gate's verdict on one candidate (see :class:`soppu.registry.policy.QualityGate`)."""

    passed: bool
    reasons: tuple[str, ...] = field(metadata=_doc("why it failed; empty when it passed"))
    max_error: float | None = field(metadata=_doc("the worst module's relative error (null: the fit diverged)"))
    behaviour: dict[str, Any] | None = field(
        metadata=_doc("self_text (KL, agreement), thresholds and probes; null when no model judged it")
    )

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "max_error": self.max_error,
                "behaviour": self.behaviour}  # fmt: skip

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        return cls(bool(raw["passed"]), tuple(raw["reasons"]), raw.get("max_error"), raw.get("behaviour"))

    @classmethod
    def refused(cls, reason: str, max_error: float | None) -> Self:
        """A failure decided without running the gate (a skipped step, a diverged fit)."""
        return cls(passed=False, reasons=(reason,), max_error=max_error, behaviour=None)


@dataclass(frozen=True)
class StepRecord:
    """One step of the fallback ladder as the report keeps it: its name and its own figures (no verdict)."""

    step: str = field(metadata=_doc("projection or fitted"))
    skipped: str | None = field(default=None, metadata=_doc("why the step was not tried"))
    kl: tuple[float, float] | None = field(default=None, metadata=_doc("the fit's KL at its start and end"))
    fit_steps: int | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _set({**dataclasses.asdict(self), "kl": None if self.kl is None else list(self.kl)})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        known = known_fields(cls, raw)
        kl = known.pop("kl", None)
        return cls(**known, kl=None if kl is None else (float(kl[0]), float(kl[1])))


@dataclass(frozen=True)
class LadderStep:
    """A step the ladder tried (or skipped), with the gate's verdict on it."""

    record: StepRecord
    gate: GateVerdict


@dataclass(frozen=True)
class VersionReport:
    """What the compression of one version gave: its ratio, per-module errors and the quality gate's verdict.
    ``refit``, ``ladder``, ``probes`` and ``served_by`` are absent from the records of older releases."""

    cohort: str
    basis_version: int
    mode: str
    rank: int
    original_parameters: int
    ratio: float = field(metadata=_doc("original parameters / stored parameters (1.0: served original)"))
    errors: dict[str, float] = field(metadata=_doc("module -> relative Frobenius error of the compressed form"))
    gate: GateVerdict = field(metadata=_doc("the verdict on the last step the ladder tried"))
    served_from: ServedFrom
    refit: bool | None = field(default=None, metadata=_doc("this job's cohort was refitted after it"))
    ladder: tuple[StepRecord, ...] | None = field(default=None, metadata=_doc("every step tried, in order"))
    probes: int | None = field(default=None, metadata=_doc("how many probes the upload carried"))
    served_by: str | None = field(default=None, metadata=_doc("the step that serves it: projection, fitted, original"))

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values |= {
            "errors": dict(self.errors),
            "gate": self.gate.to_dict(),
            "served_from": self.served_from.value,
            "ladder": None if self.ladder is None else [step.to_dict() for step in self.ladder],
        }
        return _set(values)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        known = known_fields(cls, raw)
        ladder = known.pop("ladder", None)
        known |= {
            "gate": GateVerdict.from_dict(known["gate"]),
            "served_from": ServedFrom(known["served_from"]),
            "ladder": None if ladder is None else tuple(StepRecord.from_dict(step) for step in ladder),
        }
        return cls(**known)


@dataclass(frozen=True)
class VersionEntry:
    """One version of an adapter in the catalog: its job's state and, once done, its report."""

    version: int
    job_id: str
    state: str
    kind: str
    served_from: str | None = field(default=None, metadata=_doc("null until the version is published"))
    error: dict[str, Any] | None = None  # the job's {"code", "message"} when it failed
    report: VersionReport | None = None


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter of a user in the catalog."""

    name: str
    current_version: int | None = field(metadata=_doc("the version served now; null before the first is published"))
    versions: tuple[VersionEntry, ...]
