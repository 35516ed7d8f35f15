"""The lease rules of app.domain.leases for PostgreSQL on the event loop: one prepared statement per step.

Same rules, same errors, same guarantees as the sync functions (which SQLite and the rarer paths keep):
- the claim is the sync claim's probe (claims.READY, fresh before stale, longest ready, FOR UPDATE SKIP
  LOCKED; PICK_SQL, compiled from the same expressions), the pool lookup and the expiry grant folded into the
  same one statement; the instance's lease_id is set only from NULL and the lease row is inserted `active`,
  where the unique partial index uq_leases_active_instance allows one per instance; lease_named_many does the
  same for several calls of one pool at once (app.api.claim_batch);
- a lease ends by a compare-and-set from the states app.domain.transitions.LEASE allows (RETURN_FROM,
  rendered into the SQL from the machine's table; tests/unit/test_leases_async_sql.py ties them);
- a named pool with no ready instance, an empty pool name and reservations are not here: `lease_named`
  answers None and the caller takes the sync path (app.domain.leases.lease), which queues, rejects or
  creates cold by the pool's policy.

Each function takes `*, conn` (a connection it never commits) and `unit` (whose `info` collects the
after-commit effects, as a Session's does: app.domain.effects.defer works on it; lease_named_many: each
Want's). lease_named, lease_named_many, get_lease and return_lease write at most once, in one statement, so
their callers run them as a statement of their own (app.adb.one_statement: no BEGIN/COMMIT round trips);
extend_to needs a transaction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from app.domain import events as ev
from app.domain import claims, effects, leases, transitions
from app.domain.claims import LeaseView
from app.domain.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from app.domain.states import DesiredState, LeaseState
from app.models import Instance, new_id

_PG = postgresql.psycopg.dialect()


def _sql(expr: Any) -> str:
    """A SQLAlchemy predicate as PostgreSQL text (constants inlined), so this module's statements carry
    exactly the predicates the sync path uses (claims.READY, claims.ACTIVE)."""
    return str(expr.compile(dialect=_PG, compile_kwargs={"literal_binds": True}))


def from_states(machine: transitions.Machine, to: Any, expect: list[Any]) -> list[str]:
    """The states a compare-and-set to `to` may start from: `expect`, all of which the machine must allow."""
    allowed = machine.sources(to)
    if not set(expect) <= allowed:
        raise transitions.InvalidTransition(f"{machine.name}: {expect} -> {to} is not a move the lifecycle allows")
    return sorted(str(s) for s in expect)


def _in(states: list[str]) -> str:
    return "(" + ", ".join("'" + s.replace("'", "''") + "'" for s in states) + ")"


RETURN_FROM = from_states(transitions.LEASE, LeaseState.RETURNED, [LeaseState.ACTIVE])
"""Where a Return moves a lease from (to `returned`), as leases.end asks the machine."""
CREATED_STATE = str(LeaseState.ACTIVE)
"""The state a claim inserts a lease in."""

ACTIVE_SQL = _sql(claims.ACTIVE)


def _pick(limit: Any) -> str:
    pool_id: Any = sa.literal_column("(SELECT id FROM pool)")
    return _sql(
        sa.select(Instance.id)
        .where(Instance.pool_id == pool_id, claims.ready_in(pool_id))
        .order_by(Instance.stale, Instance.ready_at).limit(limit).with_for_update(skip_locked=True)
    )


PICK_SQL = _pick(1)
"""The sync claim's probe (claims.claim: READY, fresh before stale, longest ready), compiled from the same
expressions (claims.ready_in: READY with the pool's runner epoch read once per statement)."""
PICK_MANY_SQL = _pick(sa.literal_column("%(k)s")).replace("%%(k)s", "%(k)s")  # the compiler escapes the %
"""PICK_SQL for `k` instances at once (lease_named_many)."""


@dataclass
class Unit:
    """What a unit of work carries besides its connection: the effects deferred until after commit."""

    info: dict[str, Any] = field(default_factory=dict)


# ---- Lease of a named pool -------------------------------------------------------------------------

@dataclass
class Want:
    """One Lease call of a named pool (alone, or its part of a batch): what it asks for, and the unit that
    collects its after-commit effects."""

    service_tag: str
    wished_expiry: datetime | None
    unit: Unit = field(default_factory=Unit)
    lease_id: str = field(default_factory=new_id)


# Rows are named by scalar subqueries (`id = (SELECT id FROM pick)`), not joins with the CTEs: a prepared
# statement's generic plan then probes the indexes (ix_instances_ready, the primary keys) whatever the
# table statistics said when it was planned, instead of sorting a pool or scanning the leases.
#
# Pool by name, then the sync claim (claims._CLAIM) with the expiry granted in SQL as claims.grant_expiry
# does it: a wish unset or not in the future gets the default (capped by the maximum), else the wish
# capped by the maximum.
CLAIM_NAMED = f"""
WITH pool AS (
    SELECT id, name, organization_id, lease_default_seconds, lease_max_seconds
    FROM pools WHERE organization_id = %(org_id)s AND name = %(pool_name)s AND deleted_at IS NULL
), pick AS (
    {PICK_SQL}
), taken AS (
    UPDATE instances SET lease_id = %(lease_id)s, idle_since = NULL
    WHERE instances.id = (SELECT id FROM pick) AND instances.lease_id IS NULL RETURNING instances.id, instances.zone
), granted AS (
    SELECT CASE WHEN %(wished)s::timestamptz IS NULL OR %(wished)s::timestamptz <= %(now)s::timestamptz
        THEN %(now)s::timestamptz + make_interval(secs => LEAST(GREATEST(lease_default_seconds, 1),
                                                               GREATEST(lease_max_seconds, 1)))
        ELSE LEAST(%(wished)s::timestamptz, %(now)s::timestamptz + make_interval(secs => GREATEST(lease_max_seconds, 1)))
    END AS expires_at FROM pool
), made AS (
    INSERT INTO leases (id, organization_id, pool_id, instance_id, service_tag, state, reservation_id,
                        created_at, expires_at, ended_at, end_reason)
    SELECT %(lease_id)s, pool.organization_id, pool.id, taken.id, %(service_tag)s, '{CREATED_STATE}', NULL,
           %(now)s, granted.expires_at, NULL, '' FROM taken, pool, granted
    RETURNING instance_id, expires_at
)
SELECT pool.id AS pool_id, pool.name AS pool_name, pick.id AS picked, taken.id AS taken, taken.zone,
       made.expires_at
FROM pool LEFT JOIN pick ON true LEFT JOIN taken ON taken.id = pick.id LEFT JOIN made ON made.instance_id = taken.id
"""


async def lease_named(
    org_id: str, pool_name: str, want: Want, *, conn: Any, now: datetime,
) -> LeaseView | None | NotFound | Aborted:
    """Lease a ready instance of the caller's live pool `pool_name` (not empty), as leases.lease does
    without a reservation id, its effects in `want.unit`; None when the pool has no ready instance (the caller
    takes the sync path, which applies the pool's empty-pool policy). The refusal (an unknown pool: NotFound)
    is returned, not raised, as lease_named_many returns each of its calls'."""
    cur = await conn.execute(CLAIM_NAMED, {
        "org_id": org_id, "pool_name": pool_name, "lease_id": want.lease_id, "service_tag": want.service_tag,
        "wished": want.wished_expiry, "now": now,
    })
    return _outcome(await cur.fetchone(), pool_name, want, now)


def _outcome(row: Any, pool_name: str, want: Want, now: datetime) -> LeaseView | None | NotFound | Aborted:
    """What a claim's result row (CLAIM_NAMED's, or one of CLAIM_NAMED_MANY's) gives its call: the lease, with
    its after-commit effects in the call's unit; None when no ready instance was left for it; or the refusal."""
    if row is None or row.pool_id is None:
        return NotFound(f"pool {pool_name!r} not found")
    if row.picked is None:
        return None
    if row.taken is None or row.expires_at is None:  # picked and locked, yet no longer free: never a second lease
        return Aborted(f"instance {row.picked} was leased concurrently; retry")
    claims.announce(row.taken, row.pool_id, ev.KIND_LEASED, session=want.unit)
    return LeaseView(instance_id=row.taken, pool_name=row.pool_name, expires_at=row.expires_at, zone=row.zone,
                     service_tag=want.service_tag, lease_id=want.lease_id, pool_id=row.pool_id, created_at=now)


# ---- several Leases of one named pool in one statement -------------------------------------------

# CLAIM_NAMED for the `k` wants of one batch (app.api.claim_batch): the same pool lookup, the same probe taking
# up to k instances (PICK_MANY_SQL), each instance's lease_id set only from NULL, each lease inserted `active`
# with its own expiry grant. Wants and instances pair by their row numbers; a want left without an instance
# (fewer ready than wanted) gets none. `pick` is MATERIALIZED: the probe runs once, and the rows it locked
# are the ones updated. The instances are updated by primary key (`= ANY`), never by a join a generic plan
# could turn into a scan.
CLAIM_NAMED_MANY = f"""
WITH pool AS (
    SELECT id, name, organization_id, lease_default_seconds, lease_max_seconds
    FROM pools WHERE organization_id = %(org_id)s AND name = %(pool_name)s AND deleted_at IS NULL
), want AS (
    SELECT * FROM unnest(%(lease_ids)s::varchar[], %(service_tags)s::varchar[], %(wished)s::timestamptz[])
        WITH ORDINALITY AS w(lease_id, service_tag, wished, n)
), pick AS MATERIALIZED (
    SELECT id, row_number() OVER () AS n FROM ({PICK_MANY_SQL}) AS probe
), taken AS (
    UPDATE instances SET idle_since = NULL,
        lease_id = (SELECT want.lease_id FROM pick JOIN want ON want.n = pick.n WHERE pick.id = instances.id)
    WHERE instances.id = ANY (ARRAY(SELECT id FROM pick)) AND instances.lease_id IS NULL
    RETURNING instances.id, instances.zone, instances.lease_id
), made AS (
    INSERT INTO leases (id, organization_id, pool_id, instance_id, service_tag, state, reservation_id,
                        created_at, expires_at, ended_at, end_reason)
    SELECT taken.lease_id, pool.organization_id, pool.id, taken.id, want.service_tag, '{CREATED_STATE}', NULL,
           %(now)s,
           CASE WHEN want.wished IS NULL OR want.wished <= %(now)s::timestamptz
               THEN %(now)s::timestamptz + make_interval(secs => LEAST(GREATEST(lease_default_seconds, 1),
                                                                      GREATEST(lease_max_seconds, 1)))
               ELSE LEAST(want.wished, %(now)s::timestamptz + make_interval(secs => GREATEST(lease_max_seconds, 1)))
           END,
           NULL, ''
    FROM taken JOIN want ON want.lease_id = taken.lease_id, pool
    RETURNING instance_id, expires_at
)
SELECT want.n, pool.id AS pool_id, pool.name AS pool_name, pick.id AS picked, taken.id AS taken, taken.zone,
       made.expires_at
FROM want LEFT JOIN pool ON true LEFT JOIN pick ON pick.n = want.n LEFT JOIN taken ON taken.id = pick.id
    LEFT JOIN made ON made.instance_id = taken.id
ORDER BY want.n
"""


async def lease_named_many(
    org_id: str, pool_name: str, wants: list[Want], *, conn: Any, now: datetime,
) -> list[LeaseView | None | NotFound | Aborted]:
    """lease_named for several calls on one pool, in one statement: per want, in order, its lease, None (no
    ready instance left for it: the caller takes the sync path), or the error lease_named would raise, returned
    rather than raised so one call's refusal is not its batch's. Each lease's effects go to its want's unit."""
    cur = await conn.execute(CLAIM_NAMED_MANY, {
        "org_id": org_id, "pool_name": pool_name, "lease_ids": [w.lease_id for w in wants],
        "service_tags": [w.service_tag for w in wants], "wished": [w.wished_expiry for w in wants],
        "k": len(wants), "now": now,
    })
    return [_outcome(row, pool_name, want, now) for want, row in zip(wants, await cur.fetchall(), strict=True)]


# ---- one lease, named by its instance ----------------------------------------------------------

# An instance's leases, found by ix_leases_instance alone. The statements are prepared once, often while
# the tables are still empty, and a generic plan built then outlives the statistics: left to itself it
# intersects with ix_leases_organization_id (every lease the organization ever had) or walks
# ix_leases_active_expiry (every live lease). OFFSET 0 keeps the organization's filter (an instance
# belongs to one) above the probe, and rows are changed by primary key.
OF_INSTANCE = "(SELECT * FROM leases WHERE instance_id = %(instance_id)s OFFSET 0) AS leases"

# leases._latest: the instance's active lease, else its newest; with its pool and instance for the view.
_LATEST = f"""
SELECT l.id, l.instance_id, l.pool_id, l.service_tag, l.state, l.created_at, l.expires_at, l.ended_at,
       l.end_reason, p.name AS pool_name, p.lease_max_seconds, p.reuse, p.deleted_at AS pool_deleted_at,
       i.zone, i.address
FROM (SELECT * FROM {OF_INSTANCE} WHERE organization_id = %(org_id)s
      ORDER BY CASE WHEN {ACTIVE_SQL} THEN 0 ELSE 1 END, created_at DESC LIMIT 1 {{lock}}) AS l
LEFT JOIN pools p ON p.id = l.pool_id LEFT JOIN instances i ON i.id = l.instance_id
"""
LATEST = _LATEST.format(lock="")
LATEST_LOCKED = _LATEST.format(lock="FOR UPDATE")


def _view(row: Any, **changed: Any) -> LeaseView:
    values = dict(instance_id=row.instance_id, pool_name=row.pool_name or row.pool_id, expires_at=row.expires_at,
                  zone=row.zone or "", service_tag=row.service_tag, state=row.state, lease_id=row.id,
                  pool_id=row.pool_id, created_at=row.created_at, ended_at=row.ended_at, address=row.address or "",
                  end_reason=row.end_reason)
    values.update(changed)
    return LeaseView(**values)


async def _latest(conn: Any, org_id: str, instance_id: str, *, lock: bool) -> Any:
    cur = await conn.execute(LATEST_LOCKED if lock else LATEST, {"org_id": org_id, "instance_id": instance_id})
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"instance {instance_id!r} not found (or it was never leased)")
    return row


