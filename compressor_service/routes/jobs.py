"""``GET /v1/jobs/{job_id}``: a compression job's state and report, read from its record in the bucket."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ..access import Action, authorize
from ..deps import PrincipalDep, StoreDep
from ..schemas import JobStatus
from ..views import job_status, parse_job_id
from ._common import errors

__all__ = ["router"]

router = APIRouter(tags=["Jobs"])


@router.get(
    "/v1/jobs/{job_id}",
    summary="A job's state (queued, running, done, failed with an error code) and its report",
    responses=errors(401, 403, 404),
)
async def get_job(job_id: str, principal: PrincipalDep, store: StoreDep) -> JobStatus:
    version = parse_job_id(job_id)
    authorize(principal, Action.READ, version.user_id)
    return await asyncio.to_thread(job_status, store, version)
