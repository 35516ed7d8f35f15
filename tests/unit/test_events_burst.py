"""A burst's events as the applier needs them (app.domain.events.one_per_pool): leased and returned events
once per pool and kind, every other event as it is, in order."""
from __future__ import annotations

from app.domain.events import KIND_LEASED, KIND_RETURNED, POOL_ONLY, InstanceEvent, one_per_pool


def ev(instance: str, pool: str, kind: str, **kw) -> InstanceEvent:
    return InstanceEvent(instance_id=instance, pool_id=pool, kind=kind, **kw)


def test_leases_and_returns_go_once_per_pool_and_kind_in_order():
    burst = [ev("a", "p1", KIND_LEASED), ev("b", "p1", KIND_LEASED), ev("c", "p2", KIND_LEASED),
             ev("a", "p1", KIND_RETURNED), ev("d", "p1", KIND_LEASED), ev("e", "p1", KIND_RETURNED)]
    kept = one_per_pool(burst)
    assert [(e.instance_id, e.pool_id, e.kind) for e in kept] == [
        ("a", "p1", KIND_LEASED), ("c", "p2", KIND_LEASED), ("a", "p1", KIND_RETURNED)]


def test_every_other_event_is_kept_even_for_the_same_instance():
    burst = [ev("a", "p1", "state", state="provisioning", seq=1), ev("b", "p1", KIND_LEASED),
             ev("a", "p1", "state", state="running", seq=2), ev("c", "p1", KIND_LEASED),
             ev("a", "p1", "recycled"), ev("a", "p1", "recycled"), ev("a", "p1", "seen", epoch=3)]
    kept = one_per_pool(burst)
    assert kept == [e for e in burst if e.kind not in POOL_ONLY or e.instance_id == "b"]

