"""Every reconciler on real Postgres and Redis, task bodies called directly: run twice, row deleted
mid-flight, duplicate enqueue, leaked resource, transient error retried, permanent error fails."""
from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa
from sqlmodel import select

from app.db import session_scope
from app.domain import leases, pools, prebuilds, reconciler
from app.models import Instance, Pool
from tests.conftest import World, make_catalog, make_org
from tests.engine_harness import InlineEngine
from workers import operations, provisioning
from workers.providers.fake import FakeCloud
from workers.providers.registry import clear_cache

FAST = {"boot_ms": 0, "start_ms": 0, "stop_ms": 0, "delete_ms": 0, "snapshot_ms": 0}


@pytest.fixture
def engine(db, redis_client, monkeypatch):
    monkeypatch.setenv("WARMPOOL_ENGINE__BACKOFF_BASE_SECONDS", "0.01")
    from config.settings import get_settings

    get_settings.cache_clear()
    clear_cache()
    eng = InlineEngine(redis_client)
    yield eng
    eng.close()
    clear_cache()


@pytest.fixture
def world(engine) -> World:
    w = make_catalog(make_org())
    with session_scope() as s:
        from app.models import Runner

        runner = s.get(Runner, w.runner_id)
        runner.settings = dict(FAST, namespace=f"t-{uuid.uuid4().hex[:8]}")
    return w


@pytest.fixture
def cloud(world, redis_client) -> FakeCloud:
    with session_scope() as s:
        from app.models import Runner

        ns = s.get(Runner, world.runner_id).settings["namespace"]
    return FakeCloud(redis_client, ns)


def make_pool(w: World, min_size: int = 3, max_size: int = 3, **spec) -> str:
    with session_scope() as s:
        pool = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=min_size, max_size=max_size, session=s)
        for k, v in spec.items():
            setattr(pool, k, v)
    return pool.id


def states(pool_id: str) -> dict[str, int]:
    with session_scope() as s:
        rows = s.execute(sa.select(Instance.state, sa.func.count()).where(Instance.pool_id == pool_id)
                         .group_by(Instance.state)).all()
    return {state: n for state, n in rows}


def get_pool(pool_id: str) -> Pool:
    with session_scope() as s:
        return s.get(Pool, pool_id)


def test_pool_fills_and_a_second_reconcile_does_nothing(engine, world, cloud):
    pool_id = make_pool(world)
    engine.settle()
    assert states(pool_id) == {"running": 3}
    p = get_pool(pool_id)
    assert (p.phase, p.ready_instances, p.desired_size) == ("ready", 3, 3)
    with session_scope() as s:
        plan = reconciler.reconcile(pool_id, session=s)
    assert plan is not None and plan.empty
    assert len(cloud.all()) == 3


