"""A pool on the Unikraft provider through the real engine (task bodies, event applier, Postgres, Redis)
against the local Unikraft Cloud stub: READY, backfill from standby, and the engine's reaction to faults."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.domain import catalog, pools, tenancy
from app.models import Instance, Pool
from tests.conftest import make_org
from tests.engine_harness import InlineEngine
from tests.unikraft_stub import UnikraftStub
from workers.providers.registry import clear_cache

TOKEN = "ukc-engine-token-1234"


@pytest.fixture
def stub():
    with UnikraftStub(TOKEN, boot_ms=5, stop_ms=5) as s:
        yield s


@pytest.fixture
def engine(db, redis_client, monkeypatch):
    # Backoff long enough that nothing is retried behind the test's back; the test moves the clock.
    monkeypatch.setenv("WARMPOOL_ENGINE__BACKOFF_BASE_SECONDS", "30")
    monkeypatch.setenv("WARMPOOL_ENGINE__BACKOFF_MAX_SECONDS", "60")
    monkeypatch.setenv("WARMPOOL_PROVIDERS__ALLOWED_HOSTS", "127.0.0.1")  # the operator allows the local stub
    from config.settings import get_settings

    get_settings.cache_clear()
    clear_cache()
    eng = InlineEngine(redis_client)
    yield eng
    eng.close()
    clear_cache()


def make_pool(stub, size: int, stopped: int = 0) -> str:
    w = make_org()
    with session_scope() as s:
        runner = tenancy.create_runner(w.org_id, "ukc", "unikraft", {
            "metro": stub.url, "token": TOKEN, "timeout_s": 2, "start_timeout_s": 2, "stop_timeout_s": 2,
            "drain_timeout_ms": 10}, session=s)
        ec = catalog.create_environment_class(w.org_id, runner.id, "nginx", "unikernel",
                                              [{"key": "image", "value": "nginx:latest"}, {"key": "memory", "value": "128Mi"}], session=s)
        project = catalog.create_project(w.org_id, "p", {"prebuildConfiguration": {"enabled": True, "environmentClassIds": [ec.id]}}, session=s)
        pool = pools.create_warm_pool(w.org_id, project.id, ec.id, min_size=size, max_size=size, session=s)
        pool.stopped_size = stopped
    return pool.id


def pool_row(pool_id: str) -> Pool:
    with session_scope() as s:
        return s.get(Pool, pool_id)


def live_refs(pool_id: str) -> set[str]:
    with session_scope() as s:
        return {r[0] for r in s.execute(sa.select(Instance.provider_ref).where(
            Instance.pool_id == pool_id, Instance.state.not_in(["deleted"]), Instance.provider_ref.is_not(None)))}


def backoff_passes(pool_id: str) -> None:
    """Move the pool's clock past its creation backoff (instead of sleeping through it)."""
    with session_scope() as s:
        s.execute(sa.update(Pool).where(Pool.id == pool_id).values(next_attempt_at=None))


def settle_with_retries(engine, rounds: int = 20) -> None:
    """Run the engine; whenever an operation asked for a retry, let its backoff pass and retry it."""
    for _ in range(rounds):
        engine.settle()
        if not engine.failures:
            return
        engine.retry_failures()
        backoff_passes(engine.last_pool)
        engine.queue.append(("reconcile_pool", {"pool_id": engine.last_pool}))
    engine.settle()


def test_pool_becomes_ready_and_backfills_from_standby(engine, stub):
    pool_id = make_pool(stub, 2, stopped=1)
    engine.settle()
    p = pool_row(pool_id)
    assert (p.phase, p.ready_instances, p.stopped_instances) == ("ready", 2, 1)
    assert len(stub.instances("running")) == 2 and len(stub.instances("standby")) == 1
    with session_scope() as s:
        taken = s.execute(sa.select(Instance).where(Instance.pool_id == pool_id, Instance.state == "running")).scalars().first()
        taken.lease_id = str(uuid.uuid4())
        pools.request_reconcile(s.get(Pool, pool_id), session=s)
    engine.settle()
    assert any(name == "start_instance" for name, _ in engine.ran), "the standby instance should be woken"
    p = pool_row(pool_id)
    assert (p.ready_instances, p.stopped_instances, p.leased_instances) == (2, 1, 1)
    assert len(stub.instances("running")) == 3 and len(stub.instances("standby")) == 1
    assert {i["uuid"] for i in stub.instances()} == live_refs(pool_id)


