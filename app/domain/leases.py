"""Leases: claim a ready instance in one short transaction, extend, return and expire (DESIGN.md flows 5, 6).

The rules every façade gets (the Intrinsic VMPoolLeaseService speaks them; the README repeats them):

- **Pool choice.** A named pool is looked up among the caller's live pools by its stable name
  (`pool.name`; a Gitpod pool's name is its id); unknown or being deleted: NotFound. An empty name
  picks the caller's live pool with the most ready instances (ties: the oldest pool, then the name);
  no live pool at all: NotFound.
- **Duration.** A wished expiry that is unset, zero or not in the future gets the pool's default
  duration (`lease_default_seconds`); one beyond `lease_max_seconds` is clamped to it. What the
  response says is what was granted. A lease never lives past `created_at + lease_max_seconds`.
- **Identity.** The Intrinsic API names a lease by its instance: GetLease, ExtendTo and Return act on
  the instance's latest lease. Unknown instance (or another organization's): NotFound. Another
  service tag than the lease's (Return, ExtendTo): PermissionDenied. A lease that already ended,
  returned or expired, also by the clock before the expiry sweep ran: FailedPrecondition. (On a
  `reuse` pool an instance's latest lease may already be another caller's: its tag protects it.)
- **ExtendTo.** `to` is clamped to `created_at + lease_max_seconds`. With `extend_only` a `to` at or
  before the current expiry changes nothing (and the lease is never shortened, even by the clamp
  after a lowered maximum); without it a `to` that is not in the future is InvalidArgument (Return
  ends a lease).
- **Return / expiry.** The instance is destroyed (desired state `deleted`) and the pool backfills; on
  a `reuse` pool it is freed instead, but kept out of the ready set (`draining`) until its provider has
  reset it (`recycle_instance`, Provider.reset); the applier then puts it back and hands it to the oldest
  waiting reservation, if any. A lease that never reached its caller is given back (give_back).
- **Empty pool.** With a reservation id the reservation is queued FIFO (app.domain.reservations).
  Without one, the pool's `empty_policy`: `reserve` queues a server-side reservation that lives only
  as long as the call waits for it; `reject` answers ResourceExhausted; `cold` creates a new instance
  and leases it at once while it boots (at most `max_size` such cold instances in flight per pool).
- **Claim** (app.domain.claims). One transaction: one probe of `ix_instances_ready` with FOR UPDATE
  SKIP LOCKED (on SQLite, under the BEGIN IMMEDIATE write lock of app.db), fresh before stale (rotation
  marks what it replaces), then the longest-ready; point the instance at the lease (only from NULL),
  insert the lease (the unique index uq_leases_active_instance allows one active lease per instance),
  commit; the `leased` event and a reconcile (backfill) are deferred until after commit. Pool status
  counters are not touched here: the event applier recounts them, so concurrent claims never queue on
  the pool row.
- **A lost instance** (observed failed, deleting or deleted) ends its lease: expired, reason `instance_lost`.
  GetLease and ExtendTo of it are FailedPrecondition naming the reason; Return of it succeeds (idempotently).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlmodel import Session, select

from app.domain import events as ev
from app.domain import backpressure, effects, quotas, reservations, transitions
from app.domain.claims import (
    ACTIVE, READY, LeaseView, Queued, announce, bind, claim, grant_expiry, view,
)
from app.domain.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from app.domain.states import ALIVE, IN_FLIGHT, DesiredState, EmptyPoolPolicy, LeaseState, ReservationState
from app.models import Instance, Lease, Pool, Reservation, Runner, utcnow

POLICY = (Pool.id, Pool.name, Pool.organization_id, Pool.lease_default_seconds, Pool.lease_max_seconds,
          Pool.reservation_ttl_seconds, Pool.empty_policy)


def choose_pool(org_id: str, *, session: Session) -> Any:
    """The caller's live pool with the most ready instances (ties: oldest, then by name)."""
    ready = sa.func.count(Instance.id)
    row = session.execute(
        sa.select(*POLICY, ready)
        .outerjoin(Instance, sa.and_(Instance.pool_id == Pool.id, READY))
        .where(Pool.organization_id == org_id, Pool.deleted_at.is_(None))
        .group_by(Pool.id)
        .order_by(ready.desc(), Pool.created_at, Pool.name)
        .limit(1)
    ).first()
    if row is None:
        raise NotFound("there is no pool to lease from: create one first")
    return row


