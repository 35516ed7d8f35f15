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
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm.util import identity_key
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from app.domain import events as ev
from app.domain import claims, effects, transitions
from app.domain.claims import LeaseView, Queued
from app.domain.errors import Aborted, FailedPrecondition, NotFound, Unavailable
from app.domain.states import LeaseState, ReservationState as R
from app.models import Instance, Lease, Pool, Reservation, new_id, utcnow

AUTOMATIC_PREFIX = "auto-"
WAITING = Reservation.state == sa.literal_column(f"'{R.WAITING}'")
"""The predicate of the partial index ix_reservations_waiting (inlined: see claims.inline)."""


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
    return replace(claims.view(row, session=session), how="reserved")


def mark_fulfilled(res: Reservation, granted: LeaseView, *, session: Session, now: datetime,
                   wake: bool = True) -> None:
    """Record the lease a reservation got; `wake` publishes it to Lease calls waiting on it (after commit).
    A reservation named again after it lapsed or was spent is queued anew first, then served at once."""
    if res.state != R.WAITING:
        _requeue_row(res, res.pool_id, session=session, now=now)
    transitions.RESERVATION.move(session, res, R.FULFILLED, expect=[R.WAITING], now=now, strict=True,
                                 lease_id=granted.lease_id, instance_id=granted.instance_id)
    if wake:
        effects.defer(session, "notify", channel=ev.reservation_channel(res.id), message=granted.instance_id)


