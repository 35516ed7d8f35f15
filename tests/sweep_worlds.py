"""Pools for the reconcile sweep's tests, on either backend: named cases (one per reason a pool needs a
pass, and converged ones that need none) and random near-converged pools; and the judge the sweep's
choice is held to, the reconciler itself (a pass in a transaction that is rolled back)."""
from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from app.domain import effects, quotas, reconciler, sweep
from app.models import Instance, Organization, Pool
from config.settings import get_settings

SNAP = "snap-2"
BACKSTOP = {"never-reconciled", "reconciled-long-ago"}  # converged, chosen only by the backstop


@dataclass
class World:
    org_id: str
    pools: list[Pool] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    expected: dict[str, bool] = field(default_factory=dict)  # pool name -> needs a pass (named cases)
    ids: dict[str, str] = field(default_factory=dict)  # pool id -> name

    def pool(self, name: str, now: datetime, *, running: int = 2, stopped: int = 0, expect: bool, **fields: Any) -> Pool:
        """A converged pool: `running` free running instances at its target (= min_size), `stopped`
        stopped ones filling its stopped tier, reconciled a moment ago, all on its snapshot."""
        values: dict[str, Any] = dict(
            organization_id=self.org_id, kind="named", name=name, min_size=running, max_size=running + 2,
            desired_size=running, stopped_size=stopped, snapshot_id=SNAP, needs_reconcile=False,
            reconciled_at=now - timedelta(seconds=20), phase="ready", idle_recycle_scaled=300,
            rollout_state={"snapshot": SNAP, "stage": "complete", "stalled": ""},
        )
        values.update(fields)
        p = Pool(**values)
        self.pools.append(p)
        self.ids[p.id] = name
        self.expected[name] = expect
        for _ in range(running):
            self.instance(p, now)
        for _ in range(stopped):
            self.instance(p, now, state="stopped", desired_state="stopped", idle_since=None)
        return p

    def instance(self, p: Pool, now: datetime, **fields: Any) -> Instance:
        values: dict[str, Any] = dict(
            pool_id=p.id, organization_id=self.org_id, provider="fake", state="running", desired_state="running",
            snapshot_id=p.snapshot_id, state_changed_at=now - timedelta(seconds=5), ready_at=now - timedelta(seconds=5),
            idle_since=now - timedelta(seconds=5),
        )
        values.update(fields)
        i = Instance(**values)
        self.instances.append(i)
        return i


def organization(session: Session) -> str:
    """An organization whose quotas never trim a pass (the judge then sees what the planner wants)."""
    org = Organization(name=f"sweep-{uuid.uuid4().hex[:8]}")
    session.add(org)
    session.flush()
    quotas.set_quota(org.id, max_pools=100000, max_instances=1000000, max_creating=1000000, session=session)
    return org.id


def named(org_id: str, now: datetime) -> World:
    """One pool per reason the sweep must take a pool, and converged ones it must leave alone."""
    w = World(org_id)
    old = now - timedelta(seconds=get_settings().engine.stuck_after_seconds + 60)
    w.pool("converged", now, expect=False)
    w.pool("converged-empty", now, running=0, expect=False)
    w.pool("converged-stopped-tier", now, stopped=2, expect=False)
    p = w.pool("converged-reuse-leased", now, running=1, reuse=True, min_size=2, desired_size=2, expect=False)
    w.instance(p, now, lease_id=str(uuid.uuid4()), idle_since=None)
    p = w.pool("converged-leased-not-reuse", now, expect=False)
    w.instance(p, now, lease_id=str(uuid.uuid4()), idle_since=None)
    p = w.pool("converged-booting", now, running=1, min_size=2, desired_size=2, expect=False)
    w.instance(p, now, state="provisioning", ready_at=None, idle_since=None)  # in flight, not yet stuck
    p = w.pool("converged-excess-not-idle-long", now, min_size=1, desired_size=1, expect=False)
    p = w.pool("converged-at-max-in-backoff", now, running=1, min_size=2, desired_size=2,
               next_attempt_at=now + timedelta(minutes=5), expect=False)  # short, but creation waits
    w.pool("flagged", now, needs_reconcile=True, expect=True)
    w.pool("mid-rollout", now, needs_reconcile=True, expect=True,
           rollout_state={"snapshot": SNAP, "stage": "baking", "stalled": ""})
    w.pool("deleting", now, deleted_at=now - timedelta(seconds=30), phase="deleting", expect=True)
    w.pool("short", now, running=1, min_size=2, desired_size=2, expect=True)
    w.pool("short-after-backoff", now, running=1, min_size=2, desired_size=2,
           next_attempt_at=now - timedelta(seconds=1), expect=True)
    w.pool("short-with-stopped-to-start", now, running=1, stopped=1, min_size=2, desired_size=2,
           next_attempt_at=now + timedelta(minutes=5), expect=True)
    w.pool("empty-with-target", now, running=0, min_size=1, desired_size=1, max_size=1, expect=True)
    p = w.pool("short-a-lease-taken", now, expect=True)
    p_inst = w.instances[-1]
    p_inst.lease_id = str(uuid.uuid4())
    p = w.pool("over-not-ready", now, min_size=1, desired_size=1, expect=True)
    w.instances[-1].state = "starting"
    p = w.pool("over-idle", now, min_size=1, desired_size=1, idle_recycle_scaled=60, expect=True)
    w.instances[-1].idle_since = now - timedelta(seconds=120)
    w.pool("over-max", now, running=3, min_size=2, desired_size=2, max_size=2, expect=True)
    w.pool("autoscaled-above-min", now, min_size=1, desired_size=2, idle_recycle_scaled=-1, expect=True)
    p = w.pool("failed-instance", now, expect=True)
    w.instance(p, now, state="failed", desired_state="running")
    p = w.pool("stuck-provisioning", now, running=1, min_size=2, desired_size=2, expect=True)
    w.instance(p, now, state="provisioning", state_changed_at=old, ready_at=None, idle_since=None)
    p = w.pool("stuck-delete", now, expect=True)
    w.instance(p, now, state="running", desired_state="deleted", state_changed_at=old, draining=True)
    p = w.pool("stuck-stop", now, stopped=1, expect=True)
    w.instances[-1].state, w.instances[-1].state_changed_at = "running", old
    p = w.pool("should-run-is-stopped", now, expect=True)
    w.instances[-1].state = "stopped"
    p = w.pool("returned-not-reset", now, expect=True, reuse=True)
    w.instances[-1].draining, w.instances[-1].state_changed_at = True, old
    p = w.pool("stale-snapshot", now, expect=True)
    w.instances[-1].snapshot_id = "snap-1"
    p = w.pool("stale-stopped-tier", now, stopped=1, expect=True)
    w.instances[-1].snapshot_id = "snap-1"
    p = w.pool("stale-idle-reserved", now, idle_recycle_reserved=600, expect=True)
    w.instances[-1].idle_since = now - timedelta(seconds=700)
    w.pool("stopped-tier-short", now, stopped=2, expect=True)
    w.instances.pop()
    p = w.pool("stopped-tier-over", now, stopped=1, expect=True)
    w.instance(p, now, state="stopped", desired_state="stopped", idle_since=None)
    w.pool("never-reconciled", now, reconciled_at=None, expect=True)  # the backstop's, oldest first
    w.pool("reconciled-long-ago", now, reconciled_at=now - timedelta(hours=2), expect=True)
    return w


