"""``POST /v1/cohorts/{cohort}/refit`` (admin): refit a cohort's basis to every member and republish them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from soppu.store.layout import check_name

from ..access import Action, authorize
from ..deps import PipelineDep, PrincipalDep
from ..schemas import RefitResult
from ._common import errors

__all__ = ["router"]

router = APIRouter(tags=["Cohorts"])


@router.post(
    "/v1/cohorts/{cohort}/refit",
    summary="Refit the cohort's shared basis to all its members and publish a new version of each (admin)",
    responses=errors(401, 403, 404, 422),
)
async def refit(cohort: str, principal: PrincipalDep, pipeline: PipelineDep) -> RefitResult:
    authorize(principal, Action.ADMIN)
    check_name(cohort, "cohort")
    # Blocking and CPU-heavy: a worker thread, beside the job workers (the cohort's lock orders them).
    return RefitResult.model_validate(await asyncio.to_thread(pipeline.refit, cohort))
