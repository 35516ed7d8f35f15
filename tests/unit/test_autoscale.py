"""The autoscaler: demand-following target inside [min, max], up at once, down slowly."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, strategies as st

from app.domain import autoscale

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_no_demand_means_min_size_and_fixed_pools_never_move():
    assert autoscale.wanted(2, 10, 0.0, 30.0) == 2
    assert autoscale.wanted(4, 4, 100.0, 30.0) == 4


def test_demand_times_refill_time_plus_headroom():
    # 0.2 claims/s x 10 s refill x 1.5 = 3 above the base of 1
    assert autoscale.wanted(1, 10, 0.2, 10.0, headroom=0.5) == 4
    assert autoscale.wanted(1, 3, 5.0, 10.0) == 3  # capped


def test_up_at_once_down_one_step_per_cooldown():
    d = autoscale.decide(1, None, T0, min_size=1, max_size=10, claims_per_second=1.0, refill_seconds=4.0, cooldown=60)
    assert d.target == 7
    calm = dict(min_size=1, max_size=10, claims_per_second=0.0, refill_seconds=4.0, cooldown=60)
    d2 = autoscale.decide(d.target, d.changed_at, T0 + timedelta(seconds=10), **calm)
    assert d2.target == 7  # inside the cooldown: stable
    d3 = autoscale.decide(d2.target, d2.changed_at, T0 + timedelta(seconds=61), **calm)
    assert d3.target == 6


@given(st.integers(0, 20), st.integers(0, 20), st.integers(0, 25), st.floats(0, 100), st.floats(0, 600))
def test_target_always_within_bounds(a, b, current, rate, refill):
    lo, hi = min(a, b), max(a, b)
    d = autoscale.decide(current, None, T0, min_size=lo, max_size=hi, claims_per_second=rate, refill_seconds=refill)
    assert lo <= d.target <= hi
