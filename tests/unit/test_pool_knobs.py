"""The native pool API's knob rules (app.domain.pool_admin.check_knobs, check_name), without a database."""
from __future__ import annotations

import pytest

from app.domain import pool_admin
from app.domain.errors import InvalidArgument
from app.models import Pool


@pytest.mark.parametrize("changes,needle", [
    ({"stopped_size": -1}, "stopped_size must be a whole number from 0"),
    ({"stopped_size": 2.5}, "whole number"),
    ({"stopped_size": True}, "whole number"),
    ({"lease_default_seconds": 0}, "lease_default_seconds"),
    ({"idle_recycle_scaled": -2}, "idle_recycle_scaled"),
    ({"autoscale_headroom": 101.0}, "autoscale_headroom must be a number from 0 to 100"),
    ({"autoscale_cooldown_seconds": "60"}, "autoscale_cooldown_seconds"),
    ({"empty_policy": "panic"}, "reserve, reject, cold"),
    ({"lease_default_seconds": 600, "lease_max_seconds": 60}, "must be <= lease_max_seconds (60)"),
])
def test_bad_knobs_are_refused_saying_what_is_allowed(changes, needle):
    with pytest.raises(InvalidArgument) as exc:
        pool_admin.check_knobs(changes)
    assert needle in exc.value.message


def test_the_lease_default_is_checked_against_the_pools_other_value():
    pool = Pool(organization_id="o", name="p", lease_default_seconds=1800, lease_max_seconds=86400)
    pool_admin.check_knobs({"lease_max_seconds": 1800}, pool)
    with pytest.raises(InvalidArgument, match="1800.*<= lease_max_seconds \\(600\\)"):
        pool_admin.check_knobs({"lease_max_seconds": 600}, pool)
    pool_admin.check_knobs({"autoscale_headroom": 1, "autoscale_cooldown_seconds": 0.5, "idle_recycle_reserved": -1,
                            "empty_policy": "cold"}, pool)


@pytest.mark.parametrize("name", ["ci", "ci.linux-x64_2", "A", "a" * 63])
def test_good_names(name):
    assert pool_admin.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-ci", ".ci", "c i", "ci/../x", "a" * 64, "ci\n", "ç"])
def test_bad_names(name):
    with pytest.raises(InvalidArgument, match="lease service"):
        pool_admin.check_name(name)
