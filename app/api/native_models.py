"""The native /v1 API's wire models (what its JSON looks like, in the OpenAPI schema at /docs) and the
encoders from domain rows to them. Secrets never leave: runner secrets read '***' (app.domain.compute),
and a pool template's values under keys naming a token, secret or password are masked."""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from app.domain import compute

if TYPE_CHECKING:  # rows as the domain returns them; the façade reads them, never queries them
    from app.models import Instance, Pool, Runner

SECRET_MARKERS = ("token", "secret", "password")  # pool templates only; runner secrets are masked by model


# ---- wire models -------------------------------------------------------------------------------

class ErrorBody(BaseModel):
    code: str = Field(description="snake_case reason, e.g. not_found, invalid_argument, unauthenticated")
    message: str


class RunnerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    provider: str = Field(min_length=1, max_length=64, description="a provider this deployment offers "
                          "(WARMPOOL_PROVIDERS__ENABLED; local only under dev)")
    settings: dict[str, Any] = Field(default_factory=dict, description="the provider's typed settings: unknown "
                                     "keys, URLs off the operator's allow-list and other secret sources are refused")


class RunnerOut(BaseModel):
    id: str
    name: str
    provider: str
    settings: dict[str, Any] = Field(description="the settings as stored; each secret field of the provider's "
                                     "model (e.g. unikraft `token`) reads '***'")
    created_at: datetime


class RunnerDeleted(RunnerOut):
    environment_classes_deleted: int = Field(description="environment classes deleted with the runner (they "
                                                         "name it; no live pool used them)")


class RunnerList(BaseModel):
    runners: list[RunnerOut]


class PoolSpec(BaseModel):
    desired_phase: str
    min_size: int
    max_size: int
    stopped_size: int
    reuse: bool
    snapshot_id: str | None
    previous_snapshot_id: str | None
    template: dict[str, Any]
    labels: dict[str, Any]
    group: str
    project_id: str | None
    environment_class_id: str | None
    runner_id: str | None
    lease_default_seconds: int
    lease_max_seconds: int
    reservation_ttl_seconds: int
    rotation_max_surge: int
    empty_policy: str
    idle_recycle_reserved: int
    idle_recycle_scaled: int
    autoscale: dict[str, Any]
    spec_version: int


class PoolStatus(BaseModel):
    phase: str
    failure_message: str
    desired_size: int
    ready: int
    running: int
    stopped: int
    leased: int
    consecutive_failures: int
    next_attempt_at: datetime | None
    refill_seconds: float
    reconciled_at: datetime | None
    status_version: int


class PoolOut(BaseModel):
    id: str
    name: str
    kind: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    spec: PoolSpec
    status: PoolStatus


class PoolList(BaseModel):
    pools: list[PoolOut]
    next_page_token: str = Field(description="pass as page_token for the next page; empty on the last")


class InstanceOut(BaseModel):
    id: str
    pool_id: str
    state: str = Field(description="observed by the provider")
    desired_state: str
    lease_id: str | None
    address: str
    boot_ms: int | None
    snapshot_id: str | None
    provider: str
    provider_ref: str | None
    draining: bool
    stale: bool
    failure_count: int
    last_error: str
    requested_at: datetime
    state_changed_at: datetime
    ready_at: datetime | None
    idle_since: datetime | None


class InstanceList(BaseModel):
    instances: list[InstanceOut]
    next_page_token: str


class InstanceLogs(BaseModel):
    instance_id: str
    provider: str
    provider_ref: str
    lines: int
    output: str


class PoolEvent(BaseModel):
    """The `data` of an `event: pool` line on /v1/events."""

    pool_id: str
    phase: str
    ready: int
    stopped: int
    leased: int
    desired_size: int
    status_version: int


class QuotaLimits(BaseModel):
    max_pool_size: int = Field(description="largest min/max/stopped size of one pool")
    max_pools: int = Field(description="live pools the organization may have")
    max_instances: int = Field(description="instances the organization may hold")
    max_pools_per_request: int = Field(description="pod pools one openYuanrong create request may carry")
    max_creating: int = Field(description="instances being created at once")
    lease_rate: int = Field(description="Lease calls per second (0: no limit)")
    lease_burst: int = Field(description="Lease calls at once above the rate (0: one second's worth)")


