"""The native pool API on /v1: create a named pool with every knob, change or drain a pool of any kind,
and its scheduled sizing. Thin: typed bodies in, one domain call (app.domain.pool_admin, schedules) in
one unit of work, the pool as GET /v1/pools/{id} shows it out; errors as /v1's {code, message}."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.native import IdPath
from app.api.native_common import ERRORS, Org, require_id, run
from app.api.native_models import ErrorBody, PoolOut, pool_out
from app.domain import cron, pool_admin, pools, schedules
from app.domain.states import EmptyPoolPolicy
from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["native pools"], responses=ERRORS)
K = pool_admin.KNOBS
MAX_SIZE = K["stopped_size"][1]


def _knob(name: str, description: str, kind: type = int) -> Any:
    low, high = K[name]
    return Field(None, ge=kind(low), le=kind(high), description=description)


class PoolKnobs(BaseModel):
    """Per-pool policy; a field left out (or null) keeps its value (on create: the deployment default)."""

    model_config = ConfigDict(extra="forbid")
    stopped_size: int | None = _knob("stopped_size", "stopped (backfill) instances kept behind the running ones")
    empty_policy: EmptyPoolPolicy | None = Field(None, description="a Lease on a pool with no ready instance: "
                                                 "reserve (FIFO queue), reject (resource_exhausted) or cold (create one)")
    lease_default_seconds: int | None = _knob("lease_default_seconds", "lease duration when the caller asks for none")
    lease_max_seconds: int | None = _knob("lease_max_seconds", "longest lease; longer asks are clamped")
    reservation_ttl_seconds: int | None = _knob("reservation_ttl_seconds", "how long a queued reservation lives "
                                                "after its last Lease call")
    idle_recycle_reserved: int | None = _knob("idle_recycle_reserved", "base instances idle this long are replaced "
                                              "(-1 never)")
    idle_recycle_scaled: int | None = _knob("idle_recycle_scaled", "instances above the running target idle this "
                                            "long are stopped or deleted (-1 never)")
    rotation_max_surge: int | None = _knob("rotation_max_surge", "extra instances above max_size while rotating to "
                                           "a new snapshot")
    autoscale_headroom: float | None = _knob("autoscale_headroom", "the autoscaler's margin over claim rate x "
                                             "refill time (0.5 = 50%)", float)
    autoscale_cooldown_seconds: float | None = _knob("autoscale_cooldown_seconds", "seconds between two down steps "
                                                     "of the running target", float)


class PoolCreate(PoolKnobs):
    name: str = Field(min_length=1, max_length=63, pattern=pool_admin.NAME_RE.pattern,
                      description="what the Intrinsic lease service leases the pool by; unique among live pools")
    runner_id: str = Field(max_length=64, description="one of the organization's runners (GET /v1/runners)")
    min_size: int = Field(0, ge=0, le=MAX_SIZE)
    max_size: int = Field(ge=0, le=MAX_SIZE)
    template: dict[str, Any] = Field(default_factory=dict, description="what each instance is made from, checked "
                                     "by the runner's provider template model (e.g. {\"image\": \"...\"})")


class PoolPatch(PoolKnobs):
    min_size: int | None = Field(None, ge=0, le=MAX_SIZE)
    max_size: int | None = Field(None, ge=0, le=MAX_SIZE)
    template: dict[str, Any] | None = Field(None, description="named pools only; applies to instances created "
                                            "from then on")


class ScheduleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str = Field(min_length=1, max_length=cron.MAX_CRON_LENGTH,
                      description="5 fields: minute hour day-of-month month day-of-week, e.g. '0 8 * * 1-5'")
    timezone: str = Field(min_length=1, max_length=64, description="IANA name the cron is read in, e.g. Europe/Berlin")
    min_size: int | None = Field(None, ge=0, le=MAX_SIZE)
    max_size: int | None = Field(None, ge=0, le=MAX_SIZE)
    desired_size: int | None = Field(None, ge=0, le=MAX_SIZE, description="the running target set at the firing "
                                     "(the autoscaler moves it afterwards)")


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entries: list[ScheduleEntry] = Field(max_length=cron.MAX_ENTRIES, description="an empty list removes the schedule")


class Firing(BaseModel):
    index: int = Field(description="position of the entry in `entries`")
    fired_at: datetime


class ScheduleOut(BaseModel):
    pool_id: str
    entries: list[ScheduleEntry]
    holding: Firing | None = Field(description="the entry that holds now (fired most recently)")
    applied: Firing | None = Field(description="the firing applied last")
    next_fire_at: datetime | None
    last_error: str = Field(description="why the last firing was not applied (sizes refused), else empty")


def _errors(**codes: str) -> dict[int | str, dict[str, Any]]:
    return {int(s): {"model": ErrorBody, "description": d} for s, d in codes.items()}


WRITE_ERRORS = _errors(**{"400": "a value the pool's rules refuse (template, sizes, lease default above maximum)",
                          "409": "a live pool of that name exists, or the pool's kind or state does not allow it",
                          "429": "the organization's quota (pools, sizes, instances)"})


def _given(body: BaseModel) -> dict[str, Any]:
    return {k: v.value if isinstance(v, EmptyPoolPolicy) else v
            for k, v in body.model_dump(exclude_unset=True).items() if v is not None}


@router.post("/pools", status_code=201, responses=WRITE_ERRORS,
             summary="Create a named pool on a runner, with its template and every policy knob")
async def create_pool(body: PoolCreate, org_id: Org) -> PoolOut:
    given = _given(body)
    fields = {k: given.pop(k) for k in ("name", "runner_id", "min_size", "max_size", "template") if k in given}
    fields["runner_id"] = require_id(fields["runner_id"], "runner_id")
    fields.setdefault("min_size", 0)
    return pool_out(await run(pool_admin.create_named_pool, org_id, **fields, **given))


@router.patch("/pools/{pool_id}", responses=WRITE_ERRORS,
              summary="Change any knob of a pool of any kind (bumps spec_version; Gitpod and pod pools keep "
                      "their upstream rules)")
async def update_pool(pool_id: IdPath, body: PoolPatch, org_id: Org) -> PoolOut:
    return pool_out(await run(pool_admin.update_pool, org_id, require_id(pool_id, "pool id"), _given(body)))


@router.delete("/pools/{pool_id}", summary="Drain and delete a pool of any kind (phase deleting, then deleted)")
async def delete_pool(pool_id: IdPath, org_id: Org) -> PoolOut:
    return pool_out(await run(pools.delete_pool, org_id, require_id(pool_id, "pool id")))


def _schedule_out(pool_id: str, row: Any) -> ScheduleOut:
    return ScheduleOut(pool_id=pool_id, **schedules.schedule_view(row))


def _read_schedule(org_id: str, pool_id: str, *, session: Any) -> ScheduleOut:
    pool, row = schedules.get_schedule(org_id, pool_id, session=session)
    return _schedule_out(pool.id, row)


def _write_schedule(org_id: str, pool_id: str, entries: list[cron.Entry], *, session: Any) -> ScheduleOut:
    pool, row = schedules.put_schedule(org_id, pool_id, entries, session=session)
    return _schedule_out(pool.id, row)


@router.get("/pools/{pool_id}/schedule", summary="A pool's scheduled sizing: entries, the one holding, the next firing")
async def get_schedule(pool_id: IdPath, org_id: Org) -> ScheduleOut:
    return await run(_read_schedule, org_id, require_id(pool_id, "pool id"))


@router.put("/pools/{pool_id}/schedule", responses=WRITE_ERRORS,
            summary="Replace a pool's scheduled sizing (an empty list removes it); the entry holding now applies at once")
async def put_schedule(pool_id: IdPath, body: ScheduleIn, org_id: Org) -> ScheduleOut:
    entries = [cron.Entry(**e.model_dump()) for e in body.entries]
    return await run(_write_schedule, org_id, require_id(pool_id, "pool id"), entries)
