"""Reservations: FIFO claims queued on an empty pool, served the moment an instance is ready.

- A reservation is named by the caller's id (`client_id`, unique per organization) and waits in its
  pool's queue, oldest `created_at` first. It expires `reservation_ttl_seconds` after the last Lease
  call that named it (every such call defers it); the expiry sweep marks it `expired`.
- When an instance becomes running and free, the event applier calls `assign_ready_instance` in its
  transaction: the oldest waiting, unexpired reservation of the pool gets a lease on it, and a
  wake-up is published after commit on `app.events.reservation_channel(<reservation row id>)`, so a
  Lease call waiting on it answers at once (push, not poll).
- A reservation id is recorded even when a free instance serves it at once, so a Lease call naming a
  fulfilled reservation gets the same lease back while it is active (retries are idempotent). An
  expired or cancelled reservation named again goes back in the queue, at the back; so does a
  fulfilled one whose lease has ended.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from app import events as ev
from app.domain import effects, leases
from app.domain.errors import FailedPrecondition, NotFound, Unavailable
from app.domain.states import ReservationState as R
from app.models import Instance, Lease, Pool, Reservation, new_id, utcnow

if TYPE_CHECKING:
    from app.domain.leases import LeaseView, Queued

AUTOMATIC_PREFIX = "auto-"
WAITING = Reservation.state == sa.literal_column(f"'{R.WAITING}'")
"""The predicate of the partial index ix_reservations_waiting (inlined: see leases.inline)."""


def find(org_id: str, client_id: str, *, session: Session) -> Reservation | None:
    """The organization's reservation with this client id, locked for the rest of the transaction."""
    return session.exec(
        select(Reservation).where(Reservation.organization_id == org_id, Reservation.client_id == client_id)
        .with_for_update()
    ).first()


def pool_for(res: Reservation, pool_name: str, *, session: Session) -> Pool:
    """The pool a Lease call naming `res` leases from: the reservation's own (a call naming another is refused)."""
    pool = session.get(Pool, res.pool_id)
    if pool is None or pool.deleted_at is not None:
        raise NotFound(f"the pool of reservation {res.client_id!r} no longer exists; use a new reservation id")
    if pool_name and pool_name != pool.name:
        raise FailedPrecondition(f"reservation {res.client_id!r} belongs to pool {pool.name!r}, not {pool_name!r}")
    return pool


def served_lease(res: Reservation, *, session: Session, now: datetime) -> LeaseView | None:
    """The active lease a fulfilled reservation was served, or None (waiting, lapsed, or spent)."""
    if res.state != R.FULFILLED or not res.lease_id:
        return None
    row = session.get(Lease, res.lease_id)
    if row is None or row.state != "active" or row.expires_at <= now:
        return None
    return leases.view(row, session=session)


def mark_fulfilled(res: Reservation, granted: LeaseView, *, session: Session, wake: bool = True) -> None:
    """Record the lease a reservation got; `wake` publishes it to Lease calls waiting on it (after commit)."""
    res.state, res.lease_id, res.instance_id = str(R.FULFILLED), granted.lease_id, granted.instance_id
    session.add(res)
    if wake:
        effects.defer(session, "notify", channel=ev.reservation_channel(res.id), message=granted.instance_id)


def take(
    org_id: str, client_id: str | None, pool: Any, *, service_tag: str, wished_expiry: datetime | None,
    session: Session, now: datetime,
) -> tuple[Reservation, bool]:
    """The organization's reservation `client_id`, queued on `pool` if it is new; (row, True) when this
    call created it. `client_id=None` makes an automatic one (the `reserve` empty-pool policy). A
    concurrent call with the same new id waits for the first one's commit and then sees its row."""
    insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)
    values = dict(
        id=new_id(), organization_id=org_id, client_id=client_id or f"{AUTOMATIC_PREFIX}{uuid.uuid4()}",
        pool_id=pool.id, service_tag=service_tag, state=str(R.WAITING), requested_expires_at=wished_expiry,
        created_at=now, expires_at=now + _ttl(pool),
    )
    created = session.scalars(
        insert(Reservation).values(**values)
        .on_conflict_do_nothing(index_elements=["organization_id", "client_id"]).returning(Reservation)
    ).first()
    if created is not None:
        return created, True
    existing = find(org_id, values["client_id"], session=session)
    if existing is None:  # deleted between the two statements: cannot happen while rows are never deleted
        raise Unavailable(f"reservation {values['client_id']!r} changed concurrently; retry")
    return existing, False


def _ttl(pool: Any) -> timedelta:
    return timedelta(seconds=max(pool.reservation_ttl_seconds, 1))


