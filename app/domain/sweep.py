"""The reconcile sweep's choice: one set-based read of the live pools that need a pass, plus a bounded
backstop of pools not reconciled for a long while. Read-only; the sweep task enqueues the passes.

A pool is chosen when the planner (app.domain.planner), the autoscaler or the rollout would act on it,
judged from per-pool counts of its instances (one GROUP BY over `instances` joined to `pools`):
- it is flagged (`needs_reconcile`: a write asked for a pass; the reconciler keeps it set while a rollout,
  which is time-driven, is under way, and while creations are held back) or being deleted;
- one of its instances is failed, lags its desired state past `stuck_after` (the planner re-kicks it),
  or should run and is observed stopped; a free one is stale (another snapshot, or a base instance
  idle past `idle_recycle_reserved`);
- its free running side is short of the target and something can fill it (a stopped instance to start,
  or creation allowed and room under max_size), or above it and something is removable (an instance
  not yet running, one idle past `idle_recycle_scaled`, or more than max_size);
- its stopped tier is above its size, or below it with creation allowed and room;
- its running target is off `min_size`: the autoscaler may step it down. The sweep does not read the
  claim rate, so a pool scaled above its base gets a pass each sweep until it is back (its claims ask
  for passes anyway); a scale-up only follows claims, whose own passes make it.
The choice may take a pool the planner then leaves alone (a quota or the cooldown holds it back), never
the other way round: tests/unit/test_sweep_sqlite.py and tests/integration/test_sweep_choice.py hold it
to the planner. What the counts cannot see (a lost status recount, a bug) is covered by the backstop:
pools whose last pass is older than `backstop_after` get one, at most `backstop_limit` per sweep, the
oldest first. Every choice keeps the per-organization share (`per_org`), so one tenant's many pools
cannot fill a sweep.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col

from app.domain.states import DesiredState as D, InstanceState as S, PoolPhase
from app.models import Instance, Pool, UTCDateTime


def _older_than(ts: sa.ColumnElement, seconds: sa.ColumnElement, now: datetime, dialect: str) -> sa.ColumnElement:
    """`ts <= now - seconds` with `seconds` a column: per-row interval arithmetic differs by backend."""
    if dialect == "sqlite":  # timestamps are stored as ISO text; julianday() reads it
        return sa.func.julianday(ts) <= sa.func.julianday(sa.literal(now, UTCDateTime())) - seconds / 86400.0
    zero: sa.ColumnElement[int] = sa.literal_column("0")  # make_interval(years, months, weeks, days, hours, mins, secs)
    return ts <= sa.literal(now, UTCDateTime()) - sa.func.make_interval(zero, zero, zero, zero, zero, zero, seconds)


def _count(cond: sa.ColumnElement) -> sa.ColumnElement:
    return sa.func.count(sa.case((cond, 1)))


def choose(*, session: Session, now: datetime, limit: int, per_org: int, stuck_after: float,
           backstop_after: float, backstop_limit: int) -> list[str]:
    """Ids of the pools the sweep gives a pass: those that need one (flagged first, then the least
    recently reconciled), then the backstop's; at most `per_org` of one organization, `limit` in all."""
    stmt = statement(session.get_bind().dialect.name, now=now, limit=limit, per_org=per_org, stuck_after=stuck_after,
                     backstop_after=backstop_after, backstop_limit=backstop_limit)
    return list(session.execute(stmt).scalars().all())


