"""The native API's rollout control for a pool's snapshot rotation (member scope): read its status, set
its policy, pause, resume (the operator's go for a canary), and roll back to the previous snapshot in one
call. The Gitpod façade's pools rotate as upstream documents, with the default policy (no canary)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from app.api.native_common import ERRORS, PREFIX, Org, require_id, run
from app.api.native_models import ErrorBody
from app.domain import rollouts
from app.domain.rollout import Policy

router = APIRouter(prefix=PREFIX, tags=["native rollout"], responses=ERRORS)
PoolId = Annotated[str, Path(max_length=64)]


class RolloutOut(BaseModel):
    pool_id: str
    policy: Policy
    snapshot_id: str | None = Field(description="the snapshot the pool rotates to")
    previous_snapshot_id: str | None = Field(description="what rollout:rollback returns to")
    stage: Literal["canary", "baking", "rolling", "complete"]
    paused: bool
    stalled: str = Field(description="why the rotation is past its progress deadline (the pool is DEGRADED); "
                                     "empty while it progresses")
    started_at: datetime | None
    progress_at: datetime | None = Field(description="when the rotation last made progress")
    stale_instances: int = Field(description="free instances still on another snapshot")
    fresh_ready_instances: int


@router.get("/pools/{pool_id}/rollout", summary="The pool's rollout policy and where its rotation stands")
async def get_rollout(pool_id: PoolId, org_id: Org) -> RolloutOut:
    return RolloutOut(**await run(rollouts.get_status, require_id(pool_id, "pool id"), org_id))


@router.put("/pools/{pool_id}/rollout", summary="Set the pool's rollout policy: surge, unavailable, canary, "
            "bake time, progress deadline")
async def put_rollout(pool_id: PoolId, body: Policy, org_id: Org) -> RolloutOut:
    return RolloutOut(**await run(rollouts.set_policy, require_id(pool_id, "pool id"), org_id, body))


@router.post("/pools/{pool_id}/rollout:pause", summary="Freeze the rotation where it stands (and any next one)")
async def pause_rollout(pool_id: PoolId, org_id: Org) -> RolloutOut:
    return RolloutOut(**await run(rollouts.pause, require_id(pool_id, "pool id"), org_id))


@router.post("/pools/{pool_id}/rollout:resume", summary="Unpause; a canary waiting for the operator's go goes on")
async def resume_rollout(pool_id: PoolId, org_id: Org) -> RolloutOut:
    return RolloutOut(**await run(rollouts.resume, require_id(pool_id, "pool id"), org_id))


@router.post("/pools/{pool_id}/rollout:rollback", summary="Roll back to the previous snapshot in one call",
             responses={409: {"model": ErrorBody, "description": "the pool has no previous snapshot"}})
async def rollback_rollout(pool_id: PoolId, org_id: Org) -> RolloutOut:
    return RolloutOut(**await run(rollouts.rollback, require_id(pool_id, "pool id"), org_id))
