"""SQLModel tables: the single source of truth for pools, instances, leases and what sits around them.

Portable between PostgreSQL (production) and SQLite (the embedded default of `warmpool dev`):
ids are UUID strings, times are stored in UTC and always come back timezone-aware, JSON is sa.JSON.
"""
from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite drops tzinfo on its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True)
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def _json(default_factory: Any = dict) -> Any:
    return Field(default_factory=default_factory, sa_type=sa.JSON, nullable=False)


def _id() -> Any:
    return Field(default_factory=new_id, primary_key=True, max_length=36)


def _fk(target: str, nullable: bool = False, index: bool = True, ondelete: str | None = "CASCADE") -> Any:
    return Field(
        default=None,
        sa_column_args=[sa.ForeignKey(target, ondelete=ondelete)],
        sa_type=sa.String(36),
        nullable=nullable,
        index=index,
    )


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"
    id: str = _id()
    name: str = Field(max_length=200, unique=True)
    created_at: datetime = _ts()


class OrganizationQuota(SQLModel, table=True):
    """The operator's per-organization overrides of the quota defaults (config QuotaSettings); NULL = default."""

    __tablename__ = "organization_quotas"
    organization_id: str = Field(sa_column_args=[sa.ForeignKey("organizations.id", ondelete="CASCADE")],
                                 primary_key=True, max_length=36)
    max_pool_size: int | None = None
    max_pools: int | None = None
    max_instances: int | None = None
    max_pools_per_request: int | None = None
    max_creating: int | None = None
    lease_rate: int | None = None
    lease_burst: int | None = None
    updated_at: datetime = _ts()


class ApiToken(SQLModel, table=True):
    """A bearer token; only its SHA-256 is stored. `prefix` lets an operator tell tokens apart.
    `scope` is one of app.domain.tokens.Scope; `last_used_at` is written at most once per
    `token_touch_seconds`, never on every request."""

    __tablename__ = "api_tokens"
    id: str = _id()
    organization_id: str = _fk("organizations.id")
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    name: str = Field(default="", max_length=200)
    scope: str = Field(max_length=16)
    created_at: datetime = _ts()
    expires_at: datetime | None = _ts(nullable=True)
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


