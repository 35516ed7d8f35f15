"""Pod-pool semantics through the engine (task bodies + applier on real Postgres/Redis, fake cloud):
reuse=false replenishes when a pod is taken, reuse=true only counts it and takes it back on return;
idle scaled pods and idle base pods are recycled after their idle_recycle times, not before."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.domain import leases, podpools, reconciler, tenancy
from app.domain.podpools import PodPoolInput
from app.models import Instance, Pool, utcnow
from tests.conftest import make_org
from tests.engine_harness import InlineEngine
from workers.providers.registry import clear_cache


@pytest.fixture
def engine(db, redis_client):
    clear_cache()
    eng = InlineEngine(redis_client)
    yield eng
    eng.close()
    clear_cache()


def pod_pool(engine, **fields) -> tuple[str, str]:
    w = make_org()
    with session_scope() as s:
        tenancy.create_runner(w.org_id, "fake", "fake", {"namespace": f"pp-{uuid.uuid4().hex[:6]}", "boot_ms": 0,
                                                           "start_ms": 0, "delete_ms": 0}, session=s)
        spec = dict(id=f"pp-{uuid.uuid4().hex[:6]}", image="python:3.12", resources={"requests": {"cpu": "100m", "memory": "64Mi"}})
        spec.update(fields)
        assert podpools.create_pod_pools(w.org_id, [PodPoolInput(**spec, given=spec)], tenant_id="0", session=s) == []
        pool_id = s.execute(sa.select(Pool.id).where(Pool.name == spec["id"])).scalar_one()
    engine.settle()
    return w.org_id, pool_id


def counts(pool_id: str) -> dict[str, int]:
    with session_scope() as s:
        p = s.get(Pool, pool_id)
        alive = s.execute(sa.select(sa.func.count()).where(Instance.pool_id == pool_id, Instance.state != "deleted")).scalar_one()
    return {"ready": p.ready_instances, "leased": p.leased_instances, "alive": alive}


def take(org_id: str, pool_name: str) -> str:
    with session_scope() as s:
        return leases.lease(org_id, pool_name, session=s, service_tag="fn").instance_id


def give_back(org_id: str, instance_id: str) -> None:
    with session_scope() as s:
        leases.return_lease(org_id, instance_id, service_tag="fn", session=s)


def name_of(pool_id: str) -> str:
    with session_scope() as s:
        return s.get(Pool, pool_id).name


def test_without_reuse_a_taken_pod_is_replaced_at_once_and_destroyed_on_return(engine):
    org, pool_id = pod_pool(engine, size=2, max_size=2, reuse=False)
    assert counts(pool_id) == {"ready": 2, "leased": 0, "alive": 2}
    taken = take(org, name_of(pool_id))
    engine.settle()
    assert counts(pool_id) == {"ready": 2, "leased": 1, "alive": 3}
    give_back(org, taken)
    engine.settle()
    assert counts(pool_id) == {"ready": 2, "leased": 0, "alive": 2}
    with session_scope() as s:
        assert s.get(Instance, taken).state == "deleted"


def test_with_reuse_a_taken_pod_counts_and_comes_back(engine):
    org, pool_id = pod_pool(engine, size=2, max_size=2, reuse=True)
    taken = take(org, name_of(pool_id))
    engine.settle()
    assert counts(pool_id) == {"ready": 1, "leased": 1, "alive": 2}  # not replenished while leased
    give_back(org, taken)
    engine.settle()
    assert counts(pool_id) == {"ready": 2, "leased": 0, "alive": 2}
    with session_scope() as s:
        assert s.get(Instance, taken).state == "running"  # the same pod, back in the pool


def set_target(pool_id: str, target: int) -> None:
    """Stand in for the autoscaler's decision (held: a long cooldown keeps it from moving on its own)."""
    with session_scope() as s:
        p = s.get(Pool, pool_id)
        p.desired_size, p.autoscale = target, {"changed_at": utcnow().isoformat(), "cooldown": 86400}


def reconcile_at(pool_id: str, seconds_from_now: float):
    with session_scope() as s:
        return reconciler.reconcile(pool_id, session=s, now=utcnow() + timedelta(seconds=seconds_from_now))


def test_idle_scaled_pods_are_recycled_after_their_idle_time_and_not_before(engine):
    org, pool_id = pod_pool(engine, size=1, max_size=3, idle_recycle_time={"reserved": -1, "scaled": 120})
    set_target(pool_id, 3)  # demand pushed the running target up ...
    engine.queue.append(("reconcile_pool", {"pool_id": pool_id}))
    engine.settle()
    assert counts(pool_id)["alive"] == 3
    set_target(pool_id, 1)  # ... and went away again: two scaled pods are now above the target
    plan = reconcile_at(pool_id, 60)  # target back to the base, but the scaled pods were idle only 60 s
    assert plan.delete == [] and plan.stop == []
    engine.settle()
    plan = reconcile_at(pool_id, 180)
    assert len(plan.delete) >= 1
    engine.settle()
    for _ in range(3):
        reconcile_at(pool_id, 400)
        engine.settle()
    assert counts(pool_id)["alive"] == 1


@pytest.mark.parametrize("spec", [
    dict(size=1, max_size=2, idle_recycle_time={"reserved": 300, "scaled": -1}),
    dict(size=1, max_size=1, labels={"yr-idle-to-recycle": "300"}),  # a fixed-size pool recycles by its label
], ids=["idle_recycle_time", "yr-idle-to-recycle"])
def test_idle_base_pods_are_replaced_after_the_reserved_idle_time(engine, spec):
    org, pool_id = pod_pool(engine, **spec)
    with session_scope() as s:
        (old,) = s.execute(sa.select(Instance.id).where(Instance.pool_id == pool_id)).scalars().all()
    idle_for(old, 100)
    assert reconcile_at(pool_id, 0).empty  # idle 100 s < 300 s: kept
    idle_for(old, 301)
    plan = reconcile_at(pool_id, 0)
    assert plan.create_running == 1 and plan.delete == []  # a fresh pod first (surge), never below the base
    engine.settle()  # the fresh pod becomes ready; the applier's reconcile then retires the idle one
    with session_scope() as s:
        assert s.get(Instance, old).state == "deleted"
    assert counts(pool_id) == {"ready": 1, "leased": 0, "alive": 1}


def idle_for(instance_id: str, seconds: float) -> None:
    with session_scope() as s:
        s.get(Instance, instance_id).idle_since = utcnow() - timedelta(seconds=seconds)
