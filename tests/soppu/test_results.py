"""The registry's typed results (soppu.registry.results): each goes to the JSON shape the bucket has always kept
and back, records written before the fallback ladder still load, and a job record stores the same bytes."""

from __future__ import annotations

import json

from soppu.registry.records import JobRecord
from soppu.registry.results import AdapterEntry, GateVerdict, ServedFrom, StepRecord, VersionEntry, VersionReport

_GATE = {"passed": True, "reasons": [], "max_error": 0.034, "behaviour": {"self_text": {"positions": 3}}}
# As a release before the fallback ladder wrote it: no ladder, probes, served_by (nor refit).
_OLD = {
    "cohort": "c-3ad889c0a4f6",
    "basis_version": 1,
    "mode": "full",
    "rank": 16,
    "original_parameters": 16384,
    "ratio": 7.9,
    "errors": {"model.layers.0.self_attn.q_proj": 0.021, "model.layers.0.self_attn.v_proj": 0.034},
    "gate": _GATE,
    "served_from": "compressed",
}
_NEW = {
    **_OLD,
    "ladder": [{"step": "projection"}, {"step": "fitted", "kl": [0.5, 0.1], "fit_steps": 20, "seconds": 1.5}],
    "probes": 2,
    "served_by": "fitted",
    "refit": True,
}


def test_a_gate_verdict_round_trips() -> None:
    verdict = GateVerdict.from_dict(_GATE)
    assert verdict.passed and verdict.reasons == () and verdict.max_error == 0.034
    assert verdict.to_dict() == _GATE
    diverged = GateVerdict.refused("diverged", max_error=None)
    assert diverged.to_dict() == {"passed": False, "reasons": ["diverged"], "max_error": None, "behaviour": None}


def test_a_ladder_step_keeps_only_the_figures_it_has() -> None:
    skipped = {"step": "projection", "skipped": "the basis was fitted on 1 member(s) < 4: wait for the refit"}
    assert StepRecord.from_dict(skipped).to_dict() == skipped
    fitted = StepRecord.from_dict(_NEW["ladder"][1])
    assert fitted.kl == (0.5, 0.1) and fitted.fit_steps == 20 and fitted.skipped is None
    assert fitted.to_dict() == _NEW["ladder"][1]


def test_a_report_round_trips_in_the_stored_shape() -> None:
    report = VersionReport.from_dict(_NEW)
    assert report.served_from is ServedFrom.COMPRESSED and report.served_by == "fitted" and report.refit
    assert report.ladder is not None and [s.step for s in report.ladder] == ["projection", "fitted"]
    assert report.to_dict() == _NEW
    assert VersionReport.from_dict(report.to_dict()) == report


def test_a_report_of_an_older_release_loads_and_is_stored_unchanged() -> None:
    report = VersionReport.from_dict({**_OLD, "a_key_of_a_later_release": 1})
    assert report.ladder is None and report.probes is None and report.served_by is None and report.refit is None
    assert report.ratio == 7.9 and report.gate.passed
    assert report.to_dict() == _OLD  # the optional keys it never had stay absent


def test_a_job_record_stores_the_same_bytes() -> None:
    for report in (_OLD, _NEW):
        raw = {"job_id": "alice~default~v00000001", "user_id": "alice", "adapter": "default", "version": 1,
               "state": "done", "kind": "upload", "body_sha256": None, "created_at": "t0", "updated_at": "t1",
               "attempts": 1, "error": None, "report": report}  # fmt: skip
        stored = json.dumps(raw, sort_keys=True, indent=1).encode()
        job = JobRecord.from_json(stored)
        assert isinstance(job.report, VersionReport)
        assert job.to_json() == stored
    queued = JobRecord(job_id="j", user_id="u", adapter="a", version=1)
    assert JobRecord.from_json(queued.to_json()) == queued and queued.to_dict()["report"] is None


def test_catalog_entries_carry_a_typed_report() -> None:
    report = VersionReport.from_dict(_NEW)
    version = VersionEntry(version=1, job_id="j", state="done", kind="upload", served_from="compressed", report=report)
    entry = AdapterEntry(name="default", current_version=1, versions=(version,))
    assert entry.versions[0].report is not None and entry.versions[0].report.ratio == 7.9
    assert VersionEntry(version=2, job_id="k", state="queued", kind="upload").served_from is None
