"""Instances: the event applier's compare-and-set writes of observed state, and the pool status
derived from them in the same transaction (DESIGN.md flow 4)."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from app.domain import effects, epochs, leases, reservations, transitions
from app.domain.events import pool_channel
from app.domain.pools import bump_status, request_reconcile
from app.domain.states import ALIVE, LOST, DesiredState, InstanceState as S, PoolPhase, progresses, reachable
from app.models import Instance, Pool, utcnow
from config.settings import get_settings

log = logging.getLogger(__name__)


def observe(
    instance_id: str, state: str, *, seq: int, session: Session, now: datetime | None = None,
    ref: str = "", address: str = "", boot_ms: int | None = None, message: str = "", epoch: int | None = None,
) -> Instance | None:
    """Apply one provider observation with a compare-and-set. Returns the instance if its state changed,
    None for a stale, duplicate or impossible observation (which changes nothing but the sequence)."""
    now = now or utcnow()
    inst = session.get(Instance, instance_id)
    if inst is None:
        return None
    previous = inst.state
    stale = seq <= inst.event_seq
    if stale and not progresses(previous, state):
        return None  # older than what was applied, and a turn (or nothing): it would undo a newer observation
    values: dict[str, Any] = {"event_seq": max(seq, inst.event_seq)}
    if ref:
        values["provider_ref"] = ref
    changed = state != previous and reachable(previous, state)
    if changed:
        if state == S.RUNNING:
            values.update(ready_at=now, idle_since=now, address=address or inst.address,
                          seen_epoch=epochs.stamp_value(inst.pool_id, epoch))
            if boot_ms is not None:
                values["boot_ms"] = boot_ms
        elif state == S.STOPPED:
            values.update(address="", draining=False, idle_since=None)
        elif state == S.FAILED:
            values.update(last_error=message[:2000], failure_count=inst.failure_count + 1)
    elif state == previous and address:
        values["address"] = address
    if not changed and state == previous == S.RUNNING and epoch is not None and epoch > inst.seen_epoch:
        values["seen_epoch"] = epoch  # seen running again, in a newer epoch (app.domain.epochs)
    unchanged_since_read = Instance.event_seq == inst.event_seq
    if changed:
        moved = transitions.INSTANCE.move(session, inst, state, where=[unchanged_since_read], now=now, **values)
    else:  # no state change: only the sequence (and the address) move on
        moved = session.execute(
            sa.update(Instance).where(Instance.id == instance_id, Instance.state == previous, unchanged_since_read)
            .values(**values)
        ).rowcount == 1
    if not moved:
        return None  # another applier got there first; its event wins
    session.refresh(inst)
    return inst if changed else None


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
    free = (sa.select(Instance.id).where(Instance.id.in_(ids)).order_by(Instance.id)
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


def recount(pool: Pool, *, session: Session) -> bool:
    """Derive the pool's status counters and phase from its instances; True if the status changed."""
    rows = session.execute(
        sa.select(Instance.state, Instance.lease_id.is_not(None), Instance.draining, Instance.desired_state, sa.func.count())
        .where(Instance.pool_id == pool.id)
        .group_by(Instance.state, Instance.lease_id.is_not(None), Instance.draining, Instance.desired_state)
    ).all()
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
    """Apply a batch of InstanceEvents in one transaction. Idempotent: a duplicate or stale event
    changes nothing. Each pool is locked once (in id order, so concurrent appliers cannot deadlock)
    and its status recounted once, however many of its instances moved. Returns how many events
    changed something."""
    now = now or utcnow()
    pool_ids = sorted({e.pool_id for e in batch})
    locked = {p.id: p for p in session.exec(select(Pool).where(Pool.id.in_(pool_ids)).order_by(Pool.id).with_for_update()).all()}
    changed_pools: set[str] = set()
    applied = 0
    for event in batch:
        pool = locked.get(event.pool_id)
        if pool is not None and _apply_one(event, pool, session=session, now=now):
            applied += 1
            changed_pools.add(pool.id)
    for pool_id, pool in locked.items():
        if recount(pool, session=session) or pool_id in changed_pools:
            effects.defer(session, "notify", channel=pool_channel(pool.organization_id, pool.id), message=pool.phase)
    return applied


