"""Request and response shapes of every route (shapes only; the bucket's own records are
:mod:`soppu.registry.records`, and :mod:`compressor_service.views` maps those onto these).

A version's report, the gate's verdict and the catalog's entries are defined once, in the core
(:mod:`soppu.registry.results`): the models that show them (``JobReport``, ``GateVerdict``, ``StepRecord``,
``VersionInfo``, ``AdapterInfo``) are derived from those dataclasses' fields (types, defaults, descriptions), with
only what the API adds (``plot_url``, ``status_url``) or shows in its own shape (a job's error) declared here.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, create_model, model_serializer

from soppu.registry import results

__all__ = [
    "AdapterDeleted",
    "AdapterInfo",
    "ErrorBody",
    "ErrorDetail",
    "GateVerdict",
    "Health",
    "IssuedKey",
    "JobError",
    "JobReport",
    "JobStatus",
    "KeyRequest",
    "KeyRevoked",
    "Readiness",
    "RefitResult",
    "StepRecord",
    "UploadAccepted",
    "UserAdapters",
    "UserDeleted",
    "VersionInfo",
]

_JOB_ID = "alice~default~v00000001"
_ERRORS = {"model.layers.0.self_attn.q_proj": 0.021, "model.layers.0.self_attn.v_proj": 0.034}
_REPORT: dict[str, Any] = {
    "cohort": "c-3ad889c0a4f6",
    "basis_version": 1,
    "mode": "full",
    "rank": 16,
    "original_parameters": 16384,
    "ratio": 7.9,
    "errors": _ERRORS,
    "gate": {"passed": True, "reasons": [], "max_error": 0.034, "behaviour": None},
    "served_from": "compressed",
    "plot_url": "/v1/users/alice/adapters/default/versions/1/report.png",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable; see compressor_service.errors for the table")
    message: str


class ErrorBody(BaseModel):
    """Every failure's body."""

    error: ErrorDetail

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": {"code": "pickle_rejected", "message": "weights are a pickle"}}]}
    )


class UploadAccepted(BaseModel):
    """The upload is stored durably and its job is queued."""

    job_id: str
    version: int = Field(description="the adapter version this upload became")
    status_url: str = Field(description="GET it for the job's state and report")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"job_id": _JOB_ID, "version": 1, "status_url": f"/v1/jobs/{_JOB_ID}"}]}
    )


class JobError(BaseModel):
    code: str
    message: str


def _fields(cls: type[Any], **changed: Any) -> dict[str, Any]:
    """The fields of the core's dataclass ``cls`` as pydantic field definitions, in their order, with their
    defaults and descriptions; ``changed``: field name -> the type it has in the API's shape."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        described = {"description": f.metadata["description"]} if "description" in f.metadata else {}
        if f.default is not dataclasses.MISSING:
            info = Field(f.default, **described)
        elif f.default_factory is not dataclasses.MISSING:
            info = Field(default_factory=f.default_factory, **described)
        else:
            info = Field(**described)
        fields[f.name] = (changed.get(f.name, hints[f.name]), info)
    return fields


def _derived(cls: type[Any], base: type[BaseModel] = BaseModel, **fields: Any) -> type[BaseModel]:
    """A model with the fields of ``cls`` (see :func:`_fields`), to subclass."""
    return create_model(f"_{cls.__name__}", __base__=base, **fields)


class _Sparse(BaseModel):
    """Leaves its unset (None) fields out of the JSON, as the stored record does."""

    @model_serializer(mode="wrap")
    # No return annotation: with one, the JSON schema would be that type's instead of the model's.
    def _without_unset(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        return {k: v for k, v in handler(self).items() if v is not None}


class GateVerdict(_derived(results.GateVerdict, **_fields(results.GateVerdict))):  # type: ignore[misc]
    """The quality gate's verdict on the form the last ladder step tried."""


class StepRecord(_derived(results.StepRecord, _Sparse, **_fields(results.StepRecord))):  # type: ignore[misc]
    """One step of the fallback ladder: its name and own figures (only those it has), or why it was skipped."""


_LISTED_WHEN_SET = frozenset({"ladder", "probes", "served_by"})


