"""The reconciler leaves out of a pass the leased instances running as wanted on a pool without `reuse`
(planner.idle_lease): the planner must plan exactly the same without them, kicks of stuck instances included."""
from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings, strategies as st

from app.domain.planner import PoolView, idle_lease, plan
from tests.unit.test_planner import NOW, STATES, inst

LONG_AGO = NOW - timedelta(hours=1)


@st.composite
def worlds(draw):
    max_size = draw(st.integers(1, 8))
    view = PoolView(
        target=draw(st.integers(0, max_size)), max_size=max_size, stopped_size=draw(st.integers(0, 3)),
        snapshot_id=draw(st.sampled_from(["s1", "s2"])), surge=draw(st.integers(0, 3)), reuse=False,
        creation_allowed=draw(st.booleans()), idle_recycle_scaled=draw(st.sampled_from([-1, 0, 30])),
        idle_recycle_reserved=draw(st.sampled_from([-1, 60])), deleting=draw(st.booleans()),
        fresh_cap=draw(st.sampled_from([None, 0, 2])), max_unavailable=draw(st.integers(0, 2)),
    )
    instances = []
    for i in range(draw(st.integers(0, 14))):
        state = draw(st.sampled_from([*STATES, "deleting"]))
        desired = draw(st.sampled_from(["running", "stopped", "deleted"]))
        instances.append(inst(i, state, desired, leased=draw(st.booleans()), snap=draw(st.sampled_from(["s1", "s2"])),
                              idle=draw(st.sampled_from([0, 10, 100])), changed=draw(st.sampled_from([NOW, LONG_AGO]))))
    return view, instances


@settings(max_examples=500, deadline=None)
@given(worlds())
def test_a_pool_without_reuse_plans_the_same_without_its_idle_leased_instances(world):
    view, instances = world
    assert plan(view, instances, NOW) == plan(view, [i for i in instances if not idle_lease(i)], NOW)


def test_idle_lease_is_a_leased_instance_running_as_wanted_only():
    assert idle_lease(inst(1, "running", "running", leased=True))
    assert not idle_lease(inst(2, "running", "running"))
    assert not idle_lease(inst(3, "running", "deleted", leased=True))  # a kick may apply: read it
    assert not idle_lease(inst(4, "stopped", "running", leased=True))
