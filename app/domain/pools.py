"""Pools: create, read, resize, delete. One pool model behind every façade.

Every write bumps `spec_version`, sets `needs_reconcile` and defers `reconcile_pool(pool_id)` until
after commit. Deletion is asynchronous: the pool goes to DELETING at once and the engine drains it.
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from app.domain import effects, pagination, quotas, transitions
from app.domain.catalog import get_environment_class, get_project, template_of
from app.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from app.domain.pagination import Page
from app.domain.states import PoolKind, PoolPhase, PrebuildPhase
from app.models import Instance, Pool, Prebuild, new_id, utcnow
from config.settings import get_settings


def request_reconcile(pool: Pool, *, session: Session) -> None:
    """Flag the pool for the reconciler and enqueue reconcile_pool after commit."""
    pool.needs_reconcile = True
    session.add(pool)
    effects.defer(session, "reconcile_pool", pool_id=pool.id)


def bump_spec(pool: Pool) -> None:
    pool.spec_version += 1
    pool.updated_at = utcnow()


def bump_status(pool: Pool) -> None:
    pool.status_version += 1
    pool.updated_at = utcnow()


def validate_sizes(min_size: int, max_size: int) -> None:
    if min_size < 0:
        raise InvalidArgument(f"min_size must be >= 0, got {min_size}")
    if max_size < 0:
        raise InvalidArgument(f"max_size must be >= 0, got {max_size}")
    if min_size > max_size:
        raise InvalidArgument(f"min_size must be <= max_size (got min_size={min_size}, max_size={max_size})")


def new_pool(org_id: str, *, kind: PoolKind, name: str, min_size: int, max_size: int, **fields: Any) -> Pool:
    """A Pool row with the deployment's defaults; the caller adds it with `insert_pool`."""
    validate_sizes(min_size, max_size)
    d = get_settings().pools
    values: dict[str, Any] = dict(
        lease_default_seconds=d.lease_default_seconds, lease_max_seconds=d.lease_max_seconds,
        reservation_ttl_seconds=d.reservation_ttl_seconds, rotation_max_surge=d.rotation_max_surge,
        stopped_size=d.stopped_tier_size, idle_recycle_scaled=d.idle_recycle_scaled_seconds,
    )
    values.update(fields)
    pool = Pool(
        organization_id=org_id, kind=str(kind), name=name, min_size=min_size, max_size=max_size,
        desired_size=min_size, phase=str(PoolPhase.PENDING), desired_phase=str(PoolPhase.READY), **values,
    )
    return pool


def insert_pool(pool: Pool, *, session: Session, conflict: str) -> Pool:
    """Insert a new pool; a concurrent or existing twin (same pair or name) is AlreadyExists(conflict).
    Every façade's pool comes through here, so the organization's quota is checked here once."""
    quotas.admit_pool(pool, session=session)
    try:
        with session.begin_nested():
            session.add(pool)
            session.flush()
    except IntegrityError as exc:
        raise AlreadyExists(conflict) from exc
    request_reconcile(pool, session=session)
    return pool


def latest_snapshot(project_id: str, environment_class_id: str, *, session: Session) -> str | None:
    """The snapshot of the newest completed prebuild of the pair, or None."""
    return session.exec(
        select(Prebuild.snapshot_id)
        .where(
            Prebuild.project_id == project_id,
            Prebuild.environment_class_id == environment_class_id,
            Prebuild.phase == str(PrebuildPhase.COMPLETED),
            Prebuild.snapshot_id.is_not(None),
        )
        .order_by(Prebuild.completion_time.desc(), Prebuild.created_at.desc())
        .limit(1)
    ).first()


def create_warm_pool(
    org_id: str, project_id: str, environment_class_id: str, *, min_size: int, max_size: int, session: Session,
) -> Pool:
    """A Gitpod warm pool for (project, environment class): one per pair, class must have prebuilds enabled."""
    project = get_project(org_id, project_id, session=session)
    ec = get_environment_class(org_id, environment_class_id, session=session)
    if not project.prebuild_enabled:
        raise FailedPrecondition(f"project {project_id} does not have prebuilds enabled")
    if ec.id not in project.prebuild_environment_class_ids:
        raise FailedPrecondition(
            f"environment class {ec.id} is not in the prebuild configuration of project {project_id}"
        )
    existing = session.exec(
        select(Pool.id).where(
            Pool.organization_id == org_id, Pool.project_id == project_id,
            Pool.environment_class_id == ec.id, Pool.deleted_at.is_(None),
        )
    ).first()
    conflict = f"a warm pool for project {project_id} and environment class {ec.id} already exists"
    if existing:
        raise AlreadyExists(f"{conflict} (id {existing})")
    pool_id = new_id()
    pool = new_pool(
        org_id, kind=PoolKind.GITPOD, name=pool_id, id=pool_id, min_size=min_size, max_size=max_size,
        project_id=project.id, environment_class_id=ec.id, runner_id=ec.runner_id, template=template_of(ec),
        snapshot_id=latest_snapshot(project.id, ec.id, session=session),
    )
    return insert_pool(pool, session=session, conflict=conflict)


def get_pool(org_id: str, pool_id: str, *, session: Session, for_update: bool = False) -> Pool:
    stmt = select(Pool).where(Pool.id == pool_id, Pool.organization_id == org_id)
    if for_update:
        stmt = stmt.with_for_update()
    pool = session.exec(stmt).first()
    if pool is None:
        raise NotFound(f"pool {pool_id} not found")
    return pool