def _report_fields() -> dict[str, Any]:
    fields = _fields(results.VersionReport, gate=GateVerdict, ladder=list[StepRecord] | None)
    plot_url = (str | None, Field(None, description="the per-module error plot (PNG)"))
    names = list(fields)
    at = names.index("refit") + 1  # where the API always listed it
    return {name: fields[name] for name in names[:at]} | {"plot_url": plot_url} | {n: fields[n] for n in names[at:]}


class JobReport(_derived(results.VersionReport, **_report_fields())):  # type: ignore[misc]
    """What the compression of one version gave: its ratio, per-module errors and the quality gate's verdict."""

    model_config = ConfigDict(json_schema_extra={"examples": [_REPORT]})

    # No return annotation, as in _Sparse. A record older than the fallback ladder has no ladder, probes or
    # served_by: its body leaves them out, as it always did (refit and plot_url are always listed).
    @model_serializer(mode="wrap")
    def _as_listed(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        return {k: v for k, v in handler(self).items() if v is not None or k not in _LISTED_WHEN_SET}

    @classmethod
    def of(cls, report: results.VersionReport, plot_url: str | None) -> JobReport:
        validated: JobReport = cls.model_validate({**report.to_dict(), "plot_url": plot_url})
        return validated


class JobStatus(BaseModel):
    job_id: str
    user_id: str
    adapter: str
    version: int
    kind: Literal["upload", "refit"] = "upload"
    state: Literal["queued", "running", "done", "failed"]
    attempts: int
    created_at: str
    updated_at: str
    error: JobError | None = None
    report: JobReport | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": _JOB_ID,
                    "user_id": "alice",
                    "adapter": "default",
                    "version": 1,
                    "kind": "upload",
                    "state": "done",
                    "attempts": 1,
                    "created_at": "2025-01-01T12:00:00.000+00:00",
                    "updated_at": "2025-01-01T12:00:01.200+00:00",
                    "error": None,
                    "report": _REPORT,
                }
            ]
        }
    )


class VersionInfo(
    _derived(  # type: ignore[misc]
        results.VersionEntry,
        **_fields(results.VersionEntry, error=JobError | None, report=JobReport | None),
        status_url=(str, Field()),
    )
):
    pass


class AdapterInfo(_derived(results.AdapterEntry, **_fields(results.AdapterEntry, versions=list[VersionInfo]))):  # type: ignore[misc]
    pass


class UserAdapters(BaseModel):
    user_id: str
    adapters: list[AdapterInfo]


class AdapterDeleted(BaseModel):
    user_id: str
    adapter: str
    removed: list[str] = Field(description="every object key deleted")
    refits: list[dict[str, Any]] = Field(description="cohorts refitted (or retired) so no basis keeps its data")


class UserDeleted(BaseModel):
    user_id: str
    removed: list[str]
    revoked_keys: list[str] = Field(description="key ids of the user's keys, all revoked")
    refits: list[dict[str, Any]]


class RefitResult(BaseModel):
    cohort: str
    basis_version: int
    members: dict[str, dict[str, Any]] = Field(
        description='"user/adapter" -> the version published and its form ({"version", "served_from"}), or '
        '{"superseded_by": n} when an upload accepted during the refit is what that member is served'
    )


class KeyRequest(BaseModel):
    role: Literal["service"] = Field(description="user keys are issued under /v1/users/{user_id}/keys")

    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "service"}]})


class IssuedKey(BaseModel):
    """A new key. ``key`` is shown here once and stored only as a hash: keep it."""

    key: str
    key_id: str
    role: Literal["admin", "service", "user"]
    user_id: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key": "sk-soppu-0123456789abcdef.sssssssssssssssssssssssssssssssssssssssssssedc51869",
                    "key_id": "0123456789abcdef",
                    "role": "user",
                    "user_id": "alice",
                }
            ]
        }
    )


class KeyRevoked(BaseModel):
    key_id: str
    revoked: bool = True


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    store: str = Field(description="ok, or why the store cannot be used")
    device: str
    workers: int
    queue_depth: int
    jobs_running: int
