"""Rollout control through the engine on real PostgreSQL and Redis (task bodies called in-process): a
canary that waits for the operator's go, a bad snapshot that stalls (DEGRADED, the old instances keep
serving and are the ones leased), rollback in one call, and pause."""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from app.db import session_scope
from app.domain import leases, pools, reconciler, rollouts
from app.domain.rollout import Policy
from app.models import Instance, Pool, utcnow
from tests.integration.test_reconciler import cloud, engine, get_pool, make_pool, world  # noqa: F401 (fixtures)


def by_snapshot(pool_id: str) -> dict[tuple[str | None, str], int]:
    with session_scope() as s:
        rows = s.execute(sa.select(Instance.snapshot_id, Instance.state, sa.func.count())
                         .where(Instance.pool_id == pool_id, Instance.state != "deleted")
                         .group_by(Instance.snapshot_id, Instance.state)).all()
    return {(snap, state): n for snap, state, n in rows}


def rotate(pool_id: str, snapshot_id: str) -> None:
    with session_scope() as s:
        pool = s.exec(sa.select(Pool).where(Pool.id == pool_id).with_for_update()).scalars().first()
        assert pools.set_snapshot(pool, snapshot_id, session=s)


def reconcile_at(pool_id: str, seconds_from_now: float) -> None:
    with session_scope() as s:
        reconciler.reconcile(pool_id, session=s, now=utcnow() + timedelta(seconds=seconds_from_now))


def test_canary_waits_for_the_operators_go_with_the_old_instances_serving(engine, world, cloud):
    pool_id = make_pool(world, min_size=3, max_size=3, snapshot_id="s1")
    engine.settle()
    org = get_pool(pool_id).organization_id
    with session_scope() as s:
        rollouts.set_policy(pool_id, org, Policy(canary=1, bake_seconds=-1, max_surge=1), session=s)
    rotate(pool_id, "s2")
    engine.settle()
    assert by_snapshot(pool_id) == {("s1", "running"): 2, ("s2", "running"): 1}
    with session_scope() as s:
        assert rollouts.get_status(pool_id, org, session=s)["stage"] == "baking"
    reconcile_at(pool_id, 3600)
    engine.settle()
    assert by_snapshot(pool_id) == {("s1", "running"): 2, ("s2", "running"): 1}, "no go yet: still one canary"

    with session_scope() as s:
        rollouts.resume(pool_id, org, session=s)
    engine.settle()
    assert by_snapshot(pool_id) == {("s2", "running"): 3}
    assert get_pool(pool_id).rollout_state["stage"] == "complete"


def test_a_bad_snapshot_stalls_degrades_keeps_the_old_ones_serving_and_rolls_back(engine, world, cloud):
    pool_id = make_pool(world, min_size=3, max_size=3, snapshot_id="good")
    engine.settle()
    org = get_pool(pool_id).organization_id
    with session_scope() as s:
        rollouts.set_policy(pool_id, org, Policy(progress_deadline_seconds=60), session=s)
    cloud.break_snapshot("bad")
    rotate(pool_id, "bad")
    engine.settle()
    pool = get_pool(pool_id)
    assert pool.consecutive_failures >= 1 and pool.next_attempt_at is not None, "a failed boot backs creation off"
    assert by_snapshot(pool_id).get(("good", "running")) == 3

    reconcile_at(pool_id, 61)
    pool = get_pool(pool_id)
    assert pool.phase == "degraded"
    assert "made no progress" in pool.rollout_state["stalled"] and pool.failure_message
    assert by_snapshot(pool_id).get(("good", "running")) == 3, "the old instances keep serving"

    with session_scope() as s:
        view = leases.lease(org, pool.name, session=s)
        leased = s.get(Instance, view.instance_id)
        assert leased.snapshot_id == "good"
        leases.return_lease(org, view.instance_id, session=s)

    with session_scope() as s:
        after = rollouts.rollback(pool_id, org, session=s)
    assert after["snapshot_id"] == "good" and after["previous_snapshot_id"] == "bad"
    engine.settle()
    pool = get_pool(pool_id)
    assert pool.phase == "ready" and pool.failure_message == ""
    assert pool.rollout_state["stage"] == "complete" and not pool.rollout_state["stalled"]
    assert {snap for snap, _ in by_snapshot(pool_id)} == {"good"}


def test_pause_holds_a_rotation_until_resumed(engine, world, cloud):
    pool_id = make_pool(world, min_size=2, max_size=2, snapshot_id="s1")
    engine.settle()
    org = get_pool(pool_id).organization_id
    with session_scope() as s:
        rollouts.pause(pool_id, org, session=s)
    rotate(pool_id, "s2")
    engine.settle()
    assert by_snapshot(pool_id) == {("s1", "running"): 2}
    reconcile_at(pool_id, 7 * 86400)
    assert get_pool(pool_id).phase == "ready", "a paused rotation is never late"
    with session_scope() as s:
        rollouts.resume(pool_id, org, session=s)
    engine.settle()
    assert by_snapshot(pool_id) == {("s2", "running"): 2}


def test_rollback_needs_a_previous_snapshot(engine, world):
    from app.domain.errors import FailedPrecondition

    pool_id = make_pool(world, min_size=1, max_size=1)
    org = get_pool(pool_id).organization_id
    with session_scope() as s:
        try:
            rollouts.rollback(pool_id, org, session=s)
        except FailedPrecondition as exc:
            assert "no previous snapshot" in str(exc)
        else:
            raise AssertionError("rollback without a previous snapshot succeeded")
