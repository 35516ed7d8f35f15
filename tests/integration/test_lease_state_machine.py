"""A hypothesis state machine over the lease domain on both backends: lease, return, extend, expire,
rotate and instance death, with the engine (the real reconciler and event applier, the provider's
events simulated) settling the pool between them. Invariants, checked in the database after every
step: one active lease per instance, no active lease on a lost instance, and once the engine has
settled (outside the windows where instances fail or boot) at least the target ready."""
from __future__ import annotations

import itertools
from datetime import timedelta

import sqlalchemy as sa
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from app import events as ev
from app.db import session_scope
from app.domain import instances, leases, pools, reconciler
from app.domain.errors import FailedPrecondition, ResourceExhausted
from app.domain.states import LOST, DesiredState as D, InstanceState as S, PoolKind
from app.models import Instance, Lease, Pool, utcnow

NAMES = itertools.count()
SEQ = itertools.count(1)


def next_state(state: str, desired: str) -> str | None:
    """What the simulated provider reports next for an instance, or None when it has nothing to say."""
    if desired == D.DELETED or state == S.FAILED:
        return None if state == S.DELETED else str(S.DELETED)
    if desired == D.RUNNING and state in (S.REQUESTED, S.PROVISIONING, S.STOPPED, S.STARTING):
        return str(S.RUNNING)
    if desired == D.STOPPED and state in (S.REQUESTED, S.PROVISIONING, S.RUNNING, S.STARTING, S.STOPPING):
        return str(S.STOPPED)
    return None


