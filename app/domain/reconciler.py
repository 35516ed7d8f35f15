"""reconcile_pool: re-read a pool and its instances under the pool's row lock, let the pure planner and
autoscaler decide, persist the decisions, and defer the provider tasks until after commit."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from app.domain import autoscale, effects, instances as inst_domain, planner, quotas, rollout, rollouts
from app.domain.events import pool_channel
from app.domain.pools import bump_status
from app.domain.states import DesiredState, InstanceState as S, PoolPhase
from app.models import Instance, Lease, Pool, Runner, new_id, utcnow
from config.settings import get_settings

log = logging.getLogger(__name__)

CLAIM_RATE_WINDOW = timedelta(minutes=5)


def reconcile(pool_id: str, *, session: Session, now: datetime | None = None) -> planner.Plan | None:
    """One level-triggered pass over one pool. Returns the plan it applied (None if the pool is gone)."""
    now = now or utcnow()
    # The row lock is the per-pool lock: a duplicate reconcile waits here, then sees this one's result.
    # FOR NO KEY UPDATE, not FOR UPDATE: the foreign-key check of every lease made meanwhile (KEY SHARE on
    # the pool) must not queue behind a pass (a whole pass, at a thousand leases a second on the pool).
    pool = session.exec(select(Pool).where(Pool.id == pool_id).with_for_update(key_share=True)).first()
    if pool is None or pool.phase == PoolPhase.DELETED:
        return None
    # Only the columns the planner reads, as plain rows through the Core connection (no ORM result
    # processing: on a pool of thousands that was half the pass), and not the leased instances that change
    # nothing (planner.idle_lease): without reuse the planner neither counts nor kicks a leased instance
    # running as wanted, and on a pool leased at a high rate those pile up until their leases end.
    live = sa.and_(Instance.pool_id == pool.id, Instance.state != str(S.DELETED))
    if not pool.reuse:
        live = sa.and_(live, sa.not_(_IDLE_LEASED))
    stamps: list[Any] = [Instance.idle_since, Instance.ready_at, Instance.state_changed_at]
    if session.get_bind().dialect.name == "postgresql":  # its driver gives aware datetimes: no per-value conversion
        stamps = [sa.type_coerce(c, sa.DateTime(timezone=True)) for c in stamps]
    columns: list[Any] = [Instance.id, Instance.state, Instance.desired_state, Instance.lease_id, Instance.snapshot_id,
                          Instance.draining, *stamps]
    rows = session.connection().execute(sa.select(*columns).where(live)).all()
    views = [
        planner.InstanceView(iid, state, desired, lease_id is not None, snapshot_id, draining, idle_since, ready_at,
                             changed_at)
        for iid, state, desired, lease_id, snapshot_id, draining, idle_since, ready_at, changed_at in rows
    ]

    if pool.deleted_at is None:
        _autoscale(pool, now, session=session)
    policy = rollouts.policy_of(pool)
    limit = rollouts.reconcile_pass(pool, views, now, policy) if pool.deleted_at is None else None
    view = planner.PoolView(
        target=pool.desired_size, max_size=pool.max_size, stopped_size=pool.stopped_size, snapshot_id=pool.snapshot_id,
        surge=pool.rotation_max_surge, reuse=pool.reuse, deleting=pool.deleted_at is not None,
        max_unavailable=policy.max_unavailable if limit else 0,
        fresh_cap=limit.fresh_cap if limit else None,
        creation_allowed=pool.next_attempt_at is None or pool.next_attempt_at <= now,
        idle_recycle_reserved=pool.idle_recycle_reserved, idle_recycle_scaled=pool.idle_recycle_scaled,
        stuck_after=get_settings().engine.stuck_after_seconds,
    )
    plan = planner.plan(view, views, now)
    held_back = _within_quota(pool, plan, session=session)
    _apply(pool, plan, session=session)
    # A rotation under way is time-driven too (bake time, progress deadline): it stays flagged, so every
    # sweep gives it a pass even when no instance moves. So does a pool whose creations were held back (the
    # organization's quota, the per-pass cap, a creation backoff): its landings ask for the next pass each
    # (app.domain.observations._landing_asks), where an unflagged pool's ask only once nothing is in flight.
    held_back = (held_back or plan.create_running + plan.create_stopped >= planner.MAX_CREATES_PER_PASS
                 or (not view.creation_allowed and pool.ready_instances < pool.desired_size))
    pool.needs_reconcile = held_back or bool(limit and limit.state.get("stage") not in (None, rollout.COMPLETE))
    pool.reconciled_at = now
    if inst_domain.recount(pool, session=session):
        # Listeners (SSE /v1/events) hear of it as they do of the applier's recounts: the leases and returns
        # that asked for this pass moved the counters, and the applier leaves their recount to it.
        effects.defer(session, "notify", channel=pool_channel(pool.organization_id, pool.id), message=pool.phase)
    session.add(pool)
    return plan


_IDLE_LEASED = sa.and_(Instance.lease_id.is_not(None), Instance.state == str(S.RUNNING),
                       Instance.desired_state == str(DesiredState.RUNNING))
"""planner.idle_lease in SQL: a leased instance running as wanted."""


def _within_quota(pool: Pool, plan: planner.Plan, *, session: Session) -> bool:
    """Trim the plan's creations to the organization's instance quota (surges, cold leases and a lowered
    quota can otherwise take it past max_instances) and to its share of creations in flight (each
    landing asks for the next pass, so a big pool fills at a steady pace and another tenant's backfill
    queues behind a few of its provider calls, not hundreds); running instances come first. True if it
    trimmed anything."""
    wanted = plan.create_running + plan.create_stopped
    if not wanted:
        return False
    room = quotas.instance_room(pool.organization_id, session=session)
    if wanted > room:
        log.warning("pool %s: %d instances wanted, %d allowed by the organization's max_instances quota",
                    pool.id, wanted, room)
    room = min(room, quotas.creation_room(pool.organization_id, session=session))
    plan.create_running = min(plan.create_running, room)
    plan.create_stopped = min(plan.create_stopped, room - plan.create_running)
    return wanted > room


def _apply(pool: Pool, plan: planner.Plan, *, session: Session) -> None:
    provider = ""
    if pool.runner_id:
        runner = session.get(Runner, pool.runner_id)
        provider = runner.provider if runner else ""
    made = _insert_instances(pool, provider, plan, session=session)
    if made:  # one effect for the pass: the dispatcher sends them in batches (batched provider calls)
        effects.defer(session, "provision_instances", instance_ids=made)
    for instance_id in plan.start:
        if inst_domain.set_desired(instance_id, DesiredState.RUNNING, expect=DesiredState.STOPPED, session=session):
            effects.defer(session, "start_instance", instance_id=instance_id)
    for instance_id in plan.stop:
        # Draining keeps the claim away while it stops; the applier clears it once stopped.
        if inst_domain.set_desired(instance_id, DesiredState.STOPPED, expect=DesiredState.RUNNING, drain=True, session=session):
            effects.defer(session, "stop_instance", instance_id=instance_id)
    for instance_id in plan.delete:
        if inst_domain.set_desired(instance_id, DesiredState.DELETED, drain=True, session=session):
            effects.defer(session, "delete_instance", instance_id=instance_id)
    for instance_id, task in plan.kick:
        effects.defer(session, task, instance_id=instance_id)


def _insert_instances(pool: Pool, provider: str, plan: planner.Plan, *, session: Session) -> list[str]:
    """The plan's new `requested` rows, a thousand to an INSERT; returns their ids. One model object gives
    every column its default and the rows copy it with their own id: building a model object per row cost
    more than the INSERT (a pass may make thousands)."""
    rows: list[dict] = []
    for desired, count in ((DesiredState.RUNNING, plan.create_running), (DesiredState.STOPPED, plan.create_stopped)):
        if not count:
            continue
        proto = Instance(pool_id=pool.id, organization_id=pool.organization_id, provider=provider,
                         snapshot_id=pool.snapshot_id, desired_state=str(desired),
                         zone=str(pool.template.get("zone", "")))
        base = {c.key: getattr(proto, c.key) for c in Instance.__table__.columns}
        rows.extend({**base, "id": new_id()} for _ in range(count))
    if rows:
        # RETURNING makes SQLAlchemy send multi-row INSERTs (insertmanyvalues, pages of 1,000) where a plain
        # executemany ran one INSERT per row in the server: 3,300 statements in a 3 s pass-heavy stretch.
        session.execute(sa.insert(Instance).returning(Instance.id), rows).all()
    return [r["id"] for r in rows]


def _autoscale(pool: Pool, now: datetime, *, session: Session) -> None:
    claims = session.execute(
        sa.select(sa.func.count()).select_from(Lease)
        .where(Lease.pool_id == pool.id, Lease.created_at >= now - CLAIM_RATE_WINDOW)
    ).scalar_one()
    state = dict(pool.autoscale or {})
    changed_at = datetime.fromisoformat(state["changed_at"]) if state.get("changed_at") else None
    decision = autoscale.decide(
        pool.desired_size, changed_at, now, min_size=pool.min_size, max_size=pool.max_size,
        claims_per_second=claims / CLAIM_RATE_WINDOW.total_seconds(),
        refill_seconds=pool.refill_seconds, headroom=float(state.get("headroom", 0.5)),
        cooldown=float(state.get("cooldown", 60.0)),
    )
    if decision.target != pool.desired_size:
        log.info("pool %s: running target %d -> %d", pool.id, pool.desired_size, decision.target)
        pool.desired_size = decision.target
        state["changed_at"] = decision.changed_at.isoformat()
        pool.autoscale = state
        bump_status(pool)
