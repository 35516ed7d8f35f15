"""Rollout control with a controlled clock: canary and bake, operator go, pause, the progress deadline,
rollback, and what the planner does with the limit it is given."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from app.domain import rollout
from app.domain.planner import PoolView, plan
from app.domain.rollout import BAKING, CANARY, COMPLETE, ROLLING, Counts, Policy, step
from tests.unit.test_planner import inst

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def counts(stale: int, fresh_ready: int, fresh_live: int | None = None, want: int = 4) -> Counts:
    return Counts(want=want, stale_live=stale, fresh_ready=fresh_ready,
                  fresh_live=fresh_ready if fresh_live is None else fresh_live)


def test_a_pool_without_stale_instances_is_complete_and_unlimited():
    d = step(Policy(), None, snapshot_id="s1", counts=counts(0, 4), now=T0)
    assert d.state["stage"] == COMPLETE and d.fresh_cap is None and not d.stalled


def test_canary_caps_fresh_instances_then_bakes_then_rolls():
    p = Policy(canary=1, bake_seconds=30)
    d = step(p, {"snapshot": "s1", "stage": COMPLETE}, snapshot_id="s2", counts=counts(4, 0), now=at(0))
    assert d.state["stage"] == CANARY and d.fresh_cap == 1
    d = step(p, d.state, snapshot_id="s2", counts=counts(4, 1), now=at(5))
    assert d.state["stage"] == BAKING and d.fresh_cap == 1
    d = step(p, d.state, snapshot_id="s2", counts=counts(4, 1), now=at(34))
    assert d.state["stage"] == BAKING, "still baking: 29 s since the canary was ready"
    d = step(p, d.state, snapshot_id="s2", counts=counts(4, 1), now=at(35))
    assert d.state["stage"] == ROLLING and d.fresh_cap is None
    d = step(p, d.state, snapshot_id="s2", counts=counts(0, 4), now=at(40))
    assert d.state["stage"] == COMPLETE


def test_a_canary_without_bake_time_waits_for_the_operator_and_never_stalls_meanwhile():
    p = Policy(canary=2, bake_seconds=-1, progress_deadline_seconds=10)
    d = step(p, None, snapshot_id="s2", counts=counts(4, 0), now=at(0))
    d = step(p, d.state, snapshot_id="s2", counts=counts(4, 2), now=at(1))
    d = step(p, d.state, snapshot_id="s2", counts=counts(4, 2), now=at(3600))
    assert d.state["stage"] == BAKING and d.fresh_cap == 2 and not d.stalled
    d = step(p, rollout.resume(d.state, at(3601)), snapshot_id="s2", counts=counts(4, 2), now=at(3601))
    assert d.state["stage"] == ROLLING and d.fresh_cap is None


def test_no_progress_past_the_deadline_stalls_and_progress_clears_it():
    p = Policy(progress_deadline_seconds=60)
    d = step(p, None, snapshot_id="s2", counts=counts(4, 0), now=at(0))
    d = step(p, d.state, snapshot_id="s2", counts=counts(4, 0), now=at(59))
    assert not d.stalled
    d = step(p, d.state, snapshot_id="s2", counts=counts(4, 0), now=at(60))
    assert "made no progress for 60 s" in d.stalled and "s2" in d.stalled
    d = step(p, d.state, snapshot_id="s2", counts=counts(3, 1), now=at(61))
    assert not d.stalled, "a fresh instance ready is progress"
    d = step(p, d.state, snapshot_id="s2", counts=counts(3, 1), now=at(121))
    assert d.stalled
    d = step(p, d.state, snapshot_id="s2", counts=counts(2, 1), now=at(122))
    assert not d.stalled, "a stale instance gone is progress too"


def test_pause_freezes_the_fresh_count_and_the_deadline():
    p = Policy(progress_deadline_seconds=10)
    d = step(p, None, snapshot_id="s2", counts=counts(4, 0), now=at(0))
    d = step(p, rollout.pause(d.state), snapshot_id="s2", counts=counts(3, 1, fresh_live=2), now=at(1))
    assert d.fresh_cap == 2 and not d.stalled
    d = step(p, d.state, snapshot_id="s2", counts=counts(3, 1, fresh_live=2), now=at(500))
    assert d.fresh_cap == 2 and not d.stalled, "a paused rollout is not late"
    d = step(p, rollout.resume(d.state, at(501)), snapshot_id="s2", counts=counts(3, 1), now=at(501))
    assert d.fresh_cap is None and not d.stalled


def test_a_pause_before_the_snapshot_changes_holds_the_next_rotation():
    p = Policy()
    d = step(p, rollout.pause(None), snapshot_id="s1", counts=counts(0, 4), now=at(0))
    d = step(p, d.state, snapshot_id="s2", counts=counts(4, 0, fresh_live=0), now=at(1))
    assert d.fresh_cap == 0 and d.state["paused"]


def test_a_rollback_skips_the_canary():
    p = Policy(canary=1)
    d = step(p, None, snapshot_id="s2", counts=counts(4, 0), now=at(0))
    assert d.state["stage"] == CANARY
    back = rollout.rolled_back(d.state, "s1")
    d = step(p, back, snapshot_id="s1", counts=counts(1, 4), now=at(1))
    assert d.state["stage"] == ROLLING and d.fresh_cap is None


def test_policy_refuses_nonsense():
    with pytest.raises(ValidationError):
        Policy(max_unavailable=-1)
    with pytest.raises(ValidationError):
        Policy.model_validate({"canary": 1, "surprise": True})


# --- the planner under a limit ---------------------------------------------------------------------

def pool(**kw) -> PoolView:
    base = dict(target=4, max_size=4, snapshot_id="new", surge=1)
    base.update(kw)
    return PoolView(**base)


def test_canary_of_one_makes_one_fresh_instance_and_keeps_every_stale_one():
    stale = [inst(i, snap="old") for i in range(4)]
    p = plan(pool(fresh_cap=1), stale, T0)
    assert p.create_running == 1 and p.delete == []
    p = plan(pool(fresh_cap=1), stale + [inst(10, snap="new")], T0)
    assert p.create_running == 0 and len(p.delete) == 1, "the canary ready: one stale one goes, capacity stays 4"
    p = plan(pool(fresh_cap=1), stale[1:] + [inst(10, snap="new")], T0)
    assert p.empty, "baking: nothing moves"


def test_paused_at_zero_keeps_the_stale_pool_whole():
    stale = [inst(i, snap="old") for i in range(4)]
    assert plan(pool(fresh_cap=0), stale, T0).empty


def test_max_unavailable_lets_the_rotation_go_below_the_target_without_surge():
    stale = [inst(i, snap="old") for i in range(4)]
    p = plan(pool(surge=0, max_unavailable=0), stale, T0)
    assert p.empty, "no surge and nothing may be unavailable: stuck (the progress deadline reports it)"
    p = plan(pool(surge=0, max_unavailable=2), stale, T0)
    assert len(p.delete) == 2 and p.create_running == 0
    p = plan(pool(surge=0, max_unavailable=2), stale[2:], T0)
    assert p.create_running == 2 and p.delete == []


def test_held_instances_never_exceed_the_target():
    stale = [inst(i, snap="old") for i in range(6)]
    p = plan(pool(target=4, max_size=6, fresh_cap=0), stale, T0)
    assert p.create_running == 0
    # 6 stale ready, 4 held: 2 unheld and ready above the target go (ready capacity stays at 4)
    assert len(p.delete) == 2
