"""The claim primitives both leases and reservations build on: which instance is ready, taking one for a
new lease (the instance's lease_id set only from NULL), and how a lease is shown to the façades.

Leases (app.domain.leases) and reservations (app.domain.reservations) both build on this module, and
reservations never imports leases: the lease path has no import cycle (leases -> reservations -> claims).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from app.domain import events as ev
from app.domain import effects
from app.domain.epochs import CURRENT, current_in
from app.domain.errors import Aborted
from app.domain.states import InstanceState as S, LeaseState
from app.models import Instance, Lease, Pool, new_id


def inline(value: str) -> sa.ColumnElement:
    """A constant rendered into the SQL instead of bound: a partial index's predicate (state = 'running')
    only matches a literal, and psycopg's prepared statements get generic plans after five runs, which
    would otherwise sort the whole pool instead of probing the index."""
    return sa.literal_column("'" + value.replace("'", "''") + "'")


_FREE = sa.and_(Instance.state == inline(S.RUNNING), Instance.lease_id.is_(None), Instance.draining == sa.false())
READY = sa.and_(_FREE, CURRENT)
"""Ready to hand out: the predicate of the partial index ix_instances_ready (written so the planner can match
it), and seen running at its runner's current epoch (app.domain.epochs: not since a Redis loss or re-list,
never handed out)."""


def ready_in(pool_id: Any) -> sa.ColumnElement:
    """READY for a probe of one pool's instances (`pool_id`: its id, or an expression naming it): the runner's
    epoch read once per statement, as _CLAIM reads it, instead of once per instance the probe visits."""
    return sa.and_(_FREE, current_in(pool_id))


ACTIVE = Lease.state == inline(LeaseState.ACTIVE)
"""The predicate of the partial index ix_leases_active_expiry."""


@dataclass(frozen=True)
class LeaseView:
    """A lease as the façades show it (the Intrinsic `Lease`: instance, pool, expires, zone)."""

    instance_id: str
    pool_name: str
    expires_at: datetime
    zone: str = ""
    service_tag: str = ""
    state: str = str(LeaseState.ACTIVE)
    lease_id: str = ""
    pool_id: str = ""
    created_at: datetime | None = None
    ended_at: datetime | None = None
    address: str = ""
    """Where the instance answers (observed; empty until it is ready)."""
    end_reason: str = ""
    how: str = "warm"
    """How this answer got its instance: `warm` (claimed ready), `cold` (created for it), `reserved` (served
    through a reservation); counted by app.metrics."""


@dataclass(frozen=True)
class Queued:
    """No instance was free: the caller's reservation waits in the pool's FIFO queue."""

    reservation_id: str
    """The reservation row's id: its wake-up channel is app.events.reservation_channel(reservation_id)."""
    client_id: str
    pool_name: str
    expires_at: datetime
    automatic: bool
    """Made by the `reserve` empty-pool policy for a call without a reservation id: the call that made it
    cancels it when it stops waiting."""


def grant_expiry(pool: Any, wished: datetime | None, now: datetime) -> datetime:
    """The expiry a new lease gets: the wish, clamped to the maximum; unset or not future: the default."""
    longest = timedelta(seconds=max(pool.lease_max_seconds, 1))
    if wished is None or wished <= now:
        return now + min(timedelta(seconds=max(pool.lease_default_seconds, 1)), longest)
    return min(wished, now + longest)


# What the claim path reads of a pool: a light row, not the ORM object with its JSON columns (the
# slow paths that need more, cold creation and reservations, load the full row themselves).