async def get_lease(org_id: str, instance_id: str, *, conn: Any, now: datetime) -> LeaseView:
    """leases.get_lease: the instance's active lease; an ended or lapsed one is FailedPrecondition."""
    row = await _latest(conn, org_id, instance_id, lock=False)
    leases._check_live(row, now)
    return _view(row)


_EXTEND = f"UPDATE leases SET expires_at = %(expires_at)s WHERE id = %(id)s AND {ACTIVE_SQL}"


async def extend_to(
    org_id: str, instance_id: str, to: datetime, *, conn: Any, service_tag: str, extend_only: bool, now: datetime,
) -> LeaseView:
    """leases.extend_to: move the expiry to `to`, clamped to created_at + the pool's maximum."""
    row = await _latest(conn, org_id, instance_id, lock=True)
    leases._check_tag(row, service_tag)
    leases._check_live(row, now)
    if extend_only and to <= row.expires_at:
        return _view(row)
    if to <= now:
        raise InvalidArgument(f"to ({leases._iso(to)}) must be in the future; to end a lease, return it")
    new = min(to, row.created_at + timedelta(seconds=max(row.lease_max_seconds or 0, 1)))
    if extend_only:
        new = max(new, row.expires_at)
    if new != row.expires_at:
        cur = await conn.execute(_EXTEND, {"expires_at": new, "id": row.id})
        if cur.rowcount != 1:
            raise FailedPrecondition(f"the lease of instance {row.instance_id} ended meanwhile")
    return _view(row, expires_at=new)