def statement(dialect: str, *, now: datetime, limit: int, per_org: int, stuck_after: float, backstop_after: float,
              backstop_limit: int) -> sa.Select:
    """The query behind `choose` (bench/sweep.py --explain shows its plan)."""
    i, p = Instance, Pool
    live = sa.and_(i.desired_state != D.DELETED, i.state.not_in((S.DELETED, S.DELETING, S.FAILED)))
    free = i.lease_id.is_(None)
    running_side = sa.and_(live, free, i.desired_state == D.RUNNING)
    stopped_side = sa.and_(live, free, i.desired_state == D.STOPPED)
    draining = i.draining == sa.true()
    kick = sa.or_(  # planner._kicks
        sa.and_(i.desired_state == D.RUNNING, i.state == S.STOPPED),
        sa.and_(i.state_changed_at <= now - timedelta(seconds=stuck_after), sa.or_(
            i.desired_state == D.DELETED,
            i.state.in_((S.REQUESTED, S.PROVISIONING)),
            sa.and_(i.desired_state == D.RUNNING, i.state == S.STARTING),
            sa.and_(i.desired_state == D.STOPPED, i.state.in_((S.RUNNING, S.STOPPING))),
            sa.and_(draining, free, i.desired_state == D.RUNNING, i.state == S.RUNNING),
        )),
    )
    stale_snapshot = sa.and_(p.snapshot_id.is_not(None), p.snapshot_id != "",
                             sa.or_(i.snapshot_id.is_(None), i.snapshot_id != p.snapshot_id))
    idle_running = sa.and_(running_side, i.state == S.RUNNING)
    stale_idle = sa.and_(idle_running, p.idle_recycle_reserved > 0, i.idle_since.is_not(None),
                         _older_than(i.idle_since, p.idle_recycle_reserved, now, dialect))
    recyclable = sa.and_(idle_running, p.idle_recycle_scaled >= 0, sa.or_(
        p.idle_recycle_scaled == 0,
        sa.and_(i.idle_since.is_not(None), _older_than(i.idle_since, p.idle_recycle_scaled, now, dialect))))
    counts = (
        sa.select(
            i.pool_id.label("pool_id"),
            _count(sa.or_(kick, sa.and_(i.state == S.FAILED, i.desired_state != D.DELETED),
                          sa.and_(live, free, stale_snapshot), stale_idle)).label("urgent"),
            _count(running_side).label("running"),
            _count(sa.and_(running_side, i.state != S.RUNNING)).label("not_ready"),
            _count(recyclable).label("recyclable"),
            _count(stopped_side).label("stopped"),
            _count(sa.and_(live, i.lease_id.is_not(None))).label("leased"),
        )
        .select_from(i).join(p, p.id == i.pool_id)
        .where(i.state != S.DELETED, p.phase != PoolPhase.DELETED)
        .group_by(i.pool_id)
        .subquery("counts")
    )
    c = {name: sa.func.coalesce(counts.c[name], 0) for name in
         ("urgent", "running", "not_ready", "recyclable", "stopped", "leased")}
    counted_leased = sa.case((p.reuse == sa.true(), c["leased"]), else_=0)
    want = sa.case((p.desired_size > counted_leased, p.desired_size - counted_leased), else_=0)
    creation_allowed = sa.or_(col(p.next_attempt_at).is_(None), col(p.next_attempt_at) <= now)
    needs = sa.or_(
        p.needs_reconcile == sa.true(),
        p.deleted_at.is_not(None),
        c["urgent"] > 0,
        p.desired_size != p.min_size,  # the autoscaler may move it (see above)
        sa.and_(want > c["running"], sa.or_(  # short: start a stopped one, or create
            c["stopped"] > 0, sa.and_(creation_allowed, p.max_size - c["running"] - counted_leased > 0))),
        sa.and_(want < c["running"], sa.or_(  # over: something removable
            c["not_ready"] > 0, c["recyclable"] > 0, c["running"] + counted_leased > p.max_size)),
        c["stopped"] > p.stopped_size,
        sa.and_(c["stopped"] < p.stopped_size, creation_allowed,
                p.max_size + p.stopped_size - c["running"] - c["stopped"] - counted_leased > 0),
    )
    due = sa.or_(col(p.reconciled_at).is_(None), col(p.reconciled_at) <= now - timedelta(seconds=backstop_after))
    candidates = (
        sa.select(p.id, p.organization_id, p.needs_reconcile, p.reconciled_at, needs.label("needs"))
        .select_from(p).outerjoin(counts, counts.c.pool_id == p.id)
        .where(p.phase != PoolPhase.DELETED, sa.or_(needs, due))
        .subquery("candidates")
    )
    k = candidates.c
    order = (k.needs.desc(), k.needs_reconcile.desc(), k.reconciled_at.asc().nulls_first(), k.id)
    # The backstop's share first (oldest passes first), then each organization's.
    backstop_rank = sa.func.row_number().over(partition_by=k.needs, order_by=order).label("backstop_rank")
    bounded = sa.select(k, backstop_rank).subquery("bounded")
    b = bounded.c
    b_order = (b.needs.desc(), b.needs_reconcile.desc(), b.reconciled_at.asc().nulls_first(), b.id)
    org_rank = sa.func.row_number().over(partition_by=b.organization_id, order_by=b_order).label("org_rank")
    shared = (sa.select(b.id, b.needs, b.needs_reconcile, b.reconciled_at, org_rank)
              .where(sa.or_(b.needs, b.backstop_rank <= backstop_limit)).subquery("shared"))
    s = shared.c
    return (sa.select(s.id).where(s.org_rank <= per_org)
            .order_by(s.needs.desc(), s.needs_reconcile.desc(), s.reconciled_at.asc().nulls_first(), s.id)
            .limit(limit))