def resolve_pool(org_id: str, name: str, *, session: Session) -> Any:
    """The live pool a Lease names (the same lookup as pools.find_pool), as a POLICY row."""
    if not name:
        return choose_pool(org_id, session=session)
    row = session.execute(
        sa.select(*POLICY).where(Pool.organization_id == org_id, Pool.name == name, Pool.deleted_at.is_(None))
    ).first()
    if row is None:
        raise NotFound(f"pool {name!r} not found")
    return row


def lease(
    org_id: str, pool_name: str, *, session: Session, service_tag: str = "", wished_expiry: datetime | None = None,
    reservation_id: str | None = None, now: datetime | None = None, wait_until: datetime | None = None,
) -> LeaseView | Queued:
    """Lease a ready instance of the pool, or queue (or reject, or create cold) by the rules above.

    A reservation id is recorded even when an instance is free at once, so every Lease call naming it
    returns the same lease while it is active (a retry after a lost response gets no second
    instance); once that lease has ended the id starts over (a fresh claim, else the back of the queue).

    `wait_until` is the caller's deadline: an automatic reservation (made for a call without a
    reservation id) expires then rather than after the pool's reservation TTL, so it is never served to
    a caller that has gone, even if the server that took the call died before withdrawing it.
    """
    now = now or utcnow()
    res, fresh = None, False
    if reservation_id is not None and not pool_name:
        res = reservations.find(org_id, reservation_id, session=session)
    if res is None:
        pool = resolve_pool(org_id, pool_name, session=session)
        if reservation_id is not None:
            res, fresh = reservations.take(org_id, reservation_id, pool, service_tag=service_tag,
                                           wished_expiry=wished_expiry, session=session, now=now)
    if res is not None and not fresh:
        pool = reservations.pool_for(res, pool_name, session=session)
        served = reservations.served_lease(res, session=session, now=now)
        if served is not None:
            return served
    granted = claim(pool, service_tag=service_tag, expires_at=grant_expiry(pool, wished_expiry, now),
                    reservation_id=reservation_id, session=session, now=now)
    if granted is not None:
        if res is not None:
            reservations.mark_fulfilled(res, granted, session=session, now=now, wake=not fresh)
        return granted
    if res is not None:
        return reservations.requeue(res, pool, service_tag=service_tag, wished_expiry=wished_expiry,
                                    session=session, now=now)
    policy = pool.empty_policy
    if policy == EmptyPoolPolicy.REJECT:
        # The refusal's path only: the claim's POLICY row does not carry what the estimate reads.
        wait = backpressure.of_pool(session.execute(sa.select(Pool.refill_seconds, Pool.next_attempt_at)
                                                    .where(Pool.id == pool.id)).one(), now)
        raise ResourceExhausted(f"pool {pool.name!r} has no ready instance and its empty-pool policy is 'reject'; "
                                f"retry in {wait} s, or send a reservation_id to queue", retry_after=wait)
    if policy == EmptyPoolPolicy.COLD:
        return lease_cold(pool, service_tag=service_tag, wished_expiry=wished_expiry, session=session, now=now)
    res, _ = reservations.take(org_id, None, pool, service_tag=service_tag, wished_expiry=wished_expiry,
                               session=session, now=now, expires_at=wait_until)
    return reservations.queued(res, pool)

