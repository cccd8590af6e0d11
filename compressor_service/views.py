"""The service functions behind the routes: blocking store work (routes run them in a thread) that turns the
registry's records into response shapes. Nothing here knows about HTTP beyond the URLs it writes."""

from __future__ import annotations

import re
from typing import Any

from soppu.adapter import Limits
from soppu.adapter.fits import check_fits
from soppu.adapter.served_form import check_servable
from soppu.auth import KeyRing, Principal, Role
from soppu.errors import InvalidName, ObjectNotFound
from soppu.registry import JobRecord, JobState
from soppu.registry.catalog import delete_adapter, delete_user, list_adapters, user_is_deleting
from soppu.registry.pipeline import Pipeline
from soppu.registry.results import VersionReport
from soppu.registry.versions import accept_upload, withdraw_upload
from soppu.store import ObjectStore
from soppu.store.layout import AdapterVersion, check_name, parse_version
from soppu.verify.plot import plot_module_errors

from .errors import ApiError
from .jobs import user_lock
from .schemas import AdapterInfo, JobError, JobReport, JobStatus, UserAdapters, VersionInfo
from .uploads import NAME_FIELD, Form, collect

__all__ = [
    "accept",
    "check_idempotency_key",
    "job_status",
    "parse_job_id",
    "parse_version_text",
    "remove_adapter",
    "remove_user",
    "report_png",
    "status_url",
    "user_adapters",
]

DEFAULT_ADAPTER = "default"
_MAX_IDEMPOTENCY_KEY = 255
_PATH_JOBS = "/v1/jobs"
_VERSION_NUMBER = re.compile(r"[0-9]{1,8}")


def status_url(job_id: str) -> str:
    return f"{_PATH_JOBS}/{job_id}"


def plot_url(version: AdapterVersion) -> str:
    return f"/v1/users/{version.user_id}/adapters/{version.adapter}/versions/{version.version}/report.png"


def _report(version: AdapterVersion, report: VersionReport | None) -> JobReport | None:
    if report is None:
        return None
    return JobReport.of(report, plot_url(version) if report.errors else None)


def accept(
    pipeline: Pipeline,
    keys: KeyRing,
    principal: Principal,
    limits: Limits,
    user_id: str,
    form: Form,
    idempotency: str | None,
) -> tuple[JobRecord, bool]:
    """Validate the received form (the adapter must fit the served base model, when the compressor has it),
    then store the original and its queued job (nothing is stored unless every check passed). (the job, whether
    it is new): not new for a repeated Idempotency-Key. An upload that a deletion of its user (or the revocation
    of its key) overtook while its body streamed is withdrawn."""
    store = pipeline.store
    name = check_name(form.fields.get(NAME_FIELD, DEFAULT_ADAPTER), "adapter")
    files, adapter = collect(form, limits)
    if pipeline.base_shapes is not None:
        check_fits(adapter, pipeline.base_shapes, pipeline.gate.base_model or "the compressor's base model")
    check_servable(adapter, pipeline.base_shapes)  # published in a form LoRAX serves exactly, or refused now
    del adapter  # its tensors: not held while the files are stored
    job, is_new = accept_upload(store, user_id, name, files, idempotency)
    refusal = _deleted_meanwhile(store, keys, principal, user_id)
    if refusal is not None:
        if is_new:
            withdraw_upload(store, AdapterVersion.from_job_id(job.job_id), idempotency)
        raise refusal
    return job, is_new


def check_idempotency_key(idempotency: str | None) -> None:
    if idempotency is not None and not 0 < len(idempotency) <= _MAX_IDEMPOTENCY_KEY:
        raise ApiError("bad_request", f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} characters")


def _deleted_meanwhile(store: ObjectStore, keys: KeyRing, principal: Principal, user_id: str) -> ApiError | None:
    """Checked after the upload is stored, never before: a deletion that begins later than this check finds the
    stored objects and erases them, and one that began earlier is seen here, so an upload is either erased with
    its user or refused, never left behind (the bucket's reads are strongly consistent)."""
    if user_is_deleting(store, user_id):
        return ApiError("user_deleted", f"user {user_id!r} is being deleted; nothing was stored")
    if principal.role is Role.USER and keys.get(principal.key_id) is None:
        return ApiError("unauthorized", "the API key was revoked while the upload was in flight; nothing was stored")
    return None


def _job_status(job: JobRecord) -> JobStatus:
    version = AdapterVersion(job.user_id, job.adapter, job.version)
    return JobStatus(
        job_id=job.job_id,
        user_id=job.user_id,
        adapter=job.adapter,
        version=job.version,
        kind=job.kind,
        state=job.state,
        attempts=job.attempts,
        created_at=job.created_at,
        updated_at=job.updated_at,
        error=JobError(**job.error) if job.error else None,
        report=_report(version, job.report),
    )


def parse_job_id(job_id: str) -> AdapterVersion:
    try:
        return AdapterVersion.from_job_id(job_id)
    except InvalidName as e:  # a malformed id names no job
        raise ObjectNotFound(f"no job {job_id!r}") from e


def job_status(store: ObjectStore, version: AdapterVersion) -> JobStatus:
    try:
        return _job_status(JobRecord.from_json(store.get(version.job_key).data))
    except ObjectNotFound as e:
        raise ObjectNotFound(f"no job {version.job_id!r}") from e


def user_adapters(store: ObjectStore, user_id: str) -> UserAdapters:
    adapters = []
    for entry in list_adapters(store, user_id):
        versions = []
        for v in entry.versions:
            version = AdapterVersion(user_id, entry.name, v.version)
            versions.append(
                VersionInfo(
                    version=v.version,
                    job_id=v.job_id,
                    state=v.state,
                    kind=v.kind,
                    served_from=v.served_from,
                    error=JobError(**v.error) if v.error else None,
                    report=_report(version, v.report),
                    status_url=status_url(v.job_id),
                )
            )
        adapters.append(AdapterInfo(name=entry.name, current_version=entry.current_version, versions=versions))
    return UserAdapters(user_id=user_id, adapters=adapters)


def parse_version_text(text: str) -> int:
    """``3`` or ``v00000003``."""
    if _VERSION_NUMBER.fullmatch(text):  # ASCII digits only: "²".isdigit() is true, and int() refuses it
        number = int(text)
        if number < 1:
            raise InvalidName(f"invalid version {text!r}", field="version")
        return number
    return parse_version(text)


def report_png(store: ObjectStore, version: AdapterVersion) -> bytes:
    try:
        job = JobRecord.from_json(store.get(version.job_key).data)
    except ObjectNotFound as e:
        raise ObjectNotFound(f"{version.user_id}/{version.adapter} has no version {version.version}") from e
    report = job.report
    if job.state != JobState.DONE or report is None or not report.errors:
        raise ObjectNotFound(f"version {version.version} has no report yet (its job is {job.state})")
    title = (
        f"{version.user_id}/{version.adapter} v{version.version}: relative error per module "
        f"(JD-{report.mode}, R={report.rank}, served from {report.served_from})"
    )
    return plot_module_errors(report.errors, title)


def remove_adapter(pipeline: Pipeline, user_id: str, adapter: str) -> dict[str, Any]:
    # Under the user's lock: a job of this user never publishes into an adapter being deleted (see jobs.py).
    with pipeline.lock(user_lock(user_id)):
        return delete_adapter(pipeline, user_id, adapter)


def remove_user(pipeline: Pipeline, keys: KeyRing, user_id: str) -> dict[str, Any]:
    with pipeline.lock(user_lock(user_id)):
        return delete_user(pipeline, keys, user_id)