def take(
    org_id: str, client_id: str | None, pool: Any, *, service_tag: str, wished_expiry: datetime | None,
    session: Session, now: datetime, expires_at: datetime | None = None,
) -> tuple[Reservation, bool]:
    """The organization's reservation `client_id`, queued on `pool` if it is new; (row, True) when this
    call created it. `client_id=None` makes an automatic one (the `reserve` empty-pool policy), which
    expires at `expires_at` (its caller's deadline) if that comes before the pool's TTL. A
    concurrent call with the same new id waits for the first one's commit and then sees its row."""
    insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)
    values = dict(
        id=new_id(), organization_id=org_id, client_id=client_id or f"{AUTOMATIC_PREFIX}{uuid.uuid4()}",
        pool_id=pool.id, service_tag=service_tag, state=str(R.WAITING), requested_expires_at=wished_expiry,
        created_at=now, expires_at=min(now + _ttl(pool), expires_at or now + _ttl(pool)),
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
    if res.state != R.WAITING:
        _requeue_row(res, pool.id, session=session, now=now)
    elif res.expires_at <= now:  # lapsed by the clock before the sweep marked it: to the back as well
        res.created_at, res.pool_id = now, pool.id
    res.expires_at = now + _ttl(pool)
    res.service_tag, res.requested_expires_at = service_tag, wished_expiry
    session.add(res)
    return queued(res, pool)


def _requeue_row(res: Reservation, pool_id: str, *, session: Session, now: datetime) -> None:
    """An expired, cancelled or spent reservation back in its pool's queue, at the back."""
    transitions.RESERVATION.move(session, res, R.WAITING, expect=[R.FULFILLED, R.EXPIRED, R.CANCELLED], now=now,
                                 strict=True, created_at=now, pool_id=pool_id, lease_id=None, instance_id=None)


def queued(res: Reservation, pool: Any) -> Queued:
    return Queued(reservation_id=res.id, client_id=res.client_id, pool_name=pool.name,
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
    if cancel_waiting(org_id, reservation_id, session=session, now=now):
        return None
    return outcome(org_id, reservation_id, session=session, now=now)


def cancel_waiting(org_id: str, reservation_id: str, *, session: Session, now: datetime | None = None) -> bool:
    """Compare-and-set a waiting reservation to cancelled; False if it was no longer waiting."""
    return bool(transitions.RESERVATION.move(session, reservation_id, R.CANCELLED, expect=[R.WAITING], now=now,
                                             where=[Reservation.organization_id == org_id]))


def assign_ready_instance(instance_id: str, *, session: Session, now: datetime | None = None) -> str | None:
    """Give a running, free instance to the oldest waiting, unexpired reservation of its pool, in the
    caller's transaction. Returns the new lease's id, or None (instance taken, or nobody waiting).
    On PostgreSQL the steps are one statement (ASSIGN: one round trip on the event applier's path, which a
    waiting Lease call's wake-up waits for)."""
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":
        return _assign_in_one(instance_id, session=session, now=now)
    inst = session.execute(
        sa.select(Instance.id, Instance.pool_id, Instance.zone)
        .where(Instance.id == instance_id, claims.READY).with_for_update(skip_locked=True)
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
    granted = claims.bind(pool, inst.id, inst.zone, service_tag=res.service_tag, reservation_id=res.client_id,
                          expires_at=claims.grant_expiry(pool, res.requested_expires_at, now), session=session, now=now)
    mark_fulfilled(res, granted, session=session, now=now)
    return granted.lease_id


def _pg(expr: Any) -> str:
    return str(expr.compile(dialect=postgresql.psycopg.dialect(), compile_kwargs={"literal_binds": True}))


_FULFILL_FROM = sorted(str(s) for s in transitions.RESERVATION.sources(R.FULFILLED) if s == R.WAITING)
"""mark_fulfilled's compare-and-set (from waiting, which the machine must allow; checked at import)."""
assert _FULFILL_FROM == [str(R.WAITING)], "the reservation machine no longer lets a waiting reservation be fulfilled"

# The sync steps above in one statement: the instance (ready, locked, skipped if another holds it), its
# live pool, the pool's oldest waiting unexpired reservation (locked, skip locked), the expiry granted as
# claims.grant_expiry does, the instance pointed at the lease only from NULL (claims.bind), the lease row
# (active; uq_leases_active_instance allows one per instance), and the reservation's compare-and-set to
# fulfilled (mark_fulfilled). The last SELECT says which steps happened, so the caller raises as they would.
ASSIGN = sa.text(f"""
WITH inst AS (
    {_pg(sa.select(Instance.id, Instance.pool_id, Instance.zone)
         .where(Instance.id == sa.literal_column(":instance_id"), claims.READY).with_for_update(skip_locked=True))}
), pool AS (
    SELECT id, organization_id, lease_default_seconds, lease_max_seconds FROM pools
    WHERE id = (SELECT pool_id FROM inst) AND deleted_at IS NULL
), res AS (
    {_pg(sa.select(Reservation.id, Reservation.client_id, Reservation.service_tag, Reservation.requested_expires_at)
         .where(Reservation.pool_id == sa.literal_column("(SELECT id FROM pool)"), WAITING,
                Reservation.expires_at > sa.literal_column(":now"))
         .order_by(Reservation.created_at, Reservation.id).limit(1).with_for_update(skip_locked=True))}
), granted AS (
    SELECT CASE WHEN res.requested_expires_at IS NULL OR res.requested_expires_at <= :now
        THEN :now + make_interval(secs => LEAST(GREATEST(pool.lease_default_seconds, 1),
                                                GREATEST(pool.lease_max_seconds, 1)))
        ELSE LEAST(res.requested_expires_at, :now + make_interval(secs => GREATEST(pool.lease_max_seconds, 1)))
    END AS expires_at FROM pool, res
), taken AS (
    UPDATE instances SET lease_id = :lease_id, idle_since = NULL
    WHERE instances.id = (SELECT id FROM inst) AND instances.lease_id IS NULL AND EXISTS (SELECT 1 FROM granted)
    RETURNING instances.id
), made AS (
    INSERT INTO leases (id, organization_id, pool_id, instance_id, service_tag, state, reservation_id,
                        created_at, expires_at, ended_at, end_reason)
    SELECT :lease_id, pool.organization_id, pool.id, taken.id, res.service_tag, '{LeaseState.ACTIVE}', res.client_id,
           :now, granted.expires_at, NULL, '' FROM taken, pool, res, granted
    RETURNING id, expires_at
), served AS (
    UPDATE reservations SET state = '{R.FULFILLED}', state_changed_at = :now, lease_id = :lease_id,
        instance_id = (SELECT id FROM taken)
    WHERE reservations.id = (SELECT id FROM res) AND reservations.state IN ('{"', '".join(_FULFILL_FROM)}')
      AND EXISTS (SELECT 1 FROM made)
    RETURNING reservations.id
)
SELECT inst.id AS inst, inst.pool_id, res.id AS res, granted.expires_at AS granted, taken.id AS taken,
       made.id AS made, served.id AS served
FROM inst LEFT JOIN pool ON true LEFT JOIN res ON true LEFT JOIN granted ON true LEFT JOIN taken ON true
LEFT JOIN made ON true LEFT JOIN served ON true
""").bindparams(sa.bindparam("now", type_=sa.DateTime(timezone=True)))


def _assign_in_one(instance_id: str, *, session: Session, now: datetime) -> str | None:
    lease_id = new_id()
    row = session.execute(ASSIGN, {"instance_id": instance_id, "now": now, "lease_id": lease_id}).first()
    if row is None or row.res is None or row.granted is None:  # not ready, nobody waiting, or the pool is gone
        return None
    if row.taken is None or row.made is None:
        raise Aborted(f"instance {instance_id} was leased concurrently; retry")
    if row.served is None:  # the reservation row is locked by this statement: a bug, never a silent half
        raise transitions.InvalidTransition(f"reservation {row.res}: could not move to {R.FULFILLED}")
    # Objects this session already holds show the change (as the ORM updates of the sync steps would).
    for model, key, values in ((Instance, instance_id, dict(lease_id=lease_id, idle_since=None)),
                               (Reservation, row.res, dict(state=str(R.FULFILLED), state_changed_at=now,
                                                           lease_id=lease_id, instance_id=instance_id))):
        held = session.identity_map.get(identity_key(model, key))
        if held is not None:
            for k, v in values.items():
                set_committed_value(held, k, v)
    claims.announce(instance_id, row.pool_id, ev.KIND_LEASED, session=session)
    effects.defer(session, "notify", channel=ev.reservation_channel(row.res), message=instance_id)
    return lease_id


def expire_due(now: datetime, limit: int, *, session: Session) -> int:
    """Bounded: mark at most `limit` waiting reservations past their expiry as expired."""
    due = (sa.select(Reservation.id)
           .where(WAITING, Reservation.expires_at <= now)
           .order_by(Reservation.expires_at).limit(limit).with_for_update(skip_locked=True))
    ids = list(session.execute(due).scalars())
    if not ids:
        return 0
    return transitions.RESERVATION.move(session, ids, R.EXPIRED, expect=[R.WAITING], now=now)


def list_waiting(pool_id: str, *, session: Session) -> list[Reservation]:
    """The pool's queue, in the order it is served."""
    return list(session.exec(
        select(Reservation).where(Reservation.pool_id == pool_id, WAITING)
        .order_by(Reservation.created_at, Reservation.id)
    ).all())