def lease_cold(
    pool: Any, *, service_tag: str, wished_expiry: datetime | None, session: Session, now: datetime,
) -> LeaseView:
    """The `cold` empty-pool policy: a new instance, leased at once; it boots after commit. Counted under
    the pool's row lock (the reconciler's per-pool lock), so concurrent cold leases and the reconciler
    never take the pool past `max_size` together."""
    pool = session.exec(select(Pool).where(Pool.id == pool.id).with_for_update()).one()
    runner = session.get(Runner, pool.runner_id) if pool.runner_id else None
    if runner is None:
        raise FailedPrecondition(f"pool {pool.name!r} has no runner to create a cold instance on")
    size = pool_size(pool, session=session)
    if size >= max(pool.max_size, 1):
        wait = backpressure.of_pool(pool, now)
        raise ResourceExhausted(f"pool {pool.name!r} has no ready instance and already has {size} instances "
                                f"(max_size={pool.max_size}); retry in {wait} s", retry_after=wait)
    if quotas.instance_room(pool.organization_id, session=session) <= 0:
        raise quotas.QuotaExceeded("max_instances", f"pool {pool.name!r} is empty and the organization holds as many "
                                   "instances as its quota allows (max_instances); retry later")
    inst = Instance(pool_id=pool.id, organization_id=pool.organization_id, provider=runner.provider,
                    snapshot_id=pool.snapshot_id, desired_state=str(DesiredState.RUNNING),
                    zone=str((pool.template or {}).get("zone", "")))
    session.add(inst)
    session.flush()
    view = bind(pool, inst.id, inst.zone, service_tag=service_tag, expires_at=grant_expiry(pool, wished_expiry, now),
                session=session, now=now)
    effects.defer(session, "provision_instance", instance_id=inst.id)
    return replace(view, how="cold")


def pool_size(pool: Pool, *, session: Session) -> int:
    """The instances that count against the pool's `max_size`, as the planner counts them: every live
    free one, the leased ones on a `reuse` pool (they come back), and leased ones still booting (cold)."""
    counted = sa.true() if pool.reuse else sa.or_(Instance.lease_id.is_(None),
                                                  Instance.state.in_([str(s) for s in IN_FLIGHT]))
    return session.execute(
        sa.select(sa.func.count()).select_from(Instance).where(
            Instance.pool_id == pool.id, Instance.desired_state != str(DesiredState.DELETED),
            Instance.state.in_([str(s) for s in ALIVE]), counted,
        )
    ).scalar_one()


# ---- one lease, named by its instance ----------------------------------------------------------

def _latest(org_id: str, instance_id: str, *, session: Session, lock: bool = False) -> Lease:
    """The instance's active lease (there is at most one), else its newest. Active first: a lease's
    `created_at` is its call's start, and a call that queued for the write lock (SQLite) can create a lease
    stamped earlier than one given back on the same instance before it (give_back)."""
    stmt = (select(Lease).where(Lease.instance_id == instance_id, Lease.organization_id == org_id)
            .order_by(sa.case((ACTIVE, 0), else_=1), Lease.created_at.desc()).limit(1))
    if lock:
        stmt = stmt.with_for_update()
    found = session.exec(stmt).first()
    if found is None:
        raise NotFound(f"instance {instance_id!r} not found (or it was never leased)")
    return found


def _changeable(org_id: str, instance_id: str, service_tag: str, *, session: Session, now: datetime) -> tuple[Lease, Pool]:
    """The instance's latest lease, locked, checked to be live and the caller's; and its pool."""
    row = _latest(org_id, instance_id, session=session, lock=True)
    _check_tag(row, service_tag)
    _check_live(row, now)
    return row, cast(Pool, session.get(Pool, row.pool_id))  # the lease's pool row outlives it (foreign key)


def _check_live(row: Lease, now: datetime) -> None:
    if row.state != LeaseState.ACTIVE:
        why = f" ({row.end_reason})" if row.end_reason and row.end_reason != row.state else ""
        lost = ": the instance failed or vanished at its provider" if row.end_reason == LOST else ""
        raise FailedPrecondition(f"the lease of instance {row.instance_id} already ended: "
                                 f"{row.state}{why} at {_iso(row.ended_at)}{lost}")
    if row.expires_at <= now:
        raise FailedPrecondition(f"the lease of instance {row.instance_id} expired at {_iso(row.expires_at)}")


def _check_tag(row: Lease, service_tag: str) -> None:
    if row.service_tag != service_tag:
        raise PermissionDenied(f"the lease of instance {row.instance_id} belongs to another service tag; "
                               "only the service that leased it may change it")


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "?"

def get_lease(org_id: str, instance_id: str, *, session: Session, now: datetime | None = None) -> LeaseView:
    """The instance's active lease; an ended or lapsed one is FailedPrecondition (never served late)."""
    row = _latest(org_id, instance_id, session=session)
    _check_live(row, now or utcnow())
    return view(row, session=session)