def test_duplicate_enqueue_creates_nothing_twice(engine, world):
    pool_id = make_pool(world, 4, 4)
    engine.queue.clear()
    barrier = threading.Barrier(4)

    def reconcile():
        barrier.wait()
        with session_scope() as s:
            reconciler.reconcile(pool_id, session=s)

    threads = [threading.Thread(target=reconcile) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    with session_scope() as s:
        assert s.execute(sa.select(sa.func.count()).where(Instance.pool_id == pool_id)).scalar_one() == 4
    engine.settle()
    assert states(pool_id) == {"running": 4}


def test_row_deleted_mid_flight(engine, world, cloud):
    pool_id = make_pool(world, 1, 1)
    engine.run(*engine.queue.popleft())  # reconcile: one requested instance, provision queued
    name, payload = engine.queue.popleft()
    assert name == "provision_instances" and len(payload["instance_ids"]) == 1
    with session_scope() as s:
        s.execute(sa.delete(Instance).where(Instance.id.in_(payload["instance_ids"])))
    assert provisioning.provision_many(payload["instance_ids"]) == {payload["instance_ids"][0]: "gone"}
    assert operations.provision(payload["instance_ids"][0]) == "gone"
    assert cloud.all() == {}
    with session_scope() as s:
        s.execute(sa.delete(Pool).where(Pool.id == pool_id))
        assert reconciler.reconcile(pool_id, session=s) is None


def test_leaked_resource_is_deleted_after_two_passes(engine, world, cloud):
    pool_id = make_pool(world, 1, 1)
    engine.settle()
    leaked = cloud.leak(str(uuid.uuid4()), pool_id, "warmpool")
    assert engine.collect_orphans()["orphans_deleted"] == 0
    assert leaked in cloud.all()
    assert engine.collect_orphans()["orphans_deleted"] == 1
    assert leaked not in cloud.all() and len(cloud.all()) == 1  # ours stays


def test_vanished_resource_is_failed_and_replaced(engine, world, cloud):
    pool_id = make_pool(world, 1, 1)
    engine.settle()
    (ref,) = cloud.all()
    cloud.drop(ref)
    engine.collect_orphans()
    engine.collect_orphans()
    engine.settle()
    assert states(pool_id) == {"deleted": 1, "running": 1}
    assert len(cloud.all()) == 1


def test_transient_error_is_retried_and_degrades_then_recovers(engine, world, cloud):
    cloud.configure(fail_create=1)
    pool_id = make_pool(world, 2, 2)
    for _ in range(3):
        engine.settle()
        engine.retry_failures()
    engine.settle()
    p = get_pool(pool_id)
    assert p.phase == "degraded" and "create failed" in p.failure_message and p.consecutive_failures >= 3
    assert p.next_attempt_at is not None
    cloud.reset_config()
    engine.retry_failures()
    engine.settle()
    p = get_pool(pool_id)
    assert (p.phase, p.failure_message, p.ready_instances) == ("ready", "", 2)


def test_permanent_error_fails_the_instance_and_it_is_replaced(engine, world, cloud):
    cloud.configure(fail_create=1, fail_create_permanent="true")
    pool_id = make_pool(world, 1, 1)
    engine.settle()
    with session_scope() as s:
        failed = s.exec(select(Instance).where(Instance.pool_id == pool_id, Instance.failure_count > 0)).all()
        assert failed and "create failed" in failed[0].last_error
        assert failed[0].state == "deleted"  # a failed instance is deleted, never retried in place
    assert get_pool(pool_id).ready_instances == 0
    cloud.reset_config()
    with session_scope() as s:
        s.execute(sa.update(Pool).where(Pool.id == pool_id).values(next_attempt_at=None))
    engine.queue.append(("reconcile_pool", {"pool_id": pool_id}))
    engine.settle()
    assert states(pool_id).get("running") == 1


def test_stopped_tier_backfills_a_taken_instance(engine, world):
    pool_id = make_pool(world, 2, 2, stopped_size=2)
    engine.settle()
    assert states(pool_id) == {"running": 2, "stopped": 2}
    with session_scope() as s:
        taken = s.exec(select(Instance).where(Instance.pool_id == pool_id, Instance.state == "running")).first()
        taken.lease_id = str(uuid.uuid4())
    engine.queue.append(("reconcile_pool", {"pool_id": pool_id}))
    engine.settle()
    started = [n for n, _ in engine.ran if n == "start_instance"]
    assert started, "a stopped instance should have been started"
    p = get_pool(pool_id)
    assert p.ready_instances == 2 and p.stopped_instances == 2


def test_completed_prebuild_rotates_every_free_instance(engine, world, cloud):
    pool_id = make_pool(world, 3, 3)
    engine.settle()
    with session_scope() as s:
        pb = prebuilds.create_prebuild(world.org_id, world.project_id, world.env_class_id, session=s)
    ready_seen = []
    while engine.step():
        ready_seen.append(get_pool(pool_id).ready_instances)
    p = get_pool(pool_id)
    assert p.snapshot_id and p.snapshot_id.startswith("fake-snap-") and p.previous_snapshot_id is None
    with session_scope() as s:
        live = s.exec(select(Instance).where(Instance.pool_id == pool_id, Instance.state == "running")).all()
        assert len(live) == 3 and {i.snapshot_id for i in live} == {p.snapshot_id}
        assert prebuilds.get_prebuild(world.org_id, pb.id, session=s).phase == "completed"
    assert min(ready_seen) >= 3, "ready capacity dropped below the target during rotation"


def test_deleting_a_pool_drains_it(engine, world, cloud):
    pool_id = make_pool(world, 2, 2)
    engine.settle()
    with session_scope() as s:
        pools.delete_pool(world.org_id, pool_id, session=s)
    engine.settle()
    assert get_pool(pool_id).phase == "deleted"
    assert states(pool_id) == {"deleted": 2} and cloud.all() == {}


@pytest.mark.parametrize("reset_fails", [False, True], ids=["reset", "reset-fails"])
def test_a_returned_instance_of_a_reuse_pool_is_reset_before_it_is_ready_again(engine, world, cloud, reset_fails):
    pool_id = make_pool(world, 2, 2, reuse=True)
    engine.settle()
    name = get_pool(pool_id).name
    with session_scope() as s:
        taken = leases.lease(world.org_id, name, service_tag="t", session=s)
    engine.settle()
    if reset_fails:
        cloud.configure(fail_reset=1.0, fail_reset_permanent="true")
    with session_scope() as s:
        leases.return_lease(world.org_id, taken.instance_id, service_tag="t", session=s)
    with session_scope() as s:
        inst = s.get(Instance, taken.instance_id)
        assert inst.draining and inst.lease_id is None  # not ready before the provider has reset it
    assert get_pool(pool_id).ready_instances == 1
    engine.settle()
    ran = [(n, p["instance_id"]) for n, p in engine.ran if n == "recycle_instance"]
    assert ran == [("recycle_instance", taken.instance_id)]
    with session_scope() as s:
        inst = s.get(Instance, taken.instance_id)
    if reset_fails:  # not clean: failed and replaced, never leased again
        assert inst.state in ("failed", "deleting", "deleted") and inst.desired_state == "deleted"
    else:
        assert inst.state == "running" and not inst.draining
        assert "reset for the next lease" in cloud.load(inst.provider_ref)["log"]
    engine.settle()
    assert get_pool(pool_id).ready_instances == 2