def random_world(org_id: str, now: datetime, n: int, seed: int) -> World:
    """`n` converged pools of random shapes, most with a few random changes on top."""
    rng = random.Random(seed)
    w = World(org_id)
    states = ["requested", "provisioning", "stopped", "starting", "running", "stopping", "deleting", "failed", "deleted"]
    for k in range(n):
        running, stopped = rng.randint(0, 3), rng.choice([0, 0, 1, 2])
        p = w.pool(f"r{k}", now, running=running, stopped=stopped, expect=False, reuse=rng.random() < 0.3,
                   max_size=running + rng.randint(0, 2), idle_recycle_scaled=rng.choice([-1, 0, 60, 300]),
                   idle_recycle_reserved=rng.choice([-1, -1, 600]),
                   next_attempt_at=rng.choice([None, None, now - timedelta(seconds=5), now + timedelta(minutes=1)]))
        mine = [i for i in w.instances if i.pool_id == p.id]
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            change = rng.randrange(12)
            target = rng.choice(mine) if mine else None
            if change == 0 or target is None:
                mine.append(w.instance(p, now, state=rng.choice(states), desired_state=rng.choice(["running", "stopped", "deleted"]),
                                       state_changed_at=now - timedelta(seconds=rng.choice([1, 29, 31, 4000]))))
            elif change == 1:
                w.instances.remove(target)
                mine.remove(target)
            elif change == 2:
                target.state = rng.choice(states)
            elif change == 3:
                target.desired_state = rng.choice(["running", "stopped", "deleted"])
            elif change == 4:
                target.lease_id = str(uuid.uuid4())
            elif change == 5:
                target.snapshot_id = rng.choice(["snap-1", None])
            elif change == 6:
                target.idle_since = now - timedelta(seconds=rng.choice([1, 59, 61, 299, 301, 599, 601, 5000]))
            elif change == 7:
                target.state_changed_at = now - timedelta(seconds=rng.choice([1, 29, 31, 4000]))
            elif change == 8:
                target.draining = True
            elif change == 9:
                p.desired_size = max(p.desired_size + rng.choice([-1, 1]), 0)
            elif change == 10:
                p.stopped_size = max(p.stopped_size + rng.choice([-1, 1]), 0)
            else:
                p.max_size = max(p.max_size + rng.choice([-1, 1]), p.min_size)
    return w


def insert(world: World, session: Session) -> None:
    session.execute(sa.insert(Pool), [p.model_dump() for p in world.pools])
    if world.instances:
        session.execute(sa.insert(Instance), [i.model_dump() for i in world.instances])


def choose(session: Session, now: datetime, **overrides: Any) -> list[str]:
    args: dict[str, Any] = dict(limit=100000, per_org=100000, stuck_after=get_settings().engine.stuck_after_seconds,
                                backstop_after=600.0,
                                backstop_limit=100000)
    args.update(overrides)
    return sweep.choose(session=session, now=now, **args)


def acts(session: Session, pool_id: str, now: datetime) -> bool:
    """Whether a reconcile pass over the pool now would change anything but its status counters: plan
    provider work, move its running target or its rollout. Rolled back: the judge changes nothing."""
    try:
        before = session.get(Pool, pool_id)
        assert before is not None
        target, rollout_state = before.desired_size, dict(before.rollout_state or {})
        plan = reconciler.reconcile(pool_id, session=session, now=now)
        after = session.get(Pool, pool_id)
        assert plan is not None and after is not None
        return not plan.empty or after.desired_size != target or dict(after.rollout_state or {}) != rollout_state
    finally:
        session.rollback()
        effects.take(session)
