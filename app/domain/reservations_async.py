"""The Lease paths beyond "a named pool with a ready instance" for PostgreSQL on the event loop: a pool-less
Lease, the empty-pool policies `reject` and `reserve`, and a waiting call's re-check of its reservation.

Same rules, same errors, same messages as the sync functions (app.domain.leases.lease, choose_pool,
app.domain.reservations.take/outcome), which SQLite and the rarer paths keep: a Lease that names a
reservation, the `cold` policy (None here: the caller takes the sync path) and the clean-ups of a call
that gave up (leases.give_back, leases.withdraw).
- the pool-less claim chooses the pool as leases.choose_pool does (the caller's live pool with the most
  ready instances, ties: the oldest, then the name), compiled from the same expressions, then claims as
  app.domain.leases_async.CLAIM_NAMED does (the same statement with that pool);
- an empty pool is read after the claim found nothing (each path writes at most one statement, so it
  runs as app.adb.one_statement; under READ COMMITTED the sync path's one transaction holds no more):
  `reject` raises ResourceExhausted with the pool's backpressure hint (app.domain.backpressure);
  `reserve` queues an automatic reservation (state
  `waiting`, the FIFO queue's order is its `created_at`) that expires at the caller's deadline if that
  comes before the pool's reservation TTL, as reservations.take does;
- `outcome` reads a reservation, its lease, pool and instance in one statement.

Each function takes `*, conn` (a connection it never commits on); those that announce effects take `unit`
too (app.domain.leases_async.Unit).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from app.domain import backpressure, claims, leases_async
from app.domain import events as ev
from app.domain.claims import LeaseView, Queued
from app.domain.errors import Aborted, FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from app.domain.leases_async import Unit, _sql
from app.domain.reservations import AUTOMATIC_PREFIX
from app.domain.states import EmptyPoolPolicy, LeaseState, ReservationState as R
from app.models import Instance, Pool, new_id

# ---- a Lease that names no pool --------------------------------------------------------------------

CHOSEN_SQL = _sql(
    sa.select(Pool.id, Pool.name, Pool.organization_id, Pool.lease_default_seconds, Pool.lease_max_seconds)
    .outerjoin(Instance, sa.and_(Instance.pool_id == Pool.id, claims.READY))
    .where(Pool.organization_id == sa.literal_column("%(org_id)s"), Pool.deleted_at.is_(None))
    .group_by(Pool.id)
    .order_by(sa.func.count(Instance.id).desc(), Pool.created_at, Pool.name)
    .limit(1)
).replace("%%(org_id)s", "%(org_id)s")  # the compiler escapes the placeholder as it would a literal percent
"""leases.choose_pool's query (the caller's live pool with the most ready instances), as the claim's pool."""

_NAMED_POOL, _CLAIM_REST = leases_async.CLAIM_NAMED.split("), pick AS (", 1)
CLAIM_ANY = f"\nWITH pool AS (\n    {CHOSEN_SQL}\n), pick AS ({_CLAIM_REST}"
"""leases_async.CLAIM_NAMED with the chosen pool instead of the named one: the same claim, grant and lease."""


async def lease_any(
    org_id: str, *, conn: Any, unit: Unit, service_tag: str, wished_expiry: datetime | None, now: datetime,
) -> tuple[LeaseView | None, str]:
    """leases.lease without a pool name or reservation id: (the lease, the pool id), or (None, the chosen
    pool's id) when even the fullest pool has no ready instance (its empty-pool policy applies). No live
    pool at all: NotFound."""
    lease_id = new_id()
    cur = await conn.execute(CLAIM_ANY, {"org_id": org_id, "lease_id": lease_id, "service_tag": service_tag,
                                         "wished": wished_expiry, "now": now})
    row = await cur.fetchone()
    if row is None:
        raise NotFound("there is no pool to lease from: create one first")
    if row.picked is None:
        return None, row.pool_id
    if row.taken is None or row.expires_at is None:  # picked and locked, yet no longer free: never a second lease
        raise Aborted(f"instance {row.picked} was leased concurrently; retry")
    claims.announce(row.taken, row.pool_id, ev.KIND_LEASED, session=unit)
    return LeaseView(instance_id=row.taken, pool_name=row.pool_name, expires_at=row.expires_at, zone=row.zone,
                     service_tag=service_tag, lease_id=lease_id, pool_id=row.pool_id, created_at=now), row.pool_id


# ---- an empty pool ---------------------------------------------------------------------------------

_EMPTY = """
SELECT id, name, empty_policy, reservation_ttl_seconds, refill_seconds, next_attempt_at FROM pools
WHERE organization_id = %(org_id)s AND deleted_at IS NULL AND {which}
"""
EMPTY_NAMED = _EMPTY.format(which="name = %(pool_name)s")
EMPTY_BY_ID = _EMPTY.format(which="id = %(pool_id)s")

