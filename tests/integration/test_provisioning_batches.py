"""Issue 11, provisioning at cloud speed: one reconcile of N instances sends its creates as a few batched
provider calls (counted in the fake cloud), never one task per instance; a redelivered or retried batch
makes no second resource (our instance id is the key); the organization's `max_creating` still caps
what is in creation. Real PostgreSQL and Redis; the Celery dispatcher enqueues into the real broker and
the task bodies are called directly, as a worker would run them."""
from __future__ import annotations

import base64
import json
import uuid

import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.domain import effects, pools, quotas, reconciler
from app.domain.states import PoolKind
from app.models import Instance, Runner
from config.celery import PROVIDER_QUEUE
from config.settings import get_settings
from tests.conftest import make_catalog, make_org
from workers import operations, provisioning
from workers.providers.fake import FakeCloud
from workers.providers.registry import clear_cache

FAST = {"boot_ms": 0, "start_ms": 0, "stop_ms": 0, "delete_ms": 0, "snapshot_ms": 0}


@pytest.fixture
def broker(db, redis_client, monkeypatch):
    """Effects of this process go through the real dispatcher into the test Redis (no worker consumes them)."""
    monkeypatch.setenv("WARMPOOL_ENGINE__BACKOFF_BASE_SECONDS", "0.01")
    from workers import celery_app as capp

    get_settings.cache_clear()
    clear_cache()
    capp.reconfigure()
    previous = effects.set_dispatcher(capp.dispatch_effect)
    yield redis_client
    effects.set_dispatcher(previous)
    clear_cache()


def provider_tasks(client) -> list[tuple[str, dict]]:
    """(task, kwargs) of every message waiting in the provider queue, oldest first (kombu keeps a Redis list)."""
    out = []
    for raw in reversed(client.lrange(PROVIDER_QUEUE, 0, -1)):
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], kwargs))
    return out


def world_with_pool(size: int, **quota: int):
    w = make_catalog(make_org(f"o-{uuid.uuid4().hex[:6]}"))
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        s.get(Runner, w.runner_id).settings = dict(FAST, namespace=namespace)
        quotas.set_quota(w.org_id, session=s, **{"max_pool_size": size, "max_instances": 4 * size,
                                                 "max_creating": size, **quota})
    with session_scope() as s:
        pool = pools.insert_pool(pools.new_pool(w.org_id, kind=PoolKind.NAMED, name="big", min_size=size, max_size=size,
                                                runner_id=w.runner_id), session=s, conflict="x")
    return pool.id, namespace


def rows(pool_id: str) -> dict[str, str]:
    with session_scope() as s:
        return dict(s.execute(sa.select(Instance.id, Instance.state).where(Instance.pool_id == pool_id)).all())


def test_one_reconcile_of_250_instances_makes_its_creates_in_three_batched_calls(broker, redis_client):
    pool_id, namespace = world_with_pool(250)
    cloud = FakeCloud(redis_client, namespace)
    redis_client.delete(PROVIDER_QUEUE)
    with session_scope() as s:
        plan = reconciler.reconcile(pool_id, session=s)
    assert plan.create_running == 250

    # The pass's 250 creations went out as provision_instances tasks of engine.provision_batch (100) ids.
    tasks = provider_tasks(redis_client)
    assert [t for t, _ in tasks] == ["warmpool.provision_instances"] * 3, tasks
    batches = [kw["instance_ids"] for _, kw in tasks]
    assert [len(b) for b in batches] == [100, 100, 50]
    assert sorted(i for b in batches for i in b) == sorted(rows(pool_id))

    for ids in batches:  # what a worker does with each message
        outcome = provisioning.provision_many(ids)
        assert set(outcome.values()) == {"provisioning"}, outcome
    # Three calls of the cloud's batch endpoint, one per task, and one resource per instance.
    assert cloud.batches("create") == [100, 100, 50]
    made = cloud.all()
    assert len(made) == 250
    assert sorted(r["tags"]["warmpool.instance"] for r in made.values()) == sorted(rows(pool_id))

    # A kick of one instance while its batch holds the key is dropped (one task in flight per instance).
    from workers.celery_app import enqueue

    redis_client.delete(PROVIDER_QUEUE)
    assert not enqueue("provision_instance", {"instance_id": batches[0][0]})


def test_a_redelivered_batch_and_a_retried_create_make_no_second_resource(broker, redis_client):
    pool_id, namespace = world_with_pool(40)
    cloud = FakeCloud(redis_client, namespace)
    with session_scope() as s:
        reconciler.reconcile(pool_id, session=s)
    ids = sorted(rows(pool_id))

    # Half the creates fail transiently (deterministically, under a seed): the batch asks to retry those only.
    cloud.configure(fail_create=0.5, seed=11)
    with pytest.raises(operations.Failed) as failed:
        provisioning.provision_many(ids)
    retry = failed.value.instance_ids
    assert 0 < len(retry) < len(ids) and set(retry) <= set(ids)
    first = {r["tags"]["warmpool.instance"]: ref for ref, r in cloud.all().items()}
    assert set(first) == set(ids) - set(retry)

    # The whole batch delivered again (a worker died before acknowledging it): nothing is made twice, and
    # the ones that had landed keep their resource.
    cloud.configure(fail_create=0)
    outcome = provisioning.provision_many(ids, retries=1)
    assert set(outcome) == set(ids)
    again = {r["tags"]["warmpool.instance"]: ref for ref, r in cloud.all().items()}
    assert len(cloud.all()) == len(ids) and all(again[i] == ref for i, ref in first.items())
    # And the retry of the failed ones, as Celery would send it after the countdown: still one each.
    provisioning.provision_many(retry, retries=2)
    assert len(cloud.all()) == len(ids)
    assert cloud.batches("create") == [40, 40, len(retry)]


def test_a_create_that_lands_after_its_instance_was_deleted_is_deleted(broker, redis_client):
    pool_id, namespace = world_with_pool(5)
    cloud = FakeCloud(redis_client, namespace)
    with session_scope() as s:
        reconciler.reconcile(pool_id, session=s)
    ids = sorted(rows(pool_id))
    with session_scope() as s:  # deleted while the batch waited in the queue
        s.execute(sa.update(Instance).where(Instance.id == ids[0]).values(desired_state="deleted"))
        s.execute(sa.delete(Instance).where(Instance.id == ids[1]))
    outcome = provisioning.provision_many(ids)
    assert outcome[ids[0]] == "not wanted" and outcome[ids[1]] == "gone"
    assert {r["tags"]["warmpool.instance"] for r in cloud.all().values()} == set(ids[2:])


def test_max_creating_still_caps_what_is_in_creation(broker, redis_client):
    pool_id, _ = world_with_pool(100, max_creating=30)
    for _ in range(2):  # the second pass sees 30 in creation and adds none
        with session_scope() as s:
            reconciler.reconcile(pool_id, session=s)
        assert len(rows(pool_id)) == 30
    with session_scope() as s:  # ten of them landed (running): room for ten more
        landed = sorted(rows(pool_id))[:10]
        s.execute(sa.update(Instance).where(Instance.id.in_(landed)).values(state="running"))
        reconciler.reconcile(pool_id, session=s)
    assert len(rows(pool_id)) == 40
