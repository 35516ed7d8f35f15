"""The Lease paths beyond "a named pool with a ready instance" for PostgreSQL on the event loop: a pool-less
Lease, the empty-pool policies `reject` and `reserve`, and a waiting call's re-check of its reservation.

Same rules, same errors, same messages as the sync functions (app.domain.leases.lease, choose_pool,
app.domain.reservations.take/requeue/mark_fulfilled/outcome), which SQLite and the rarer paths keep: a
reservation named again after it expired, was cancelled or spent, a pool-less call naming a new
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
- a Lease naming a new or waiting reservation (`lease_reserved`) takes it (INSERT … ON CONFLICT DO NOTHING,
  else the row locked), answers the live lease it was served, or claims as claims.claim does and moves it
  to fulfilled by the machine's compare-and-set, or defers its expiry keeping its place (FIFO by
  `created_at`);
- `outcome` reads a reservation, its lease, pool and instance in one statement.

Each function takes `*, conn` (a connection it never commits on); those that announce effects take `unit`
too (app.domain.leases_async.Unit).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from app.domain import backpressure, claims, effects, leases_async, transitions
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


# ---- a Lease that names its reservation ------------------------------------------------------------

_RES_COLUMNS = """r.id AS res_id, r.client_id, r.pool_id AS res_pool_id, r.state AS res_state, r.expires_at AS res_expires_at,
       r.lease_id AS res_lease_id"""
FIND_LOCKED = f"""
SELECT {_RES_COLUMNS}, l.id, l.instance_id, l.pool_id, l.service_tag, l.state, l.created_at, l.expires_at,
       l.ended_at, l.end_reason, p.name AS pool_name, i.zone, i.address
FROM reservations r
LEFT JOIN leases l ON l.id = r.lease_id LEFT JOIN pools p ON p.id = l.pool_id LEFT JOIN instances i ON i.id = l.instance_id
WHERE r.organization_id = %(org_id)s AND r.client_id = %(client_id)s FOR UPDATE OF r
"""
"""reservations.find (locked) with what served_lease reads of the lease it was served."""
TAKE = f"""
INSERT INTO reservations AS r (id, organization_id, client_id, pool_id, service_tag, state, requested_expires_at,
                               created_at, expires_at, lease_id, instance_id, state_changed_at)
VALUES (%(id)s, %(org_id)s, %(client_id)s, %(pool_id)s, %(service_tag)s, '{QUEUED_STATE}', %(wished)s,
        %(now)s, %(expires_at)s, NULL, NULL, %(now)s)
ON CONFLICT (organization_id, client_id) DO NOTHING
RETURNING {_RES_COLUMNS}
"""
_POOL = """SELECT id, name, organization_id, lease_default_seconds, lease_max_seconds, reservation_ttl_seconds,
       deleted_at FROM pools WHERE organization_id = %(org_id)s AND {which}"""
POOL_NAMED = _POOL.format(which="name = %(pool_name)s AND deleted_at IS NULL")
POOL_BY_ID = _POOL.format(which="id = %(pool_id)s")
CLAIM_FOR = f"""
WITH pool AS (
    SELECT %(pool_id)s::varchar AS id
), pick AS (
    {leases_async.PICK_SQL}
), taken AS (
    UPDATE instances SET lease_id = %(lease_id)s, idle_since = NULL
    WHERE instances.id = (SELECT id FROM pick) AND instances.lease_id IS NULL RETURNING instances.id, instances.zone
), made AS (
    INSERT INTO leases (id, organization_id, pool_id, instance_id, service_tag, state, reservation_id,
                        created_at, expires_at, ended_at, end_reason)
    SELECT %(lease_id)s, %(org_id)s, %(pool_id)s, taken.id, %(service_tag)s, '{leases_async.CREATED_STATE}',
           %(reservation_id)s, %(now)s, %(expires_at)s, NULL, '' FROM taken
    RETURNING instance_id
)
SELECT pick.id AS picked, taken.id AS taken, taken.zone, made.instance_id AS made
FROM pick LEFT JOIN taken ON taken.id = pick.id LEFT JOIN made ON made.instance_id = taken.id
"""
"""claims.claim for a reservation's pool: the same probe, the expiry granted by the caller, the reservation named."""
FULFILL_FROM = leases_async.from_states(transitions.RESERVATION, R.FULFILLED, [R.WAITING])
FULFILL = f"""
UPDATE reservations SET state = '{R.FULFILLED}', state_changed_at = %(now)s, lease_id = %(lease_id)s,
    instance_id = %(instance_id)s
WHERE id = %(id)s AND state IN {leases_async._in(FULFILL_FROM)}
"""
"""mark_fulfilled's compare-and-set (RESERVATION: waiting -> fulfilled)."""
DEFER = """
UPDATE reservations SET expires_at = %(expires_at)s, service_tag = %(service_tag)s, requested_expires_at = %(wished)s,
    created_at = CASE WHEN %(to_back)s THEN %(now)s ELSE created_at END,
    pool_id = CASE WHEN %(to_back)s THEN %(pool_id)s ELSE pool_id END
WHERE id = %(id)s
"""
"""requeue for a waiting reservation: its expiry deferred, its place kept (or, lapsed by the clock before the
sweep marked it, the back of the queue)."""