QUEUED_STATE = str(R.WAITING)
"""The state a reservation is queued in (the FIFO queue: ix_reservations_waiting)."""
QUEUE = f"""
INSERT INTO reservations (id, organization_id, client_id, pool_id, service_tag, state, requested_expires_at,
                          created_at, expires_at, lease_id, instance_id, state_changed_at)
VALUES (%(id)s, %(org_id)s, %(client_id)s, %(pool_id)s, %(service_tag)s, '{QUEUED_STATE}', %(wished)s,
        %(now)s, %(expires_at)s, NULL, NULL, %(now)s)
"""


async def empty_pool(
    org_id: str, *, conn: Any, pool_name: str = "", pool_id: str = "", service_tag: str,
    wished_expiry: datetime | None, now: datetime, wait_until: datetime | None,
) -> Queued | None:
    """The caller's pool (by name, or by id) had no ready instance just now: apply its empty-pool
    policy as leases.lease does. `reject`: ResourceExhausted with a retry hint; `reserve`: an automatic
    reservation queued at the back, expiring at `wait_until` at the latest (the caller waits on it);
    `cold`: None (the sync path creates the instance). Pool gone meanwhile: NotFound."""
    if pool_name:
        cur = await conn.execute(EMPTY_NAMED, {"org_id": org_id, "pool_name": pool_name})
    else:
        cur = await conn.execute(EMPTY_BY_ID, {"org_id": org_id, "pool_id": pool_id})
    pool = await cur.fetchone()
    if pool is None:
        raise NotFound(f"pool {pool_name or pool_id!r} not found")
    if pool.empty_policy == EmptyPoolPolicy.REJECT:
        wait = backpressure.of_pool(pool, now)
        raise ResourceExhausted(f"pool {pool.name!r} has no ready instance and its empty-pool policy is 'reject'; "
                                f"retry in {wait} s, or send a reservation_id to queue", retry_after=wait)
    if pool.empty_policy != EmptyPoolPolicy.RESERVE:
        return None
    ttl = now + timedelta(seconds=max(pool.reservation_ttl_seconds, 1))
    row_id, client_id = new_id(), f"{AUTOMATIC_PREFIX}{new_id()}"
    expires_at = min(ttl, wait_until or ttl)
    await conn.execute(QUEUE, {"id": row_id, "org_id": org_id, "client_id": client_id, "pool_id": pool.id,
                               "service_tag": service_tag, "wished": wished_expiry, "now": now,
                               "expires_at": expires_at})
    return Queued(reservation_id=row_id, client_id=client_id, pool_name=pool.name, expires_at=expires_at,
                  automatic=True)


# ---- a waiting call's re-check ---------------------------------------------------------------------

OUTCOME = """
SELECT r.client_id, r.state AS res_state, r.expires_at AS res_expires_at, r.lease_id AS res_lease_id,
       l.id, l.instance_id, l.pool_id, l.service_tag, l.state, l.created_at, l.expires_at, l.ended_at,
       l.end_reason, p.name AS pool_name, i.zone, i.address
FROM reservations r
LEFT JOIN leases l ON l.id = r.lease_id LEFT JOIN pools p ON p.id = l.pool_id LEFT JOIN instances i ON i.id = l.instance_id
WHERE r.id = %(reservation_id)s AND r.organization_id = %(org_id)s
"""


async def outcome(org_id: str, reservation_id: str, *, conn: Any, now: datetime) -> LeaseView | None:
    """reservations.outcome: the lease the reservation got, None while it waits; a served lease that ended:
    FailedPrecondition; expired or cancelled: Unavailable; unknown (or another organization's): NotFound."""
    cur = await conn.execute(OUTCOME, {"org_id": org_id, "reservation_id": reservation_id})
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"reservation {reservation_id} not found")
    if row.res_state == R.FULFILLED:
        if not row.res_lease_id or row.id is None or row.state != LeaseState.ACTIVE or row.expires_at <= now:
            raise FailedPrecondition(f"the lease reservation {row.client_id!r} was served has already ended")
        return LeaseView(instance_id=row.instance_id, pool_name=row.pool_name or row.pool_id,
                         expires_at=row.expires_at, zone=row.zone or "", service_tag=row.service_tag,
                         state=row.state, lease_id=row.id, pool_id=row.pool_id, created_at=row.created_at,
                         ended_at=row.ended_at, address=row.address or "", end_reason=row.end_reason,
                         how="reserved")
    if row.res_state == R.WAITING and row.res_expires_at > now:
        return None
    raise Unavailable(f"reservation {row.client_id!r} {'expired' if row.res_state != R.CANCELLED else 'was cancelled'}; "
                      "call Lease again with the same reservation_id to queue it again")


def warm_statements(now: datetime) -> list[tuple[str, dict[str, Any]]]:
    """Each read-only statement with parameters that match nothing, prepared at start-up (app.adb.warm);
    the writing ones prepare on first use."""
    return [
        (CLAIM_ANY, {"org_id": "", "lease_id": "", "service_tag": "", "wished": None, "now": now}),
        (EMPTY_NAMED, {"org_id": "", "pool_name": ""}), (EMPTY_BY_ID, {"org_id": "", "pool_id": ""}),
        (OUTCOME, {"org_id": "", "reservation_id": ""}),
    ]