def test_rate_limits_server_errors_and_partial_success_are_retried_without_degrading(engine, stub):
    stub.inject("create", status=429, retry_after="0", message="Too many requests")
    stub.inject("create", status=503, message="Service temporarily unavailable")
    pool_id = make_pool(stub, 2)
    engine.last_pool = pool_id
    settle_with_retries(engine)
    p = pool_row(pool_id)
    assert (p.phase, p.ready_instances, p.failure_message) == ("ready", 2, "")
    assert {i["uuid"] for i in stub.instances()} == live_refs(pool_id)
    # A bulk answer where our item timed out (partial_success) is a transient failure of ours.
    with session_scope() as s:
        one = s.execute(sa.select(Instance).where(Instance.pool_id == pool_id, Instance.state == "running")).scalars().first()
        one.lease_id = str(uuid.uuid4())
        pools.request_reconcile(s.get(Pool, pool_id), session=s)
    stub.inject("create", partial="ours", code=12, message="operation timed out")
    settle_with_retries(engine)
    assert pool_row(pool_id).ready_instances == 2
    assert {i["uuid"] for i in stub.instances()} == live_refs(pool_id)


def test_quota_error_degrades_the_pool_with_the_api_message_and_leaves_no_orphan(engine, stub):
    stub.quota_instances = 1
    pool_id = make_pool(stub, 2)
    engine.last_pool = pool_id
    for _ in range(4):
        settle_with_retries(engine, rounds=2)
        backoff_passes(pool_id)
        engine.queue.append(("reconcile_pool", {"pool_id": pool_id}))
    engine.settle()
    p = pool_row(pool_id)
    assert p.phase == "degraded" and "Quota exceeded" in p.failure_message
    assert p.ready_instances == 1
    assert {i["uuid"] for i in stub.instances()} == live_refs(pool_id)
    stub.quota_instances = None  # the customer raised the quota
    backoff_passes(pool_id)
    engine.queue.append(("reconcile_pool", {"pool_id": pool_id}))
    settle_with_retries(engine)
    p = pool_row(pool_id)
    assert (p.phase, p.ready_instances) == ("ready", 2)


def test_failed_deletes_are_retried_and_leave_no_orphan(engine, stub):
    pool_id = make_pool(stub, 1)
    engine.last_pool = pool_id
    engine.settle()
    with session_scope() as s:
        pools.delete_pool(pool_row(pool_id).organization_id, pool_id, session=s)
    stub.inject("delete", status=503, message="try later")
    settle_with_retries(engine)
    assert pool_row(pool_id).phase == "deleted"
    assert stub.instances() == []


def test_prebuilds_become_checkpoints_pools_branch_from_them_and_old_ones_are_retired(engine, stub):
    from app.domain import prebuilds

    pool_id = make_pool(stub, 1)
    engine.settle()
    p = pool_row(pool_id)
    snaps = []
    for _ in range(3):
        with session_scope() as s:
            prebuilds.create_prebuild(p.organization_id, p.project_id, p.environment_class_id, session=s)
        engine.settle()
        snaps.append(pool_row(pool_id).snapshot_id)
        assert len(stub.instances("running")) == 1  # rotated: one instance, on the new checkpoint
    assert all(sn and sn.startswith("checkpoint:") for sn in snaps) and len(set(snaps)) == 3
    p = pool_row(pool_id)
    assert (p.snapshot_id, p.previous_snapshot_id) == (snaps[2], snaps[1])  # the previous one kept for rollback
    kept = {c["uuid"] for c in stub.instances("checkpoint")}
    assert kept == {snaps[2].split(":")[1], snaps[1].split(":")[1]}  # the first one was retired
    with session_scope() as s:
        (inst,) = s.execute(sa.select(Instance).where(Instance.pool_id == pool_id, Instance.state == "running")).scalars().all()
    assert inst.snapshot_id == snaps[2]
    assert [r for r in stub.requests if r["op"] == "create"][-1]["body"]["checkpoint"] == {"uuid": snaps[2].split(":")[1]}
