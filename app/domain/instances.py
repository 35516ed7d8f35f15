"""Instances: observed state and the pool status derived from it in the event applier's transaction
(DESIGN.md flow 4; the batched compare-and-set writes themselves are app.domain.observations), event
sequence numbers, desired-state changes, and reads."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, select

from app.domain import transitions
from app.domain.pools import bump_status
from app.domain.states import ALIVE, DesiredState, InstanceState as S, PoolPhase
from app.models import Instance, Pool, utcnow
from config.settings import get_settings

log = logging.getLogger(__name__)


def issue_seq(instance_id: str, *, session: Session) -> int | None:
    """The instance's next event sequence number, issued by the database (an atomic increment of `op_seq`).
    A publisher takes one after it observed and before it publishes, so the applier orders observations
    by when the database numbered them, never by a publisher's clock. None if the instance is gone.
    One instance per call, and the caller commits at once: the row lock is held for one statement, so it
    never waits in a cycle with the applier's locks."""
    return session.execute(
        sa.update(Instance).where(Instance.id == instance_id).values(op_seq=Instance.op_seq + 1)
        .returning(Instance.op_seq).execution_options(synchronize_session=False)
    ).scalar_one_or_none()


def issue_seqs(instance_ids: list[str], *, session: Session) -> dict[str, int]:
    """`issue_seq` for many instances in one statement (a batch of observations published together): each
    id's next number, by id. Rows another transaction holds (the applier's batch) are skipped, not waited
    for: a statement that held some rows while waiting for others could close a cycle with the applier,
    which holds rows while it updates more. So ids missing from the answer are gone or were busy; the
    caller numbers those one at a time (`issue_seq`, which holds nothing while it waits), and commits at once."""
    ids = sorted(set(instance_ids))
    if not ids:
        return {}
    named: Any = Instance.id.in_(ids)
    if session.get_bind().dialect.name == "postgresql":  # the ids as one JSON parameter: one prepared statement
        named = Instance.id.in_(sa.select(sa.func.jsonb_array_elements_text(
            sa.cast(sa.bindparam("ids", json.dumps(ids), type_=sa.String), JSONB))).scalar_subquery())
    free = (sa.select(Instance.id).where(named).order_by(Instance.id)
            .with_for_update(skip_locked=True).scalar_subquery())
    rows = session.execute(
        sa.update(Instance).where(Instance.id.in_(free)).values(op_seq=Instance.op_seq + 1)
        .returning(Instance.id, Instance.op_seq).execution_options(synchronize_session=False)
    ).all()
    return {instance_id: seq for instance_id, seq in rows}


def note_failure(pool: Pool, message: str, *, now: datetime | None = None) -> None:
    """A transient provider failure: count it, back creation off exponentially, DEGRADED after N."""
    e = get_settings().engine
    now = now or utcnow()
    pool.consecutive_failures += 1
    pool.failure_message = message[:2000]
    delay = min(e.backoff_base_seconds * (2 ** (pool.consecutive_failures - 1)), e.backoff_max_seconds)
    pool.next_attempt_at = now + timedelta(seconds=delay)
    bump_status(pool)


def note_success(pool: Pool) -> None:
    if pool.consecutive_failures or pool.next_attempt_at or pool.failure_message:
        pool.consecutive_failures = 0
        pool.next_attempt_at = None
        pool.failure_message = ""
        bump_status(pool)


def state_counts(pool_ids: list[str], *, session: Session) -> dict[str, list[Any]]:
    """What `recount` derives a pool's status from, for many pools in one query: per pool, rows of
    (state, leased, draining, desired state, count)."""
    if not pool_ids:
        return {}
    leased = Instance.lease_id.is_not(None)
    out: dict[str, list[Any]] = {}
    for pool_id, *row in session.execute(
        sa.select(Instance.pool_id, Instance.state, leased, Instance.draining, Instance.desired_state, sa.func.count())
        .where(Instance.pool_id.in_(pool_ids))
        .group_by(Instance.pool_id, Instance.state, leased, Instance.draining, Instance.desired_state)
    ).all():
        out.setdefault(pool_id, []).append(row)
    return out


def recount(pool: Pool, *, session: Session, rows: list[Any] | None = None) -> bool:
    """Derive the pool's status counters and phase from its instances (`rows` as `state_counts` gives
    them, read here if not given); True if the status changed."""
    if rows is None:
        rows = state_counts([pool.id], session=session).get(pool.id, [])
    ready = running = stopped = leased = alive = 0
    for state, is_leased, draining, desired, count in rows:
        if state in ALIVE:
            alive += count
        if is_leased and state not in (S.DELETED,):
            leased += count
        if state == S.RUNNING:
            running += count
            if not is_leased and not draining:
                ready += count
        if state == S.STOPPED and not is_leased and desired == DesiredState.STOPPED:
            stopped += count
    phase = _phase(pool, ready=ready, alive=alive)
    new = dict(ready_instances=ready, running_instances=running, stopped_instances=stopped,
               leased_instances=leased)
    if all(getattr(pool, k) == v for k, v in new.items()) and phase == pool.phase:
        return False
    for k, v in new.items():
        setattr(pool, k, v)
    if phase != pool.phase and not transitions.POOL.move(session, pool, phase):
        # The row is locked, so only the table refuses: a deleted pool that sees a late instance stays deleted.
        log.warning("pool %s: phase %s -> %s refused by its lifecycle", pool.id, pool.phase, phase)
    if phase == PoolPhase.DELETED:
        pool.needs_reconcile = False
    bump_status(pool)
    session.add(pool)
    return True