def extend_to(
    org_id: str, instance_id: str, to: datetime, *, service_tag: str = "", extend_only: bool = False,
    session: Session, now: datetime | None = None,
) -> LeaseView:
    """Move the lease's expiry to `to`, clamped to created_at + the pool's maximum (rules above)."""
    now = now or utcnow()
    row, pool = _changeable(org_id, instance_id, service_tag, session=session, now=now)
    if extend_only and to <= row.expires_at:
        return view(row, session=session, pool=pool)
    if to <= now:
        raise InvalidArgument(f"to ({_iso(to)}) must be in the future; to end a lease, return it")
    new = min(to, row.created_at + timedelta(seconds=max(pool.lease_max_seconds, 1)))
    if extend_only:
        new = max(new, row.expires_at)
    if new != row.expires_at:
        # Compare-and-set on the lease still being active: an ExtendTo that lost the race with a Return
        # or the expiry sweep fails instead of lengthening an ended lease.
        done = session.execute(
            sa.update(Lease).where(Lease.id == row.id, ACTIVE).values(expires_at=new)
        ).rowcount
        if done != 1:
            raise FailedPrecondition(f"the lease of instance {row.instance_id} ended meanwhile")
        session.refresh(row)
    return view(row, session=session, pool=pool)


def return_lease(
    org_id: str, instance_id: str, *, service_tag: str = "", session: Session, now: datetime | None = None,
) -> LeaseView:
    """End the instance's lease; the instance is destroyed (recycled on a `reuse` pool)."""
    now = now or utcnow()
    latest = _latest(org_id, instance_id, session=session)
    if latest.end_reason == LOST:
        # The instance was lost under the lease, which already ended: returning it is what the caller
        # should do next, so it succeeds (and changes nothing), however often it is repeated.
        _check_tag(latest, service_tag)
        return view(latest, session=session)
    row, pool = _changeable(org_id, instance_id, service_tag, session=session, now=now)
    if not end(row, LeaseState.RETURNED, pool=pool, session=session, now=now):
        raise FailedPrecondition(f"the lease of instance {instance_id} ended meanwhile")
    return view(row, session=session, pool=pool)


LOST = "instance_lost"  # end_reason of a lease whose instance failed or vanished under it


def end_for_lost_instance(instance_id: str, *, session: Session, now: datetime) -> bool:
    """The instance failed or is going away under its lease: the lease ends (expired, reason
    `instance_lost`), so no active lease ever points at a dead instance. False if it had none."""
    row = session.exec(select(Lease).where(Lease.instance_id == instance_id, ACTIVE)).first()
    if row is None:
        return False
    return end(row, LeaseState.EXPIRED, pool=session.get(Pool, row.pool_id), session=session, now=now,
               reason=LOST)


def end(row: Lease, state: LeaseState, *, pool: Pool | None, session: Session, now: datetime,
        reason: str = "") -> bool:
    """Compare-and-set an active lease to `state` and release its instance; False if it had ended already.
    A `reason` other than the state itself (a lost instance) never recycles the instance."""
    if not transitions.LEASE.move(session, row, state, expect=[LeaseState.ACTIVE], now=now,
                                  end_reason=reason or str(state)):
        return False
    held = sa.and_(Instance.id == row.instance_id, Instance.lease_id == row.id)
    recycle = pool is not None and pool.reuse and pool.deleted_at is None and not reason
    if recycle:  # out of the ready set until its provider has reset it (operations.recycle, the applier)
        values: dict[str, Any] = dict(lease_id=None, draining=True, idle_since=None, state_changed_at=now)
    else:  # draining keeps the claim away until the provider task has deleted it
        values = dict(lease_id=None, draining=True, desired_state=str(DesiredState.DELETED), state_changed_at=now)
    if session.execute(sa.update(Instance).where(held).values(**values)).rowcount != 1:
        raise Aborted(f"lease {row.id} was active but instance {row.instance_id} did not hold it")
    effects.defer(session, "recycle_instance" if recycle else "delete_instance", instance_id=row.instance_id)
    announce(row.instance_id, row.pool_id, ev.KIND_RETURNED, session=session)
    return True


UNDELIVERED = "undelivered"
"""The end reason of a lease whose Lease call gave up before answering (cancelled, deadline): see give_back."""


