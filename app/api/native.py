"""The native admin REST API on /v1: runners, pools, instances (with provider logs), the quota, and pool
status as SSE (app.api.native_sse).

Thin: authenticate (Bearer token -> organization), call one domain function in one unit of work
(app.api.native_common, over the edge core), answer typed JSON (app.api.native_models). Every error is
`{"code": "<snake_case>", "message": "..."}`. Another organization's objects are `not_found`.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from app.api import native_sse
from app.api.native_common import (  # noqa: F401 - re-exported for the other /v1 modules
    ERRORS, PREFIX, AdminOrg, ApiError, Org, install_error_handlers, page_of, refused, require_id, run,
)
from app.api.native_models import (
    ErrorBody, InstanceList, InstanceLogs, InstanceOut, PoolList, PoolOut, QuotaOut, RunnerDeleted, RunnerIn, RunnerList,
    RunnerOut, instance_out, pool_out, quota_out, runner_out,
)
from app.domain import compute, instances, pools, quotas, tenancy
from app.domain.states import InstanceState, PoolKind, PoolPhase

router = APIRouter(prefix=PREFIX, tags=["native admin"], responses=ERRORS)

IdPath = Annotated[str, Path(max_length=64)]
PageSize = Annotated[int, Query(ge=1, le=100, description="rows per page")]
PageToken = Annotated[str, Query(max_length=512, description="next_page_token of the previous page")]


@router.get("/runners", summary="List the organization's runners")
async def get_runners(org_id: AdminOrg) -> RunnerList:
    return RunnerList(runners=[runner_out(r) for r in await run(tenancy.list_runners, org_id)])


@router.post("/runners", status_code=201, summary="Create a runner: a provider plus its settings",
             responses={400: {"model": ErrorBody, "description": "a provider not offered here, or settings its "
                                                                 "typed model refuses"},
                        409: {"model": ErrorBody, "description": "a runner of that name exists"}})
async def create_runner(body: RunnerIn, org_id: AdminOrg) -> RunnerOut:
    return runner_out(await run(tenancy.create_runner, org_id, body.name, body.provider, body.settings))


@router.get("/runners/{runner_id}", summary="One runner")
async def get_runner(runner_id: IdPath, org_id: AdminOrg) -> RunnerOut:
    return runner_out(await run(tenancy.get_runner, org_id, require_id(runner_id, "runner id")))


@router.delete("/runners/{runner_id}", summary="Delete a runner no live pool uses, with its environment classes",
               responses={409: {"model": ErrorBody, "description": "live pools still use the runner (the message "
                                "names them): delete those first; a deleting pool needs it until drained"}})
async def delete_runner(runner_id: IdPath, org_id: AdminOrg) -> RunnerDeleted:
    runner, classes = await run(tenancy.delete_runner, org_id, require_id(runner_id, "runner id"))
    return RunnerDeleted(**runner_out(runner).model_dump(), environment_classes_deleted=classes)


@router.get("/pools", summary="List pools of every kind (Gitpod, named, pod pools), a page at a time")
async def get_pools(org_id: Org, kind: PoolKind | None = None, phase: PoolPhase | None = None,
                    page_size: PageSize = 50, page_token: PageToken = "") -> PoolList:
    rows, token = await run(pools.list_pools, org_id, page_of(page_size, page_token), kind=kind, phase=phase)
    return PoolList(pools=[pool_out(p) for p in rows], next_page_token=token)


@router.get("/pools/{pool_id}", summary="One pool: its spec and status (sizes, snapshots, phase, counters)")
async def get_pool(pool_id: IdPath, org_id: Org) -> PoolOut:
    return pool_out(await run(pools.get_pool, org_id, require_id(pool_id, "pool id")))


@router.get("/pools/{pool_id}/instances", summary="A pool's instances (deleted ones only when asked by state)")
async def get_pool_instances(pool_id: IdPath, org_id: Org, state: InstanceState | None = None,
                             page_size: PageSize = 50, page_token: PageToken = "") -> InstanceList:
    rows, token = await run(instances.list_instances, org_id, require_id(pool_id, "pool id"),
                            page_of(page_size, page_token), state=state)
    return InstanceList(instances=[instance_out(i) for i in rows], next_page_token=token)


@router.get("/instances/{instance_id}", summary="One instance: observed and desired state, lease, address")
async def get_one_instance(instance_id: IdPath, org_id: Org) -> InstanceOut:
    return instance_out(await run(instances.get_instance, org_id, require_id(instance_id, "instance id")))


@router.get("/instances/{instance_id}/logs", summary="The instance's console output, from its provider",
            responses={409: {"model": ErrorBody, "description": "no provider resource yet"},
                       502: {"model": ErrorBody, "description": "the provider failed"}})
async def get_instance_logs(instance_id: IdPath, org_id: Org,
                            lines: Annotated[int, Query(ge=1, le=10000, description="the last N lines")] = 100,
                            ) -> InstanceLogs:
    source = await run(compute.log_source, org_id, require_id(instance_id, "instance id"))
    try:  # the provider call holds no transaction open
        output = await run_in_threadpool(compute.read_logs, source, lines)
    except Exception as exc:  # noqa: BLE001 - ProviderFailed is 502 provider_error; every outcome is an answer
        raise refused(exc, "logs") from None
    return InstanceLogs(instance_id=instance_id, provider=source.provider, provider_ref=source.ref, lines=lines,
                        output=output)


@router.get("/quota", summary="The organization's quota and its usage (set by the operator, never by a tenant)")
async def get_quota(org_id: Org) -> QuotaOut:
    return quota_out(*await run(quotas.report, org_id))


router.include_router(native_sse.router)  # /v1/events, after the routes above as before the split