def find_pool(org_id: str, name: str, *, session: Session) -> Pool:
    """A live pool by its name (Intrinsic pool name, pod pool id, or a Gitpod pool's id)."""
    pool = session.exec(
        select(Pool).where(Pool.organization_id == org_id, Pool.name == name, Pool.deleted_at.is_(None))
    ).first()
    if pool is None:
        raise NotFound(f"pool {name!r} not found")
    return pool


def resize_pool(
    org_id: str, pool_id: str, *, session: Session, min_size: int | None = None, max_size: int | None = None,
    **spec: Any,
) -> Pool:
    """Change a pool's sizes (and other spec fields); bumps spec_version only if something changed."""
    pool = get_pool(org_id, pool_id, session=session, for_update=True)
    if pool.deleted_at is not None:
        raise FailedPrecondition(f"pool {pool_id} is being deleted (phase {pool.phase}) and cannot be changed")
    new_min = pool.min_size if min_size is None else min_size
    new_max = pool.max_size if max_size is None else max_size
    validate_sizes(new_min, new_max)
    quotas.admit_resize(pool, min_size=new_min, max_size=new_max,
                        stopped_size=spec.get("stopped_size", pool.stopped_size), session=session)
    changed = (new_min, new_max) != (pool.min_size, pool.max_size)
    pool.min_size, pool.max_size = new_min, new_max
    for key, value in spec.items():
        if getattr(pool, key) != value:
            setattr(pool, key, value)
            changed = True
    if changed:
        bump_spec(pool)
        # Keep the autoscaler's decision inside the new bounds at once; the engine refines it.
        clamped = min(max(pool.desired_size, new_min), new_max)
        if clamped != pool.desired_size:
            pool.desired_size = clamped
            bump_status(pool)
        request_reconcile(pool, session=session)
    return pool


def delete_pool(org_id: str, pool_id: str, *, session: Session) -> Pool:
    """Mark the pool DELETING (idempotent); the reconciler drains its instances, then DELETED."""
    pool = get_pool(org_id, pool_id, session=session, for_update=True)
    if pool.deleted_at is not None:
        return pool
    pool.deleted_at = utcnow()
    pool.desired_phase = str(PoolPhase.DELETED)
    transitions.POOL.move(session, pool, PoolPhase.DELETING, strict=True)
    bump_spec(pool)
    bump_status(pool)
    request_reconcile(pool, session=session)
    return pool


def list_pools(
    org_id: str, page: Page, *, session: Session, kind: PoolKind | None = None,
    project_ids: list[str] | None = None, environment_class_ids: list[str] | None = None,
    include_deleted: bool = False, phase: PoolPhase | None = None,
) -> tuple[list[Pool], str]:
    """A page of the organization's pools; deleted ones are history, listed only when asked for
    (`include_deleted`, or `phase=deleted`)."""
    stmt = select(Pool).where(Pool.organization_id == org_id)
    if phase is not None:
        stmt = stmt.where(Pool.phase == str(phase))
        include_deleted = True
    if kind is not None:
        stmt = stmt.where(Pool.kind == str(kind))
    if project_ids:
        stmt = stmt.where(Pool.project_id.in_(project_ids))
    if environment_class_ids:
        stmt = stmt.where(Pool.environment_class_id.in_(environment_class_ids))
    if not include_deleted:
        stmt = stmt.where(Pool.phase != str(PoolPhase.DELETED))
    rows = list(session.exec(pagination.apply(stmt, Pool, page)).all())
    return pagination.split(rows, page)


def set_snapshot(pool: Pool, snapshot_id: str, *, session: Session) -> bool:
    """Point the pool at a new snapshot (keeping the previous one for rollback); True if it changed."""
    if pool.snapshot_id == snapshot_id or pool.deleted_at is not None:
        return False
    retired = pool.previous_snapshot_id
    pool.previous_snapshot_id = pool.snapshot_id
    pool.snapshot_id = snapshot_id
    bump_spec(pool)
    request_reconcile(pool, session=session)
    session.flush()  # the pool row's write lock first: a reconcile creating instances finishes before the marking
    _mark_stale(pool.id, snapshot_id, session=session)
    if retired and retired not in (snapshot_id, pool.previous_snapshot_id) and pool.runner_id and not snapshot_in_use(retired, session=session):
        effects.defer(session, "delete_snapshot", runner_id=pool.runner_id, snapshot_id=retired)
    return True


def _mark_stale(pool_id: str, snapshot_id: str, *, session: Session) -> None:
    """Instances not on the pool's snapshot are stale (and those on it fresh again, after a rollback), in
    the rotation's transaction: the claim's index (ix_instances_ready: pool, stale, ready_at) then hands
    out fresh instances first without comparing snapshot ids."""
    from app.models import Instance

    session.execute(
        sa.update(Instance)
        .where(Instance.pool_id == pool_id, Instance.state != "deleted")
        .values(stale=sa.case((Instance.snapshot_id == snapshot_id, sa.false()), else_=sa.true()))
    )


def snapshot_in_use(snapshot_id: str, *, session: Session) -> bool:
    """Whether any live pool (current or rollback snapshot) or live instance still needs the snapshot."""
    by_pool = session.exec(select(Pool.id).where(
        Pool.deleted_at.is_(None),
        (Pool.snapshot_id == snapshot_id) | (Pool.previous_snapshot_id == snapshot_id)).limit(1)).first()
    by_instance = session.exec(select(Instance.id).where(
        Instance.snapshot_id == snapshot_id, Instance.state != "deleted").limit(1)).first()
    return bool(by_pool or by_instance)


def pools_of_pair(project_id: str, environment_class_id: str, *, session: Session) -> list[Pool]:
    return list(session.exec(
        select(Pool).where(
            Pool.project_id == project_id, Pool.environment_class_id == environment_class_id,
            Pool.deleted_at.is_(None),
        )
    ).all())