def give_back(org_id: str, lease_id: str, *, session: Session, now: datetime | None = None) -> bool:
    """End a lease that never reached its caller (the Lease call was cancelled, or answered UNAVAILABLE at
    its deadline, after the lease was made) and put its instance back where it was: nobody has used it,
    so it is ready again at once (on any pool) and goes to the oldest waiting reservation, if any.
    False if the lease had already ended."""
    now = now or utcnow()
    row = session.get(Lease, lease_id)
    if row is None or row.organization_id != org_id:
        return False
    if not transitions.LEASE.move(session, row, LeaseState.RETURNED, expect=[LeaseState.ACTIVE], now=now,
                                  end_reason=UNDELIVERED):
        return False
    freed = session.execute(
        sa.update(Instance).where(Instance.id == row.instance_id, Instance.lease_id == lease_id)
        .values(lease_id=None, idle_since=now)
    ).rowcount
    if freed:
        reservations.assign_ready_instance(row.instance_id, session=session, now=now)
    announce(row.instance_id, row.pool_id, ev.KIND_RETURNED, session=session)
    return True


def withdraw(org_id: str, reservation_id: str, *, session: Session, now: datetime | None = None) -> bool:
    """The caller of an automatic reservation has gone (cancelled, deadline, shutdown): cancel the
    reservation if it still waits, and give back the lease it was served if it was served meanwhile,
    so nothing stays leased to nobody. True if something changed."""
    now = now or utcnow()
    if reservations.cancel_waiting(org_id, reservation_id, session=session, now=now):
        return True
    res = session.get(Reservation, reservation_id)
    if res is None or res.organization_id != org_id or res.state != ReservationState.FULFILLED or not res.lease_id:
        return False
    return give_back(org_id, res.lease_id, session=session, now=now)


def expire_due(now: datetime, limit: int, *, session: Session) -> int:
    """The beat sweep: end at most `limit` leases past their expiry (instance destroyed or recycled) and
    expire at most `limit` waiting reservations past theirs. Returns how many rows it ended."""
    rows = session.exec(
        select(Lease).where(ACTIVE, Lease.expires_at <= now)
        .order_by(Lease.expires_at).limit(limit).with_for_update(skip_locked=True)
    ).all()
    pools: dict[str, Pool | None] = {}
    ended = 0
    for row in rows:
        if row.pool_id not in pools:
            pools[row.pool_id] = session.get(Pool, row.pool_id)
        ended += end(row, LeaseState.EXPIRED, pool=pools[row.pool_id], session=session, now=now)
    return ended + reservations.expire_due(now, limit, session=session)


def list_leases(
    org_id: str, *, session: Session, include_ended: bool = False, pool_name: str = "", limit: int = 100,
) -> list[LeaseView]:
    """The organization's leases, newest first (active ones only unless `include_ended`)."""
    stmt = (sa.select(Lease, Pool, Instance.zone, Instance.address)
            .join(Pool, Pool.id == Lease.pool_id)
            .outerjoin(Instance, Instance.id == Lease.instance_id)
            .where(Lease.organization_id == org_id))
    if not include_ended:
        stmt = stmt.where(Lease.state == str(LeaseState.ACTIVE))
    if pool_name:
        stmt = stmt.where(Pool.name == pool_name)
    rows = session.execute(stmt.order_by(Lease.created_at.desc()).limit(limit)).all()
    return [
        LeaseView(instance_id=row.instance_id, pool_name=pool.name, expires_at=row.expires_at, zone=zone or "",
                  service_tag=row.service_tag, state=row.state, lease_id=row.id, pool_id=pool.id,
                  created_at=row.created_at, ended_at=row.ended_at, address=address or "", end_reason=row.end_reason)
        for row, pool, zone, address in rows
    ]


def leasable_pools(org_id: str, *, session: Session) -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, labels) of every live pool of the organization, by name: the pool's own labels sorted by
    key, then ("kind", pool.kind) (gitpod, named or podpool; a pool label called "kind" is shadowed).
    The name is the stable one a Lease takes: a named pool's name, a pod pool's id, a Gitpod pool's id."""
    rows = session.exec(
        select(Pool).where(Pool.organization_id == org_id, Pool.deleted_at.is_(None)).order_by(Pool.name, Pool.id)
    ).all()
    out = []
    for pool in rows:
        labels = sorted((str(k), str(v)) for k, v in (pool.labels or {}).items() if k != "kind")
        out.append((pool.name, [*labels, ("kind", pool.kind)]))
    return out
