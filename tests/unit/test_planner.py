"""The planner's invariants, by example and by property (hypothesis)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings, strategies as st

from app.domain.planner import InstanceView, Plan, PoolView, plan

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RECENT = NOW - timedelta(seconds=1)


def inst(i: int, state: str = "running", desired: str | None = None, *, leased: bool = False, snap: str | None = "s1",
         idle: float = 0.0, changed: datetime = RECENT) -> InstanceView:
    return InstanceView(id=f"i{i:03d}", state=state, desired_state=desired or ("stopped" if state == "stopped" else "running"),
                        leased=leased, snapshot_id=snap, idle_since=NOW - timedelta(seconds=idle) if state == "running" else None,
                        ready_at=NOW - timedelta(seconds=idle), state_changed_at=changed)


def pool(**kw) -> PoolView:
    base = dict(target=3, max_size=5, stopped_size=0, snapshot_id="s1", surge=2, idle_recycle_scaled=-1)
    base.update(kw)
    return PoolView(**base)


def test_empty_pool_provisions_the_target():
    assert plan(pool(), [], NOW).create_running == 3


def test_in_flight_instances_count_so_nothing_is_created_twice():
    p = plan(pool(), [inst(1, "requested"), inst(2, "provisioning"), inst(3, "running")], NOW)
    assert p.empty


def test_stopped_tier_is_started_before_anything_is_provisioned():
    p = plan(pool(target=3, stopped_size=2), [inst(1), inst(2, "stopped"), inst(3, "stopped")], NOW)
    assert sorted(p.start) == ["i002", "i003"]
    assert p.create_running == 0
    assert p.create_stopped == 2  # the tier is refilled behind the starts


def test_taken_instances_are_replaced_at_once_without_reuse_and_count_with_reuse():
    instances = [inst(1, leased=True), inst(2), inst(3)]
    assert plan(pool(reuse=False), instances, NOW).create_running == 1
    assert plan(pool(reuse=True), instances, NOW).empty


def test_never_above_max_size():
    p = plan(pool(target=10, max_size=4), [inst(1)], NOW)
    assert p.create_running == 3


def test_above_max_size_is_removed_at_once_but_soft_excess_waits_for_idle():
    instances = [inst(i, idle=10) for i in range(6)]
    p = plan(pool(target=3, max_size=5, idle_recycle_scaled=-1), instances, NOW)
    assert len(p.delete) == 1  # only what exceeds max_size
    p = plan(pool(target=3, max_size=6, idle_recycle_scaled=60), instances, NOW)
    assert p.empty  # idle 10 s < 60 s
    p = plan(pool(target=3, max_size=6, idle_recycle_scaled=5), instances, NOW)
    assert len(p.delete) == 3


def test_soft_excess_goes_to_the_stopped_tier_when_it_has_room():
    instances = [inst(i, idle=100) for i in range(4)]
    p = plan(pool(target=3, stopped_size=1, idle_recycle_scaled=10), instances, NOW)
    assert len(p.stop) == 1 and not p.delete and p.create_stopped == 0


def test_rotation_surges_first_and_keeps_ready_capacity():
    stale = [inst(i, snap="old") for i in range(3)]
    p = plan(pool(target=3, max_size=3, surge=2), stale, NOW)
    assert p.create_running == 2 and p.delete == []  # surge: new ones before any old one goes
    two_new_ready = stale + [inst(10), inst(11)]
    p = plan(pool(target=3, max_size=3, surge=2), two_new_ready, NOW)
    assert len(p.delete) == 2 and p.create_running == 0  # 5 ready -> 3 ready, never below target
    one_stale_left = [inst(2, snap="old"), inst(10), inst(11)]
    p = plan(pool(target=3, max_size=3, surge=2), one_stale_left, NOW)
    assert p.create_running == 1 and p.delete == []
    p = plan(pool(target=3, max_size=3, surge=2), one_stale_left + [inst(12)], NOW)
    assert p.delete == ["i002"]


def test_leased_instances_keep_their_snapshot():
    p = plan(pool(target=1), [inst(1, snap="old", leased=True), inst(2)], NOW)
    assert "i001" not in p.delete


def test_deleting_pool_deletes_every_free_instance_and_waits_for_leased_ones():
    p = plan(pool(deleting=True), [inst(1), inst(2, "stopped"), inst(3, leased=True), inst(4, "requested")], NOW)
    assert sorted(p.delete) == ["i001", "i002", "i004"] and p.create_running == 0


def test_failed_instances_are_deleted_and_replaced():
    p = plan(pool(target=2), [inst(1), inst(2, "failed")], NOW)
    assert p.delete == ["i002"] and p.create_running == 1


def test_backoff_stops_creation_but_not_starts():
    p = plan(pool(target=2, stopped_size=1, creation_allowed=False), [inst(1, "stopped")], NOW)
    assert p.start == ["i001"] and p.create_running == 0 and p.create_stopped == 0


def test_stuck_instances_are_kicked_again():
    old = NOW - timedelta(seconds=120)
    p = plan(pool(target=2, stuck_after=30), [inst(1, "requested", changed=old), inst(2, "stopped", "running", changed=old)], NOW)
    assert ("i001", "provision_instance") in p.kick and ("i002", "start_instance") in p.kick


def test_a_reuse_instance_whose_reset_was_not_seen_is_reset_again():
    from dataclasses import replace

    old = NOW - timedelta(seconds=120)
    recycling = replace(inst(1, changed=old), draining=True)
    fresh = replace(inst(2, changed=NOW), draining=True)
    p = plan(pool(target=2, stuck_after=30, reuse=True), [recycling, fresh], NOW)
    assert ("i001", "recycle_instance") in p.kick and ("i002", "recycle_instance") not in p.kick


def test_base_instance_idle_past_reserved_is_recycled_like_a_stale_one():
    p = plan(pool(target=1, max_size=1, surge=1, idle_recycle_reserved=60), [inst(1, idle=120)], NOW)
    assert p.create_running == 1 and p.delete == []


# ---- properties ------------------------------------------------------------------------------

STATES = ["requested", "provisioning", "stopped", "starting", "running", "stopping", "failed"]


@st.composite
def worlds(draw):
    max_size = draw(st.integers(1, 8))
    view = PoolView(
        target=draw(st.integers(0, max_size)), max_size=max_size, stopped_size=draw(st.integers(0, 3)),
        snapshot_id=draw(st.sampled_from(["s1", "s2"])), surge=draw(st.integers(0, 3)), reuse=draw(st.booleans()),
        creation_allowed=draw(st.booleans()), idle_recycle_scaled=draw(st.sampled_from([-1, 0, 30])),
    )
    n = draw(st.integers(0, 14))
    instances = []
    for i in range(n):
        state = draw(st.sampled_from(STATES))
        desired = "stopped" if state in ("stopped", "stopping") and draw(st.booleans()) else "running"
        instances.append(inst(i, state, desired, leased=state == "running" and draw(st.booleans()),
                              snap=draw(st.sampled_from(["s1", "s2"])), idle=draw(st.sampled_from([0, 10, 100]))))
    return view, instances


def _ready(view: PoolView, instances: list[InstanceView], p: Plan) -> int:
    gone = set(p.delete) | set(p.stop)
    return sum(1 for i in instances if i.state == "running" and not i.leased and i.desired_state == "running" and i.id not in gone)


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_properties(world):
    view, instances = world
    p = plan(view, instances, NOW)
    by_id = {i.id: i for i in instances}
    touched = set(p.delete) | set(p.stop) | set(p.start)
    # Leased instances are never touched (a deleting pool waits for them too).
    assert not any(by_id[i].leased for i in touched)
    # Never above max_size (+ surge only while stale instances remain) on the running side.
    live = [i for i in instances if i.state != "failed" and i.id not in p.delete]
    running_side = [i for i in live if not i.leased and i.desired_state == "running" and i.id not in p.stop]
    counted = sum(1 for i in live if i.leased) if view.reuse else 0
    stale = any(i.snapshot_id != view.snapshot_id for i in running_side)
    assert len(running_side) + len(p.start) + p.create_running + counted <= max(
        view.max_size + (view.surge if stale else 0), len(running_side) + counted + len(p.start))
    assert p.create_running == 0 or len(running_side) + len(p.start) + counted <= view.max_size + view.surge
    # Creation is suppressed while backing off.
    if not view.creation_allowed:
        assert p.create_running == 0 and p.create_stopped == 0
    # Starts come before creates: nothing is provisioned while a fresh stopped instance sits idle.
    fresh_stopped = [i for i in instances if not i.leased and i.desired_state == "stopped" and i.state != "failed"
                     and i.snapshot_id == view.snapshot_id and i.id not in p.start and i.id not in p.delete]
    if p.create_running:
        assert not fresh_stopped
    # Rotation and scale-down never drop ready capacity below what the target needs (if we had it).
    want = max(view.target - counted, 0)
    before = _ready(view, instances, Plan())
    assert _ready(view, instances, p) >= min(want, before, view.max_size - counted)
    # A second pass after applying this one asks for no more creations (in-flight instances count).
    applied = [i for i in instances if i.id not in p.delete]
    applied = [InstanceView(**{**i.__dict__, "desired_state": "running"}) if i.id in p.start else i for i in applied]
    applied += [inst(100 + k, "requested", snap=view.snapshot_id) for k in range(p.create_running)]
    applied += [inst(200 + k, "requested", "stopped", snap=view.snapshot_id) for k in range(p.create_stopped)]
    again = plan(view, applied, NOW)
    assert again.create_running == 0


def test_an_instance_that_should_run_but_is_observed_stopped_is_started_at_once():
    # Stopped behind our back a moment ago: no waiting for stuck_after.
    p = plan(pool(target=1, stuck_after=30), [inst(1, "stopped", "running", changed=NOW)], NOW)
    assert p.kick == [("i001", "start_instance")] and p.create_running == 0