# Observed states after which the planner may have something new to do.
_REPLAN = frozenset({S.RUNNING, S.STOPPED, S.FAILED, S.DELETED})


def _apply_one(event: Any, pool: Pool, *, session: Session, now: datetime) -> bool:
    from app.domain import events as ev

    if event.kind == ev.KIND_STATE:
        inst = observe(event.instance_id, event.state, seq=event.seq, session=session, now=now, ref=event.ref,
                       address=event.address, boot_ms=event.boot_ms, message=event.message, epoch=event.epoch)
        if inst is None:
            return False
        if inst.state in (S.RUNNING, S.STOPPED):
            note_success(pool)
        if inst.state == S.RUNNING:
            _learn_refill(pool, inst, now)
            if inst.lease_id is None and not inst.draining and inst.desired_state == DesiredState.RUNNING:
                _serve_reservations(inst.id, session=session)
        if inst.state == S.FAILED and inst.ready_at is None:
            # It never came up (an image that does not boot): a failed creation, backed off like a failed
            # call, or the planner would replace it at once, forever.
            note_failure(pool, event.message or "instance failed before it was ready", now=now)
        elif inst.state == S.FAILED:
            pool.failure_message = (event.message or "instance failed")[:2000]
            bump_status(pool)
        if inst.state in LOST and inst.lease_id is not None:
            leases.end_for_lost_instance(inst.id, session=session, now=now)
        if inst.state in _REPLAN:
            request_reconcile(pool, session=session)
        return True
    if event.kind == ev.KIND_SEEN:
        if event.epoch is None or not epochs.confirm(event.instance_id, event.epoch, session=session):
            return False
        _serve_reservations(event.instance_id, session=session)  # claimable again: a waiter may take it
        return True
    if event.kind == ev.KIND_FAILURE:
        note_failure(pool, event.message or "provider call failed", now=now)
        return True
    if event.kind == ev.KIND_SUCCESS:
        note_success(pool)
        return True
    if event.kind == ev.KIND_RECYCLED:
        return _back_in_service(event.instance_id, pool, session=session, now=now)
    if event.kind in (ev.KIND_LEASED, ev.KIND_RETURNED):
        request_reconcile(pool, session=session)  # backfill what was taken, recycle what came back
        return True
    return event.kind == ev.KIND_POOL


def _back_in_service(instance_id: str, pool: Pool, *, session: Session, now: datetime) -> bool:
    """A returned instance of a `reuse` pool was reset by its provider: only now is it ready again
    (compare-and-set on the recycling marks leases.end left: draining, free, wanted running, running)."""
    back = session.execute(
        sa.update(Instance).where(
            Instance.id == instance_id, Instance.draining == sa.true(), Instance.lease_id.is_(None),
            Instance.desired_state == str(DesiredState.RUNNING), Instance.state == str(S.RUNNING),
        ).values(draining=False, idle_since=now)
    ).rowcount
    if back:
        _serve_reservations(instance_id, session=session)
        request_reconcile(pool, session=session)
    return bool(back)


def _learn_refill(pool: Pool, inst: Instance, now: datetime) -> None:
    """Exponentially weighted refill time (request or start -> running), the autoscaler's input."""
    began = inst.requested_at if inst.boot_ms is None else now - timedelta(milliseconds=inst.boot_ms)
    seconds = max((now - began).total_seconds(), 0.0)
    pool.refill_seconds = seconds if pool.refill_seconds <= 0 else 0.7 * pool.refill_seconds + 0.3 * seconds


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


def _serve_reservations(instance_id: str, *, session: Session) -> None:
    """Hand a newly ready instance to the oldest waiting reservation of its pool, if any."""
    reservations.assign_ready_instance(instance_id, session=session)


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