# leases.end for a Return, in one statement (it runs as its own transaction: adb.one_statement): the
# latest lease locked, then its instance locked while it holds that lease; the compare-and-set of the lease
# (from RETURN_FROM, only while it is live and the caller's, and only with its instance held, so the two
# changes happen together or not at all), then the release of the instance, destroyed or, on a live
# `reuse` pool, kept out of the ready set until its provider reset it.
RETURN = f"""
WITH latest AS (
    SELECT leases.id, leases.instance_id, leases.pool_id,
           leases.service_tag = %(service_tag)s AND leases.expires_at > %(now)s
               AND leases.end_reason <> '{leases.LOST}' AS returnable
    FROM {OF_INSTANCE} WHERE leases.organization_id = %(org_id)s
    ORDER BY CASE WHEN {ACTIVE_SQL} THEN 0 ELSE 1 END, leases.created_at DESC LIMIT 1 FOR UPDATE
), holder AS (
    SELECT instances.id FROM instances
    WHERE instances.id = (SELECT instance_id FROM latest) AND instances.lease_id = (SELECT id FROM latest)
    FOR UPDATE
), ended AS (
    UPDATE leases SET state = '{LeaseState.RETURNED}', ended_at = %(now)s, end_reason = '{LeaseState.RETURNED}'
    WHERE leases.id = (SELECT id FROM latest WHERE returnable) AND leases.state IN {_in(RETURN_FROM)}
      AND EXISTS (SELECT 1 FROM holder)
    RETURNING leases.id, leases.instance_id, leases.pool_id
), pool AS (
    SELECT p.id, (p.reuse AND p.deleted_at IS NULL) AS recycle FROM pools p WHERE p.id = (SELECT pool_id FROM ended)
), freed AS (
    UPDATE instances SET lease_id = NULL, draining = true, state_changed_at = %(now)s,
        idle_since = CASE WHEN pool.recycle THEN NULL ELSE instances.idle_since END,
        desired_state = CASE WHEN pool.recycle THEN instances.desired_state ELSE '{DesiredState.DELETED}' END
    FROM ended, pool
    WHERE instances.id = (SELECT id FROM holder) AND instances.lease_id = ended.id
    RETURNING instances.id
)
SELECT latest.id, latest.pool_id, holder.id AS holder, ended.id AS ended, freed.id AS freed, pool.recycle
FROM latest LEFT JOIN holder ON true LEFT JOIN ended ON ended.id = latest.id LEFT JOIN pool ON true
LEFT JOIN freed ON true
"""


