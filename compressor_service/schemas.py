"""Request and response shapes of every route (shapes only; the bucket's own records are
:mod:`soppu.registry.records`, and :mod:`compressor_service.views` maps those onto these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AdapterDeleted",
    "AdapterInfo",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "IssuedKey",
    "JobError",
    "JobReport",
    "JobStatus",
    "KeyRequest",
    "KeyRevoked",
    "Readiness",
    "RefitResult",
    "UploadAccepted",
    "UserAdapters",
    "UserDeleted",
    "VersionInfo",
]

_JOB_ID = "alice~default~v00000001"
_ERRORS = {"model.layers.0.self_attn.q_proj": 0.021, "model.layers.0.self_attn.v_proj": 0.034}
_REPORT = {
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


class JobReport(BaseModel):
    """What the compression of one version gave: its ratio, per-module errors and the quality gate's verdict."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [_REPORT]})

    cohort: str | None = None
    basis_version: int | None = None
    mode: str | None = None
    rank: int | None = None
    original_parameters: int | None = None
    ratio: float | None = Field(None, description="original parameters / stored parameters (1.0: served original)")
    errors: dict[str, float] = Field({}, description="module -> relative Frobenius error of the compressed form")
    gate: dict[str, Any] | None = Field(None, description="passed, reasons, max_error, behaviour (KL, agreement)")
    served_from: Literal["compressed", "original"] | None = None
    refit: bool | None = Field(None, description="this job's cohort was refitted after it")
    plot_url: str | None = Field(None, description="the per-module error plot (PNG)")


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


class VersionInfo(BaseModel):
    version: int
    job_id: str
    state: str
    kind: str
    served_from: str | None = Field(None, description="null until the version is published")
    error: JobError | None = None
    report: JobReport | None = None
    status_url: str


class AdapterInfo(BaseModel):
    name: str
    current_version: int | None = Field(description="the version served now; null before the first is published")
    versions: list[VersionInfo]


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