class Runner(SQLModel, table=True):
    """A provider plus its settings; environment classes and pools run on one."""

    __tablename__ = "runners"
    __table_args__ = (sa.UniqueConstraint("organization_id", "name", name="uq_runners_org_name"),)
    id: str = _id()
    organization_id: str = _fk("organizations.id")
    name: str = Field(max_length=200)
    provider: str = Field(max_length=64)
    settings: dict = _json()
    created_at: datetime = _ts()
    epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Bumped when what the engine saw of this runner may be incomplete (Redis lost events, the observer
    re-listed): only instances seen running at the current epoch are handed out (app.domain.epochs)."""


class EnvironmentClass(SQLModel, table=True):
    """Gitpod's environment class: a runner plus the instance template (configuration key/values)."""

    __tablename__ = "environment_classes"
    id: str = _id()
    organization_id: str = _fk("organizations.id")
    runner_id: str = _fk("runners.id")
    display_name: str = Field(default="", max_length=127)
    description: str = Field(default="", max_length=200)
    configuration: list = _json(list)
    enabled: bool = True
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Project(SQLModel, table=True):
    """Gitpod's project. The prebuild configuration decides which classes may have warm pools;
    `document` keeps every other field a client sent so it is echoed back unchanged."""

    __tablename__ = "projects"
    id: str = _id()
    organization_id: str = _fk("organizations.id")
    name: str = Field(default="", max_length=200)
    prebuild_enabled: bool = False
    prebuild_environment_class_ids: list = _json(list)
    document: dict = _json()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Prebuild(SQLModel, table=True):
    """A prebuild of (project, environment class); a completed one yields the snapshot pools warm from."""

    __tablename__ = "prebuilds"
    __table_args__ = (sa.Index("ix_prebuilds_pair_phase", "project_id", "environment_class_id", "phase"),)
    id: str = _id()
    organization_id: str = _fk("organizations.id")
    project_id: str = _fk("projects.id", index=False)
    environment_class_id: str = _fk("environment_classes.id", index=False)
    phase: str = Field(default="pending", max_length=32)
    desired_phase: str = Field(default="completed", max_length=32)
    spec_version: int = 1
    status_version: int = 1
    timeout_seconds: int = 3600
    triggered_by: str = Field(default="manual", max_length=32)
    creator_id: str = Field(default="", max_length=36)
    snapshot_id: str | None = Field(default=None, max_length=200)
    provider_ref: str | None = Field(default=None, max_length=200)
    failure_message: str = ""
    warning_message: str = ""
    log_url: str = ""
    environment_id: str = Field(default="", max_length=36)
    snapshot_completion_percentage: int = 0
    snapshot_size_bytes: int = Field(default=0, sa_type=sa.BigInteger)
    completion_time: datetime | None = _ts(nullable=True)
    phase_changed_at: datetime = _ts()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Pool(SQLModel, table=True):
    """The one pool concept behind a Gitpod warm pool, an Intrinsic pool and an openYuanrong pod pool.

    Spec (desired, written by the API and the reconciler) and status (derived from observed instance
    state by the event applier) each carry a version bumped on every change.
    """

    __tablename__ = "pools"
    __table_args__ = (
        # One live pool per (project, environment class) and per name; a deleted pool frees both.
        sa.Index("uq_pools_pair", "organization_id", "project_id", "environment_class_id", unique=True,
                 postgresql_where=sa.text("deleted_at IS NULL"), sqlite_where=sa.text("deleted_at IS NULL")),
        sa.Index("uq_pools_org_name", "organization_id", "name", unique=True,
                 postgresql_where=sa.text("deleted_at IS NULL"), sqlite_where=sa.text("deleted_at IS NULL")),
    )
    id: str = _id()
    organization_id: str = _fk("organizations.id")
    kind: str = Field(default="gitpod", max_length=16)
    name: str = Field(max_length=200)
    group_name: str = Field(default="default", max_length=64)
    labels: dict = _json()
    tenant_id: str = Field(default="", max_length=64)
    project_id: str | None = _fk("projects.id", nullable=True, index=False, ondelete="SET NULL")
    environment_class_id: str | None = _fk("environment_classes.id", nullable=True, index=False, ondelete="SET NULL")
    runner_id: str | None = _fk("runners.id", nullable=True, ondelete="SET NULL")

    # --- spec -------------------------------------------------------------------------------
    spec_version: int = 1
    desired_phase: str = Field(default="ready", max_length=16)
    template: dict = _json()
    snapshot_id: str | None = Field(default=None, max_length=200)
    previous_snapshot_id: str | None = Field(default=None, max_length=200)
    min_size: int = 0
    max_size: int = 1
    stopped_size: int = 0
    reuse: bool = False
    idle_recycle_reserved: int = -1
    idle_recycle_scaled: int = -1
    lease_default_seconds: int = 1800
    lease_max_seconds: int = 86400
    reservation_ttl_seconds: int = 300
    rotation_max_surge: int = 2
    rollout_policy: dict = _json()  # app.domain.rollout.Policy, less max_surge (the column above)
    rollout_state: dict = _json()  # written by the reconciler (stage, progress) and the operator (paused)
    empty_policy: str = Field(default="reserve", max_length=16)
    autoscale: dict = _json()
    extra: dict = _json()

    # --- status -----------------------------------------------------------------------------
    phase: str = Field(default="pending", max_length=16, index=True)
    failure_message: str = ""
    status_version: int = 1
    desired_size: int = 0
    running_instances: int = 0
    stopped_instances: int = 0
    ready_instances: int = 0
    leased_instances: int = 0
    consecutive_failures: int = 0
    next_attempt_at: datetime | None = _ts(nullable=True)
    refill_seconds: float = 0.0
    needs_reconcile: bool = True
    reconciled_at: datetime | None = _ts(nullable=True)
    phase_changed_at: datetime = _ts()

    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    deleted_at: datetime | None = _ts(nullable=True)


