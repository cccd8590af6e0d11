"""A user's adapters: upload (``POST``), list with versions and reports, a version's error plot, delete one.

The upload answers 202 only once the original is stored durably and its job is queued; see
:mod:`compressor_service.uploads` for how the body travels and :mod:`compressor_service.errors` for the codes.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, Request, Response

from soppu.errors import SoppuError
from soppu.registry import JobState
from soppu.store.layout import NAME_PATTERN, AdapterVersion, check_name

from ..access import Action, authorize
from ..deps import (
    KeysDep,
    MetricsDep,
    NotifierDep,
    PipelineDep,
    PrincipalDep,
    RunnerDep,
    SettingsDep,
    StoreDep,
    UploadsDep,
)
from ..errors import ApiError
from ..schemas import AdapterDeleted, UploadAccepted, UserAdapters
from ..uploads import check_content_type, receive_form
from ..views import (
    accept,
    check_idempotency_key,
    parse_version_text,
    remove_adapter,
    report_png,
    status_url,
    user_adapters,
)
from ._common import errors

__all__ = ["router"]

router = APIRouter(tags=["Adapters"])

_BINARY = {"type": "string", "format": "binary"}
_NAME = {"type": "string", "default": "default", "pattern": f"^{NAME_PATTERN}$"}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Either the two PEFT files as parts (named by their file names), or one archive "
        "(.zip, .tar, .tar.gz) in the part `archive`. Optional field `name`: the adapter's name (default `default`). "
        "Optional probes (the field `probes`, or a `probes.json` part or archive member): a JSON list of up to 32 "
        "prompts whose answers a compressed form must keep.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "adapter_config.json": _BINARY,
                        "adapter_model.safetensors": _BINARY,
                        "archive": _BINARY,
                        "probes.json": _BINARY,
                        "probes": {"type": "string", "description": 'a JSON list of strings: ["Where do I live?"]'},
                        "name": _NAME,
                    },
                },
                "encoding": {"name": {"contentType": "text/plain"}, "probes": {"contentType": "text/plain"}},
            }
        },
    }
}


@router.post(
    "/v1/users/{user_id}/adapters",
    status_code=202,
    summary="Upload an adapter: validated, stored as a new version, compressed by a background job",
    responses=errors(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra=_UPLOAD_BODY,
)
async def upload_adapter(
    user_id: str,
    request: Request,
    principal: PrincipalDep,
    pipeline: PipelineDep,
    keys: KeysDep,
    runner: RunnerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    uploads: UploadsDep,
    idempotency_key: Annotated[
        str | None, Header(description="the same key and body answer the first upload's job again")
    ] = None,
) -> UploadAccepted:
    authorize(principal, Action.UPLOAD, user_id)
    check_name(user_id, "user_id")
    content_type = request.headers.get("content-type", "")
    try:
        check_content_type(content_type)
        check_idempotency_key(idempotency_key)
        if not runner.has_room():
            raise ApiError("busy", "the job queue is full; retry later")
        with uploads.take(), tempfile.TemporaryDirectory(prefix="soppu-upload-") as workdir:
            limits = settings.limits()
            form, size = await receive_form(
                request, content_type, Path(workdir), limits.max_archive_members, settings.max_upload_bytes
            )
            job, is_new = await asyncio.to_thread(
                accept, pipeline, keys, principal, limits, user_id, form, idempotency_key
            )
    except (SoppuError, ApiError) as e:
        metrics.rejections.labels(code=e.code).inc()
        raise
    if job.state == JobState.QUEUED:  # a repeat of a queued upload is queued again only if this process lost it
        await runner.enqueue(AdapterVersion.from_job_id(job.job_id))
    metrics.uploads.labels(outcome="accepted" if is_new else "duplicate").inc()
    metrics.upload_bytes.inc(size)
    return UploadAccepted(job_id=job.job_id, version=job.version, status_url=status_url(job.job_id))


@router.get(
    "/v1/users/{user_id}/adapters",
    summary="The user's adapters: names, current versions, every version with its job state and report",
    responses=errors(401, 403, 422),
)
async def list_user_adapters(user_id: str, principal: PrincipalDep, store: StoreDep) -> UserAdapters:
    authorize(principal, Action.READ, user_id)
    check_name(user_id, "user_id")
    return await asyncio.to_thread(user_adapters, store, user_id)


@router.get(
    "/v1/users/{user_id}/adapters/{name}/versions/{version}/report.png",
    summary="The version's per-module relative error, as a PNG (version as 3 or v00000003)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the plot"}, **errors(401, 403, 404, 422)},
)
async def version_report_png(
    user_id: str, name: str, version: str, principal: PrincipalDep, store: StoreDep
) -> Response:
    authorize(principal, Action.READ, user_id)
    ref = AdapterVersion(user_id, name, parse_version_text(version))
    # Rendering is CPU work (matplotlib, Agg): in a thread, like the store reads.
    return Response(await asyncio.to_thread(report_png, store, ref), media_type="image/png")


@router.delete(
    "/v1/users/{user_id}/adapters/{name}",
    summary="Delete one adapter with every version; refit the cohorts its data helped fit",
    responses=errors(401, 403, 404, 422),
)
async def delete_user_adapter(
    user_id: str,
    name: str,
    principal: PrincipalDep,
    pipeline: PipelineDep,
    notifier: NotifierDep,
    background: BackgroundTasks,
) -> AdapterDeleted:
    authorize(principal, Action.DELETE_ADAPTER, user_id)
    check_name(user_id, "user_id")
    check_name(name, "adapter")
    result = await asyncio.to_thread(remove_adapter, pipeline, user_id, name)
    background.add_task(notifier.invalidate, user_id=user_id)
    return AdapterDeleted(user_id=user_id, adapter=name, **result)