class LeaseMachine(RuleBasedStateMachine):
    org_id = ""

    @initialize(size=st.integers(1, 3), reuse=st.booleans())
    def make_pool(self, size: int, reuse: bool) -> None:
        self.now = utcnow()
        self.snapshots = itertools.count(2)
        with session_scope() as s:
            pool = pools.new_pool(self.org_id, kind=PoolKind.NAMED, name=f"sm-{next(NAMES)}", min_size=size,
                                  max_size=size + 2, reuse=reuse, empty_policy="reject", snapshot_id="snap-1",
                                  lease_default_seconds=60, lease_max_seconds=300)
            self.pool_id, self.name = pools.insert_pool(pool, session=s, conflict="exists").id, pool.name
        self.settle()

    # ---- the engine -------------------------------------------------------------------------

    def settle(self) -> None:
        """Reconcile and let every instance reach what the reconciler wants, until nothing moves."""
        for _ in range(20):
            with session_scope() as s:
                plan = reconciler.reconcile(self.pool_id, session=s, now=self.now)
            with session_scope() as s:
                rows = s.execute(sa.select(Instance.id, Instance.state, Instance.desired_state, Instance.draining,
                                           Instance.lease_id).where(Instance.pool_id == self.pool_id)).all()
                batch = [ev.InstanceEvent(instance_id=i, pool_id=self.pool_id, state=nxt, seq=next(SEQ))
                         for i, state, desired, _, _ in rows if (nxt := next_state(state, desired))]
                # A returned instance of a reuse pool is reset by its provider (operations.recycle).
                batch += [ev.InstanceEvent(instance_id=i, pool_id=self.pool_id, kind=ev.KIND_RECYCLED, seq=next(SEQ))
                          for i, state, desired, draining, lease_id in rows
                          if draining and lease_id is None and state == S.RUNNING and desired == D.RUNNING]
                instances.apply_events(batch, session=s, now=self.now)
            if not batch and (plan is None or plan.empty):
                self.settled = True
                return
        raise AssertionError("the engine did not settle in 20 passes")

    def step(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)
        self.settled = False

    # ---- what clients and the world do -----------------------------------------------------

    def active(self) -> list[tuple[str, str]]:
        with session_scope() as s:
            return [tuple(r) for r in s.execute(
                sa.select(Lease.instance_id, Lease.service_tag)
                .where(Lease.pool_id == self.pool_id, Lease.state == "active").order_by(Lease.id)).all()]

    @rule(tag=st.sampled_from(["a", "b"]))
    def lease(self, tag: str) -> None:
        self.step()
        try:
            with session_scope() as s:
                got = leases.lease(self.org_id, self.name, service_tag=tag, session=s, now=self.now)
        except ResourceExhausted:
            return
        assert isinstance(got, leases.LeaseView) and got.state == "active"

    @rule(data=st.data())
    def return_lease(self, data: st.DataObject) -> None:
        self.step()
        held = self.active()
        if not held:
            return
        instance_id, tag = data.draw(st.sampled_from(held))
        try:
            with session_scope() as s:
                leases.return_lease(self.org_id, instance_id, service_tag=tag, session=s, now=self.now)
        except FailedPrecondition:  # lapsed by the clock before the sweep ended it
            pass

    @rule(data=st.data(), seconds=st.integers(1, 400))
    def extend(self, data: st.DataObject, seconds: int) -> None:
        self.step()
        held = self.active()
        if not held:
            return
        instance_id, tag = data.draw(st.sampled_from(held))
        try:
            with session_scope() as s:
                got = leases.extend_to(self.org_id, instance_id, self.now + timedelta(seconds=seconds),
                                       service_tag=tag, session=s, now=self.now)
            assert got.expires_at > self.now
        except FailedPrecondition:
            pass

    @rule(seconds=st.integers(1, 400))
    def expire(self, seconds: int) -> None:
        self.step(seconds)
        with session_scope() as s:
            leases.expire_due(self.now, 100, session=s)

    @rule(rollback=st.booleans())
    def rotate(self, rollback: bool) -> None:
        self.step()
        with session_scope() as s:
            pool = s.get(Pool, self.pool_id)
            to = pool.previous_snapshot_id if rollback and pool.previous_snapshot_id else f"snap-{next(self.snapshots)}"
            pools.set_snapshot(pool, to, session=s)

    @rule(data=st.data())
    def instance_dies(self, data: st.DataObject) -> None:
        self.step()
        with session_scope() as s:
            alive = list(s.execute(sa.select(Instance.id).where(
                Instance.pool_id == self.pool_id, Instance.state.not_in([str(x) for x in LOST])).order_by(Instance.id)
            ).scalars())
        if not alive:
            return
        victim = data.draw(st.sampled_from(alive))
        with session_scope() as s:
            instances.apply_event(ev.InstanceEvent(instance_id=victim, pool_id=self.pool_id, state=str(S.FAILED),
                                                   seq=next(SEQ), message="crashed"), session=s, now=self.now)

    @rule()
    def engine(self) -> None:
        self.settle()

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def one_active_lease_per_instance_and_none_on_a_lost_one(self) -> None:
        with session_scope() as s:
            rows = s.execute(
                sa.select(Lease.id, Lease.instance_id, Instance.state, Instance.lease_id)
                .join(Instance, Instance.id == Lease.instance_id)
                .where(Lease.pool_id == self.pool_id, Lease.state == "active")
            ).all()
        assert len({r.instance_id for r in rows}) == len(rows), rows
        assert all(r.state not in LOST for r in rows), rows
        assert all(r.lease_id == r.id for r in rows), rows

    @invariant()
    def settled_pools_have_their_target_ready(self) -> None:
        if not getattr(self, "settled", False):
            return  # instances are booting or failed since the last engine pass: a failure window
        with session_scope() as s:
            pool = s.get(Pool, self.pool_id)
            ready = s.execute(sa.select(sa.func.count()).select_from(Instance)
                              .where(Instance.pool_id == self.pool_id, leases.READY)).scalar_one()
            leased = s.execute(sa.select(sa.func.count()).select_from(Instance).where(
                Instance.pool_id == self.pool_id, Instance.lease_id.is_not(None))).scalar_one()
        # A reuse pool counts its leased instances toward the target (they come back when returned).
        assert ready + (leased if pool.reuse else 0) >= pool.desired_size, (ready, leased, pool.desired_size)


def test_leases_keep_their_invariants_under_any_sequence(any_org):
    LeaseMachine.org_id = any_org.org_id
    run_state_machine_as_test(LeaseMachine, settings=settings(
        max_examples=12, stateful_step_count=15, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    ))
