"""The event applier on real Redis and Postgres: compare-and-set, duplicates and stale events change
nothing, a dead consumer's entries are reclaimed, poison entries are dead-lettered."""
from __future__ import annotations

import time

import pytest

from app import events
from app.db import session_scope
from app.models import Instance, Pool
from tests.conftest import make_catalog, make_org
from workers.events import Applier


@pytest.fixture
def pool_with_instance(db, redis_client, effects_log):
    from app.domain import pools

    w = make_catalog(make_org())
    with session_scope() as s:
        pool = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=1, max_size=1, session=s)
        inst = Instance(pool_id=pool.id, organization_id=w.org_id, state="requested")
        s.add(inst)
    return pool.id, inst.id


def instance(instance_id: str) -> Instance:
    with session_scope() as s:
        return s.get(Instance, instance_id)


def send(client, pool_id, instance_id, state, seq, **kw) -> events.InstanceEvent:
    ev = events.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state=state, seq=seq, **kw)
    events.publish(ev, client=client)
    return ev


def test_applies_in_order_and_ignores_duplicates_and_stale(pool_with_instance, redis_client):
    pool_id, inst_id = pool_with_instance
    applier = Applier(client=redis_client, consumer="a")
    send(redis_client, pool_id, inst_id, "provisioning", 10)
    running = send(redis_client, pool_id, inst_id, "running", 20, address="10.0.0.9", boot_ms=42)
    assert applier.poll(block_ms=10) == 2
    i = instance(inst_id)
    assert (i.state, i.address, i.boot_ms, i.event_seq) == ("running", "10.0.0.9", 42, 20)
    events.publish(running, client=redis_client)  # the very same event again
    send(redis_client, pool_id, inst_id, "provisioning", 15)  # older than what was applied
    applier.poll(block_ms=10)
    assert instance(inst_id).state == "running" and instance(inst_id).event_seq == 20
    with session_scope() as s:
        p = s.get(Pool, pool_id)
        assert (p.phase, p.ready_instances) == ("ready", 1)


def test_out_of_order_arrival_skips_ahead_but_never_back(pool_with_instance, redis_client):
    pool_id, inst_id = pool_with_instance
    applier = Applier(client=redis_client, consumer="a")
    send(redis_client, pool_id, inst_id, "running", 30)  # provisioning's event is late
    send(redis_client, pool_id, inst_id, "provisioning", 10)
    send(redis_client, pool_id, inst_id, "deleted", 40)
    send(redis_client, pool_id, inst_id, "running", 50)  # deleted is terminal
    applier.poll(block_ms=10)
    assert instance(inst_id).state == "deleted"


def test_a_dead_consumers_entries_are_reclaimed(pool_with_instance, redis_client, monkeypatch):
    pool_id, inst_id = pool_with_instance
    monkeypatch.setenv("WARMPOOL_ENGINE__EVENTS_CLAIM_IDLE_MS", "50")
    from config.settings import get_settings

    get_settings.cache_clear()
    dead = Applier(client=redis_client, consumer="dead")
    send(redis_client, pool_id, inst_id, "provisioning", 10)
    s = get_settings().engine
    redis_client.xreadgroup(s.events_group, "dead", {s.events_stream: ">"}, count=10)  # read, then "crash"
    time.sleep(0.1)
    alive = Applier(client=redis_client, consumer="alive")
    assert alive.reclaim() == 1
    assert instance(inst_id).state == "provisioning"
    assert redis_client.xpending(s.events_stream, s.events_group)["pending"] == 0
    del dead


def test_poison_entries_are_dead_lettered_after_n_deliveries(pool_with_instance, redis_client, monkeypatch):
    pool_id, inst_id = pool_with_instance
    monkeypatch.setenv("WARMPOOL_ENGINE__EVENTS_CLAIM_IDLE_MS", "0")
    monkeypatch.setenv("WARMPOOL_ENGINE__EVENTS_MAX_DELIVERIES", "2")
    from app.domain import instances
    from config.settings import get_settings

    get_settings.cache_clear()

    def boom(*a, **k):
        raise RuntimeError("database says no")

    monkeypatch.setattr(instances, "apply_events", boom)
    monkeypatch.setattr(instances, "apply_events_free", boom)  # a batch's first unit of work
    applier = Applier(client=redis_client, consumer="a")
    send(redis_client, pool_id, inst_id, "provisioning", 10)
    assert applier.poll(block_ms=10) == 0
    for _ in range(4):
        applier.reclaim()
    s = get_settings().engine
    dead = redis_client.xrange(f"{s.events_stream}:dead")
    assert len(dead) == 1 and b"failed" in dead[0][1][b"reason"]
    assert redis_client.xpending(s.events_stream, s.events_group)["pending"] == 0
    assert instance(inst_id).state == "requested"  # nothing half-applied