def _phase(pool: Pool, *, ready: int, alive: int) -> PoolPhase:
    current = PoolPhase(pool.phase)
    if pool.deleted_at is not None:
        return PoolPhase.DELETED if alive == 0 else PoolPhase.DELETING
    if pool.consecutive_failures >= get_settings().engine.failure_threshold:
        return PoolPhase.DEGRADED
    if (pool.rollout_state or {}).get("stalled"):
        return PoolPhase.DEGRADED  # a rotation past its progress deadline (app.domain.rollout)
    if ready >= pool.desired_size:
        return PoolPhase.READY
    # Once READY, a pool stays READY while it backfills claimed instances: the phase is not a counter.
    return PoolPhase.READY if current == PoolPhase.READY else PoolPhase.PENDING


def apply_event(event: Any, *, session: Session, now: datetime | None = None) -> bool:
    """The event applier's unit of work for one InstanceEvent (app.events)."""
    return apply_events([event], session=session, now=now) > 0


def apply_events(batch: list[Any], *, session: Session, now: datetime | None = None) -> int:
    """Apply a batch of InstanceEvents in one transaction, in a few statements (app.domain.observations);
    returns how many changed something."""
    from app.domain import observations  # it builds on this module

    return observations.apply(batch, session=session, now=now)


def apply_events_free(batch: list[Any], *, session: Session, now: datetime | None = None) -> set[str]:
    """apply_events for the pools no other transaction holds; returns the pools left out (observations.apply_free)."""
    from app.domain import observations

    return observations.apply_free(batch, session=session, now=now)


def set_desired(instance_id: str, desired: DesiredState, *, session: Session, expect: str | None = None,
                free_only: bool = True, drain: bool = False) -> bool:
    """Compare-and-set an instance's desired state (free instances only, unless told otherwise)."""
    stmt = sa.update(Instance).where(Instance.id == instance_id)
    if free_only:
        stmt = stmt.where(Instance.lease_id.is_(None))
    if expect is not None:
        stmt = stmt.where(Instance.desired_state == expect)
    values: dict[str, Any] = {"desired_state": str(desired), "state_changed_at": utcnow()}
    if drain:
        values["draining"] = True
    return session.execute(stmt.values(**values)).rowcount == 1


def note_missing(pool_ids: list[str], present_refs: set[str], *, session: Session) -> list[Instance]:
    """Orphan collection's other half: instances of these pools that should exist at the provider but
    were not listed. Each pass without the resource bumps `missing_seen`; returned are those seen
    missing twice (the caller publishes them as failed so they are replaced). Seen again: reset."""
    rows = session.exec(
        select(Instance).where(
            Instance.pool_id.in_(pool_ids), Instance.provider_ref.is_not(None),
            Instance.state.in_([str(S.RUNNING), str(S.STOPPED)]),
        )
    ).all()
    gone = []
    for inst in rows:
        if inst.provider_ref in present_refs:
            if inst.missing_seen:
                inst.missing_seen = 0
                session.add(inst)
            continue
        inst.missing_seen += 1
        session.add(inst)
        if inst.missing_seen >= 2:
            gone.append(inst)
    return gone


def is_wanted(instance_id: str | None, *, session: Session) -> bool:
    """Whether a provider resource tagged with this instance id still belongs to a live instance
    (or to a prebuild that is still running)."""
    from app.domain.states import PREBUILD_FINISHED
    from app.models import Prebuild

    if not instance_id:
        return False
    if instance_id.startswith("prebuild-"):
        p = session.get(Prebuild, instance_id.removeprefix("prebuild-"))
        return p is not None and p.phase not in PREBUILD_FINISHED
    inst = session.get(Instance, instance_id)
    return inst is not None and inst.state != S.DELETED


def get_instance(org_id: str, instance_id: str, *, session: Session) -> Instance:
    from app.domain.errors import NotFound

    inst = session.exec(select(Instance).where(Instance.id == instance_id, Instance.organization_id == org_id)).first()
    if inst is None:
        raise NotFound(f"instance {instance_id} not found")
    return inst


def list_instances(org_id: str, pool_id: str, page: Any, *, session: Session,
                   state: S | None = None) -> tuple[list[Instance], str]:
    """A page of a pool's instances (keyset over requested_at, id); deleted ones only when asked for."""
    from app.domain import pagination
    from app.domain.pools import get_pool

    get_pool(org_id, pool_id, session=session)
    stmt = select(Instance).where(Instance.pool_id == pool_id)
    stmt = stmt.where(Instance.state == str(state)) if state is not None else stmt.where(Instance.state != str(S.DELETED))
    if page.after is not None:
        at, after_id = page.after
        stmt = stmt.where(sa.or_(Instance.requested_at > at, sa.and_(Instance.requested_at == at, Instance.id > after_id)))
    rows = list(session.exec(stmt.order_by(Instance.requested_at, Instance.id).limit(page.size + 1)).all())
    if len(rows) <= page.size:
        return rows, ""
    rows = rows[: page.size]
    return rows, pagination.encode_token(rows[-1].requested_at, rows[-1].id)