def claim(
    pool: Any, *, service_tag: str, expires_at: datetime, session: Session, now: datetime,
    reservation_id: str | None = None,
) -> LeaseView | None:
    """Take the best ready instance of the pool for a new lease; None if there is none free right now.
    On PostgreSQL the probe, the lease row and the assignment are one statement (one round trip)."""
    if session.get_bind().dialect.name != "postgresql":
        row = session.execute(
            sa.select(Instance.id, Instance.zone)
            .where(Instance.pool_id == pool.id, READY)
            .order_by(Instance.stale, Instance.ready_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if row is None:
            return None
        return bind(pool, row.id, row.zone, service_tag=service_tag, expires_at=expires_at,
                    reservation_id=reservation_id, session=session, now=now)
    lease_id = new_id()
    row = session.execute(_CLAIM, {
        "pool_id": pool.id, "lease_id": lease_id, "org_id": pool.organization_id, "service_tag": service_tag,
        "reservation_id": reservation_id, "now": now, "expires_at": expires_at,
    }).first()
    if row is None:
        return None
    if row.id is None:  # picked and locked, yet no longer free: a bug elsewhere, never a second lease
        raise Aborted(f"instance {row.picked} was leased concurrently; retry")
    announce(row.id, pool.id, ev.KIND_LEASED, session=session)
    return LeaseView(instance_id=row.id, pool_name=pool.name, expires_at=expires_at, zone=row.zone,
                     service_tag=service_tag, lease_id=lease_id, pool_id=pool.id, created_at=now)


# The same steps as `bind`, after the same probe (READY, fresh first, longest ready), in one statement.
_CLAIM = sa.text("""
WITH pick AS (
    SELECT id FROM instances
    WHERE pool_id = :pool_id AND state = 'running' AND lease_id IS NULL AND draining = false
      AND seen_epoch >= (SELECT coalesce(max(r.epoch), 0) FROM pools p JOIN runners r ON r.id = p.runner_id
                         WHERE p.id = :pool_id)
    ORDER BY stale, ready_at LIMIT 1 FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE instances SET lease_id = :lease_id, idle_since = NULL FROM pick
    WHERE instances.id = pick.id AND instances.lease_id IS NULL RETURNING instances.id, instances.zone
), made AS (
    INSERT INTO leases (id, organization_id, pool_id, instance_id, service_tag, state, reservation_id,
                        created_at, expires_at, ended_at, end_reason)
    SELECT :lease_id, :org_id, :pool_id, taken.id, :service_tag, 'active', :reservation_id, :now, :expires_at,
           NULL, '' FROM taken
    RETURNING instance_id
)
SELECT pick.id AS picked, taken.id, taken.zone FROM pick
LEFT JOIN taken ON taken.id = pick.id LEFT JOIN made ON made.instance_id = taken.id
""").bindparams(sa.bindparam("now", type_=sa.DateTime(timezone=True)),
                sa.bindparam("expires_at", type_=sa.DateTime(timezone=True)))


def bind(
    pool: Any, instance_id: str, zone: str, *, service_tag: str, expires_at: datetime, session: Session,
    now: datetime, reservation_id: str | None = None,
) -> LeaseView:
    """Point a free instance the caller holds locked at a new lease, and insert the lease. The instance's
    lease_id is set only from NULL: if it is taken after all, this raises Aborted instead of leasing it
    twice (and the unique index uq_leases_active_instance refuses a second active lease row anyway)."""
    lease_id = new_id()
    taken = session.execute(
        sa.update(Instance).where(Instance.id == instance_id, Instance.lease_id.is_(None))
        .values(lease_id=lease_id, idle_since=None)
    ).rowcount
    if taken != 1:
        raise Aborted(f"instance {instance_id} was leased concurrently; retry")
    session.execute(sa.insert(Lease).values(
        id=lease_id, organization_id=pool.organization_id, pool_id=pool.id, instance_id=instance_id,
        service_tag=service_tag, state=str(LeaseState.ACTIVE), reservation_id=reservation_id,
        created_at=now, expires_at=expires_at, end_reason="",
    ))
    announce(instance_id, pool.id, ev.KIND_LEASED, session=session)
    return LeaseView(instance_id=instance_id, pool_name=pool.name, expires_at=expires_at, zone=zone,
                     service_tag=service_tag, lease_id=lease_id, pool_id=pool.id, created_at=now)


def announce(instance_id: str, pool_id: str, kind: str, *, session: Session) -> None:
    """After commit: the assignment change goes on the event stream, and the pool gets a reconcile."""
    event = ev.InstanceEvent(instance_id=instance_id, pool_id=pool_id, kind=kind)
    # The event's fields are all scalars: a shallow copy is asdict() without its per-field deepcopy.
    effects.defer(session, "publish_event", **vars(event))
    effects.defer(session, "reconcile_pool", pool_id=pool_id)


def view(row: Lease, *, session: Session, pool: Pool | None = None) -> LeaseView:
    pool = pool or session.get(Pool, row.pool_id)
    inst = session.get(Instance, row.instance_id)
    return LeaseView(instance_id=row.instance_id, pool_name=pool.name if pool else row.pool_id,
                     expires_at=row.expires_at, zone=inst.zone if inst else "", service_tag=row.service_tag,
                     state=row.state, lease_id=row.id, pool_id=row.pool_id, created_at=row.created_at,
                     ended_at=row.ended_at, address=inst.address if inst else "", end_reason=row.end_reason)