async def return_lease(org_id: str, instance_id: str, *, conn: Any, unit: Unit, service_tag: str, now: datetime) -> None:
    """leases.return_lease: end the instance's lease (returned); the instance is destroyed (recycled on a
    live `reuse` pool) and the pool backfills, after commit. A lease its instance's loss already ended
    returns successfully and changes nothing; the errors are the sync function's. RETURN is the only
    write: run it as a statement of its own (adb.one_statement)."""
    cur = await conn.execute(RETURN, {"org_id": org_id, "instance_id": instance_id, "service_tag": service_tag,
                                      "now": now})
    done = await cur.fetchone()
    if done is None:
        raise NotFound(f"instance {instance_id!r} not found (or it was never leased)")
    if done.ended is None:
        # Nothing changed: say why, in the sync path's words, from the lease as it is now.
        row = await _latest(conn, org_id, instance_id, lock=False)
        leases._check_tag(row, service_tag)
        if row.end_reason == leases.LOST:
            return
        leases._check_live(row, now)
        if done.holder is None and row.id == done.id:
            raise Aborted(f"lease {done.id} was active but instance {instance_id} did not hold it")
        raise FailedPrecondition(f"the lease of instance {instance_id} ended meanwhile")
    if done.freed is None:  # the instance was locked while it held the lease: a bug, say so
        raise Aborted(f"lease {done.ended} was active but instance {instance_id} did not hold it")
    effects.defer(unit, "recycle_instance" if done.recycle else "delete_instance", instance_id=instance_id)
    claims.announce(instance_id, done.pool_id, ev.KIND_RETURNED, session=unit)


def warm_statements(now: datetime) -> list[tuple[str, dict[str, Any]]]:
    """Each statement with parameters that match nothing, to prepare them at start-up (app.adb.warm)."""
    none = {"org_id": "", "instance_id": ""}
    return [
        (CLAIM_NAMED, {"org_id": "", "pool_name": "", "lease_id": "", "service_tag": "", "wished": None, "now": now}),
        (CLAIM_NAMED_MANY, {"org_id": "", "pool_name": "", "lease_ids": [], "service_tags": [], "wished": [], "k": 0,
                            "now": now}),
        (LATEST, none), (LATEST_LOCKED, none),
        (RETURN, {**none, "service_tag": "", "now": now}),
        (_EXTEND, {"expires_at": now, "id": ""}),
    ]