class QuotaUsage(BaseModel):
    pools: int = Field(description="live pools now")
    admitted_instances: int = Field(description="the live pools' max sizes plus stopped tiers")
    instances: int = Field(description="instances that exist or are being made")


class QuotaOut(BaseModel):
    limits: QuotaLimits
    usage: QuotaUsage


# ---- encoding ----------------------------------------------------------------------------------

def masked(settings: Any) -> Any:
    """Settings with every value under a key naming a token, secret or password replaced by '***'."""
    if isinstance(settings, dict):
        return {k: "***" if any(m in str(k).lower() for m in SECRET_MARKERS) else masked(v) for k, v in settings.items()}
    if isinstance(settings, list):
        return [masked(v) for v in settings]
    return settings


def runner_out(r: Runner) -> RunnerOut:
    return RunnerOut(id=r.id, name=r.name, provider=r.provider, settings=compute.public_settings(r.settings or {}),
                     created_at=r.created_at)


def pool_out(p: Pool) -> PoolOut:
    spec = PoolSpec(
        desired_phase=p.desired_phase, min_size=p.min_size, max_size=p.max_size, stopped_size=p.stopped_size,
        reuse=p.reuse, snapshot_id=p.snapshot_id, previous_snapshot_id=p.previous_snapshot_id,
        template=masked(p.template or {}), labels=p.labels or {}, group=p.group_name, project_id=p.project_id,
        environment_class_id=p.environment_class_id, runner_id=p.runner_id,
        lease_default_seconds=p.lease_default_seconds, lease_max_seconds=p.lease_max_seconds,
        reservation_ttl_seconds=p.reservation_ttl_seconds, rotation_max_surge=p.rotation_max_surge,
        empty_policy=p.empty_policy, idle_recycle_reserved=p.idle_recycle_reserved,
        idle_recycle_scaled=p.idle_recycle_scaled, autoscale=p.autoscale or {}, spec_version=p.spec_version,
    )
    status = PoolStatus(
        phase=p.phase, failure_message=p.failure_message, desired_size=p.desired_size, ready=p.ready_instances,
        running=p.running_instances, stopped=p.stopped_instances, leased=p.leased_instances,
        consecutive_failures=p.consecutive_failures, next_attempt_at=p.next_attempt_at,
        refill_seconds=p.refill_seconds, reconciled_at=p.reconciled_at, status_version=p.status_version,
    )
    return PoolOut(id=p.id, name=p.name, kind=p.kind, created_at=p.created_at, updated_at=p.updated_at,
                   deleted_at=p.deleted_at, spec=spec, status=status)


def instance_out(i: Instance) -> InstanceOut:
    return InstanceOut(
        id=i.id, pool_id=i.pool_id, state=i.state, desired_state=i.desired_state, lease_id=i.lease_id,
        address=i.address, boot_ms=i.boot_ms, snapshot_id=i.snapshot_id, provider=i.provider,
        provider_ref=i.provider_ref, draining=i.draining, stale=i.stale, failure_count=i.failure_count,
        last_error=i.last_error, requested_at=i.requested_at, state_changed_at=i.state_changed_at,
        ready_at=i.ready_at, idle_since=i.idle_since,
    )


def pool_event(p: Pool) -> PoolEvent:
    return PoolEvent(pool_id=p.id, phase=p.phase, ready=p.ready_instances, stopped=p.stopped_instances,
                     leased=p.leased_instances, desired_size=p.desired_size, status_version=p.status_version)


def quota_out(quota: Any, used: dict[str, int]) -> QuotaOut:
    """An organization's quota (app.domain.quotas.Quota) and usage, as /v1/quota answers them."""
    return QuotaOut(limits=QuotaLimits(**asdict(quota)), usage=QuotaUsage(**used))