class Instance(SQLModel, table=True):
    """One compute instance of a pool.

    `desired_state` is the reconciler's; `state`, `address`, `boot_ms` are observed and written only
    by the event applier (compare-and-set on `state` and `event_seq`). `lease_id` is the assignment.
    """

    __tablename__ = "instances"
    __table_args__ = (
        # The claim: one probe of this partial index per lease.
        sa.Index(
            "ix_instances_ready",
            "pool_id",
            "stale",
            "ready_at",
            postgresql_where=sa.text("state = 'running' AND lease_id IS NULL AND draining = false"),
            sqlite_where=sa.text("state = 'running' AND lease_id IS NULL AND draining = 0"),
        ),
        sa.Index("ix_instances_pool_state", "pool_id", "state"),
    )
    id: str = _id()
    pool_id: str = _fk("pools.id", index=False)
    organization_id: str = Field(max_length=36, index=True)
    provider: str = Field(default="", max_length=64)
    provider_ref: str | None = Field(default=None, max_length=200)
    snapshot_id: str | None = Field(default=None, max_length=200)
    state: str = Field(default="requested", max_length=16)
    desired_state: str = Field(default="running", max_length=16)
    event_seq: int = Field(default=0, sa_type=sa.BigInteger)
    """The sequence number of the last event applied to the instance (see `op_seq`)."""
    op_seq: int = Field(default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"})
    """The last sequence number the database issued to a publisher of this instance's events
    (app.domain.instances.issue_seq): events are ordered by it, never by a publisher's clock."""
    state_changed_at: datetime = _ts()
    stale: bool = False
    """On a snapshot the pool no longer warms from: set by rotation (pools.set_snapshot) in the same
    transaction as the pool's new snapshot, so a claim takes fresh instances first."""
    draining: bool = False
    lease_id: str | None = Field(default=None, max_length=36)
    address: str = ""
    zone: str = ""
    boot_ms: int | None = None
    failure_count: int = 0
    last_error: str = ""
    requested_at: datetime = _ts()
    ready_at: datetime | None = _ts(nullable=True)
    idle_since: datetime | None = _ts(nullable=True)
    missing_seen: int = 0
    seen_epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """The runner epoch at which the instance was last seen running (app.domain.epochs): claimable only
    while it equals the runner's current epoch."""


class Lease(SQLModel, table=True):
    """A claim on one instance by one service, until `expires_at`."""

    __tablename__ = "leases"
    __table_args__ = (
        sa.Index("ix_leases_active_expiry", "expires_at", postgresql_where=sa.text("state = 'active'"),
                 sqlite_where=sa.text("state = 'active'")),
        sa.Index("ix_leases_instance", "instance_id"),
        # The lease invariant, kept by the database on every backend: at most one active lease per instance.
        sa.Index("uq_leases_active_instance", "instance_id", unique=True,
                 postgresql_where=sa.text("state = 'active'"), sqlite_where=sa.text("state = 'active'")),
    )
    id: str = _id()
    organization_id: str = Field(max_length=36, index=True)
    pool_id: str = _fk("pools.id")
    instance_id: str = Field(max_length=36)
    service_tag: str = Field(default="", max_length=200)
    state: str = Field(default="active", max_length=16)
    reservation_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    ended_at: datetime | None = _ts(nullable=True)
    end_reason: str = ""


class Reservation(SQLModel, table=True):
    """A queued claim on an empty pool, served FIFO (oldest `created_at` first) when an instance is ready."""

    __tablename__ = "reservations"
    __table_args__ = (
        sa.UniqueConstraint("organization_id", "client_id", name="uq_reservations_client"),
        sa.Index("ix_reservations_waiting", "pool_id", "created_at", postgresql_where=sa.text("state = 'waiting'"),
                 sqlite_where=sa.text("state = 'waiting'")),
    )
    id: str = _id()
    organization_id: str = Field(max_length=36)
    client_id: str = Field(max_length=64)
    pool_id: str = _fk("pools.id", index=False)
    service_tag: str = Field(default="", max_length=200)
    state: str = Field(default="waiting", max_length=16)
    requested_expires_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    lease_id: str | None = Field(default=None, max_length=36)
    instance_id: str | None = Field(default=None, max_length=36)
    state_changed_at: datetime = _ts()


class PoolSchedule(SQLModel, table=True):
    """A pool's scheduled sizing (app.domain.schedules): cron entries, which one was applied last, and when
    beat must look again (`next_fire_at`, indexed: the sweep reads only the schedules that are due)."""

    __tablename__ = "pool_schedules"
    __table_args__ = (sa.Index("ix_pool_schedules_due", "next_fire_at"),)
    pool_id: str = Field(sa_column_args=[sa.ForeignKey("pools.id", ondelete="CASCADE")], primary_key=True,
                         max_length=36)
    organization_id: str = Field(max_length=36)
    entries: list = _json(list)
    applied_index: int | None = None
    applied_fired_at: datetime | None = _ts(nullable=True)
    next_fire_at: datetime | None = _ts(nullable=True)
    last_error: str = ""
    updated_at: datetime = _ts()