def requeue(
    res: Reservation, pool: Any, *, service_tag: str, wished_expiry: datetime | None, session: Session, now: datetime,
) -> Queued:
    """A Lease call named `res` and found no free instance: defer its expiry (keeping its place), or put
    it back in the queue, at the back, if it had expired, been cancelled or been spent."""
    if res.state != R.WAITING or res.expires_at <= now:
        res.state, res.created_at, res.pool_id = str(R.WAITING), now, pool.id
        res.lease_id = res.instance_id = None
    res.expires_at = now + _ttl(pool)
    res.service_tag, res.requested_expires_at = service_tag, wished_expiry
    session.add(res)
    return queued(res, pool)


def queued(res: Reservation, pool: Any) -> Queued:
    return leases.Queued(reservation_id=res.id, client_id=res.client_id, pool_name=pool.name,
                         expires_at=res.expires_at, automatic=res.client_id.startswith(AUTOMATIC_PREFIX))


def outcome(org_id: str, reservation_id: str, *, session: Session, now: datetime | None = None) -> LeaseView | None:
    """What a waiting Lease call answers: the lease its reservation got, None while it waits.
    Expired or cancelled: Unavailable (calling Lease again with the same id queues it again)."""
    now = now or utcnow()
    res = session.get(Reservation, reservation_id)
    if res is None or res.organization_id != org_id:
        raise NotFound(f"reservation {reservation_id} not found")
    if res.state == R.FULFILLED:
        served = served_lease(res, session=session, now=now)
        if served is None:
            raise FailedPrecondition(f"the lease reservation {res.client_id!r} was served has already ended")
        return served
    if res.state == R.WAITING and res.expires_at > now:
        return None
    raise Unavailable(f"reservation {res.client_id!r} {'expired' if res.state != R.CANCELLED else 'was cancelled'}; "
                      "call Lease again with the same reservation_id to queue it again")


def cancel(org_id: str, reservation_id: str, *, session: Session, now: datetime | None = None) -> LeaseView | None:
    """Withdraw a waiting reservation (an automatic one whose call gave up); if it was served in the
    meantime, the lease it got is returned instead."""
    done = session.execute(
        sa.update(Reservation)
        .where(Reservation.id == reservation_id, Reservation.organization_id == org_id,
               Reservation.state == str(R.WAITING))
        .values(state=str(R.CANCELLED))
    ).rowcount
    if done:
        return None
    return outcome(org_id, reservation_id, session=session, now=now)


def assign_ready_instance(instance_id: str, *, session: Session, now: datetime | None = None) -> str | None:
    """Give a running, free instance to the oldest waiting, unexpired reservation of its pool, in the
    caller's transaction. Returns the new lease's id, or None (instance taken, or nobody waiting)."""
    now = now or utcnow()
    inst = session.execute(
        sa.select(Instance.id, Instance.pool_id, Instance.zone)
        .where(Instance.id == instance_id, leases.READY).with_for_update(skip_locked=True)
    ).first()
    if inst is None:
        return None
    res = session.exec(
        select(Reservation)
        .where(Reservation.pool_id == inst.pool_id, WAITING, Reservation.expires_at > now)
        .order_by(Reservation.created_at, Reservation.id).limit(1).with_for_update(skip_locked=True)
    ).first()
    if res is None:
        return None
    pool = session.get(Pool, inst.pool_id)
    if pool is None or pool.deleted_at is not None:
        return None
    granted = leases.bind(pool, inst.id, inst.zone, service_tag=res.service_tag, reservation_id=res.client_id,
                          expires_at=leases.grant_expiry(pool, res.requested_expires_at, now), session=session, now=now)
    mark_fulfilled(res, granted, session=session)
    return granted.lease_id


def expire_due(now: datetime, limit: int, *, session: Session) -> int:
    """Bounded: mark at most `limit` waiting reservations past their expiry as expired."""
    due = (sa.select(Reservation.id)
           .where(WAITING, Reservation.expires_at <= now)
           .order_by(Reservation.expires_at).limit(limit).with_for_update(skip_locked=True))
    ids = list(session.execute(due).scalars())
    if not ids:
        return 0
    return session.execute(
        sa.update(Reservation).where(Reservation.id.in_(ids), Reservation.state == str(R.WAITING))
        .values(state=str(R.EXPIRED))
    ).rowcount


def list_waiting(pool_id: str, *, session: Session) -> list[Reservation]:
    """The pool's queue, in the order it is served."""
    return list(session.exec(
        select(Reservation).where(Reservation.pool_id == pool_id, WAITING)
        .order_by(Reservation.created_at, Reservation.id)
    ).all())