def _served(row: Any, now: datetime) -> LeaseView | None:
    """served_lease: the live lease a fulfilled reservation got, else None."""
    if row.res_state != R.FULFILLED or not row.res_lease_id or row.id is None:
        return None
    if row.state != LeaseState.ACTIVE or row.expires_at <= now:
        return None
    return LeaseView(instance_id=row.instance_id, pool_name=row.pool_name or row.pool_id, expires_at=row.expires_at,
                     zone=row.zone or "", service_tag=row.service_tag, state=row.state, lease_id=row.id,
                     pool_id=row.pool_id, created_at=row.created_at, ended_at=row.ended_at, address=row.address or "",
                     end_reason=row.end_reason, how="reserved")


async def _one(conn: Any, sql: str, params: dict[str, Any]) -> Any:
    cur = await conn.execute(sql, params)
    return await cur.fetchone()


async def lease_reserved(
    org_id: str, pool_name: str, client_id: str, *, conn: Any, unit: Unit, service_tag: str,
    wished_expiry: datetime | None, now: datetime,
) -> LeaseView | Queued | None:
    """leases.lease with a reservation id, in the caller's transaction (several writes: app.adb.transaction),
    for a reservation that is new or waiting, or was served a lease that is still live: the same lease back,
    a ready instance (the reservation fulfilled; a Lease call already waiting on it is woken), or its place
    in the queue (expiry deferred). None: the sync path answers (a pool-less call naming a new reservation,
    which chooses a pool; a reservation expired, cancelled or spent, which goes back in the queue)."""
    res, fresh, pool = None, False, None
    if not pool_name:
        res = await _one(conn, FIND_LOCKED, {"org_id": org_id, "client_id": client_id})
        if res is None:
            return None
    else:
        pool = await _one(conn, POOL_NAMED, {"org_id": org_id, "pool_name": pool_name})
        if pool is None:
            raise NotFound(f"pool {pool_name!r} not found")
        ttl = now + timedelta(seconds=max(pool.reservation_ttl_seconds, 1))
        res = await _one(conn, TAKE, {"id": new_id(), "org_id": org_id, "client_id": client_id, "pool_id": pool.id,
                                      "service_tag": service_tag, "wished": wished_expiry, "now": now,
                                      "expires_at": ttl})
        fresh = res is not None
        if res is None:
            res = await _one(conn, FIND_LOCKED, {"org_id": org_id, "client_id": client_id})
            if res is None:  # deleted between the two statements: cannot happen while rows are never deleted
                raise Unavailable(f"reservation {client_id!r} changed concurrently; retry")
    if not fresh:
        # reservations.pool_for: the reservation's own pool (a call naming another is refused).
        pool = await _one(conn, POOL_BY_ID, {"org_id": org_id, "pool_id": res.res_pool_id})
        if pool is None or pool.deleted_at is not None:
            raise NotFound(f"the pool of reservation {client_id!r} no longer exists; use a new reservation id")
        if pool_name and pool_name != pool.name:
            raise FailedPrecondition(f"reservation {client_id!r} belongs to pool {pool.name!r}, not {pool_name!r}")
        if (served := _served(res, now)) is not None:
            return served
        if res.res_state != R.WAITING:
            return None
    assert pool is not None
    lease_id = new_id()
    expires_at = claims.grant_expiry(pool, wished_expiry, now)
    got = await _one(conn, CLAIM_FOR, {"pool_id": pool.id, "lease_id": lease_id, "org_id": pool.organization_id,
                                       "service_tag": service_tag, "reservation_id": client_id, "now": now,
                                       "expires_at": expires_at})
    if got is not None:
        if got.taken is None or got.made is None:  # picked and locked, yet no longer free: never a second lease
            raise Aborted(f"instance {got.picked} was leased concurrently; retry")
        cur = await conn.execute(FULFILL, {"now": now, "lease_id": lease_id, "instance_id": got.taken, "id": res.res_id})
        if cur.rowcount != 1:
            raise transitions.InvalidTransition(f"reservation {res.res_id}: -> {R.FULFILLED} refused "
                                                f"(allowed from: {', '.join(FULFILL_FROM)})")
        claims.announce(got.taken, pool.id, ev.KIND_LEASED, session=unit)
        if not fresh:  # a Lease call may be waiting on it
            effects.defer(unit, "notify", channel=ev.reservation_channel(res.res_id), message=got.taken)
        return LeaseView(instance_id=got.taken, pool_name=pool.name, expires_at=expires_at, zone=got.zone,
                         service_tag=service_tag, lease_id=lease_id, pool_id=pool.id, created_at=now)
    expires_at = now + timedelta(seconds=max(pool.reservation_ttl_seconds, 1))
    if not fresh:
        await conn.execute(DEFER, {"expires_at": expires_at, "service_tag": service_tag, "wished": wished_expiry,
                                   "to_back": res.res_expires_at <= now, "now": now, "pool_id": pool.id,
                                   "id": res.res_id})
    return Queued(reservation_id=res.res_id, client_id=res.client_id, pool_name=pool.name, expires_at=expires_at,
                  automatic=res.client_id.startswith(AUTOMATIC_PREFIX))


def warm_statements(now: datetime) -> list[tuple[str, dict[str, Any]]]:
    """Each read-only statement with parameters that match nothing, prepared at start-up (app.adb.warm);
    the writing ones prepare on first use."""
    return [
        (CLAIM_ANY, {"org_id": "", "lease_id": "", "service_tag": "", "wished": None, "now": now}),
        (EMPTY_NAMED, {"org_id": "", "pool_name": ""}), (EMPTY_BY_ID, {"org_id": "", "pool_id": ""}),
        (OUTCOME, {"org_id": "", "reservation_id": ""}),
        (POOL_NAMED, {"org_id": "", "pool_name": ""}), (POOL_BY_ID, {"org_id": "", "pool_id": ""}),
    ]
