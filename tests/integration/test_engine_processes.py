"""The engine as a user runs it: a real `warmpool worker`, `warmpool events` and `warmpool observe` process on
real Redis and Postgres, a pool driven through the domain, the fake cloud shared through Redis (it boots
on its own; the observer reports what it does)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.domain import effects, pools, prebuilds
from app.models import Instance, Pool, Runner
from tests.conftest import make_catalog, make_org
from workers.providers.fake import FakeCloud

ROOT = Path(__file__).resolve().parents[2]
WARMPOOL = str(Path(sys.executable).with_name("warmpool"))


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Processes:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp, self.procs = env, tmp, {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([WARMPOOL, *args], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def engine(db, redis_client, tmp_path, monkeypatch):
    env = dict(os.environ)
    env.update({k: v for k, v in os.environ.items() if k.startswith("WARMPOOL_")})
    extra = {
        "WARMPOOL_ENGINE__STUCK_AFTER_SECONDS": "2", "WARMPOOL_ENGINE__BACKOFF_BASE_SECONDS": "0.2",
        "WARMPOOL_ENGINE__BACKOFF_MAX_SECONDS": "1", "WARMPOOL_ENGINE__PROVIDER_RETRIES": "50",
        "WARMPOOL_ENGINE__RECONCILE_INTERVAL_SECONDS": "1", "WARMPOOL_LOG_LEVEL": "WARNING",
        # A task lost with a SIGKILLed worker holds its dedupe key this long before the sweep re-enqueues it.
        "WARMPOOL_ENGINE__INFLIGHT_PROVIDER_SECONDS": "3", "WARMPOOL_ENGINE__INFLIGHT_RECONCILE_SECONDS": "3",
    }
    env.update(extra)
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    from config.settings import get_settings
    from workers import celery_app as capp

    get_settings.cache_clear()
    capp.reconfigure()
    previous = effects.set_dispatcher(capp.dispatch_effect)
    procs = Processes(env, tmp_path)
    procs.start("worker", "worker", "--concurrency", "8", "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h")
    procs.start("events", "events")
    procs.start("observe", "observe")
    yield procs
    procs.stop_all()
    effects.set_dispatcher(previous)


def world(boot_ms: int = 100, stopped_size: int = 0):
    w = make_catalog(make_org())
    ns = f"t-{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        s.get(Runner, w.runner_id).settings = {"namespace": ns, "boot_ms": boot_ms, "start_ms": 50, "stop_ms": 10, "delete_ms": 5}
    return w, ns


def pool_state(pool_id: str) -> Pool:
    with session_scope() as s:
        return s.get(Pool, pool_id)


def create(w, n: int, **spec) -> str:
    with session_scope() as s:
        p = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=n, max_size=n, session=s)
        for k, v in spec.items():
            setattr(p, k, v)
    return p.id


def test_pool_becomes_ready_and_backfills_from_the_stopped_tier(engine, redis_client):
    w, ns = world()
    pool_id = create(w, 3, stopped_size=1)
    p = wait_for(lambda: (lambda p: p if p.phase == "ready" and p.ready_instances == 3 and p.stopped_instances == 1 else None)(pool_state(pool_id)),
                 what="READY with 3 running and 1 stopped\n" + engine.log("worker"))
    assert p.running_instances == 3
    with session_scope() as s:
        taken = s.execute(sa.select(Instance).where(Instance.pool_id == pool_id, Instance.state == "running")).scalars().first()
        taken.lease_id = str(uuid.uuid4())
        pools.request_reconcile(s.get(Pool, pool_id), session=s)
    before = pool_state(pool_id).status_version

    def started_from_stopped_tier():
        with session_scope() as s:
            return s.execute(sa.select(sa.func.count()).where(
                Instance.pool_id == pool_id, Instance.state == "running", Instance.lease_id.is_(None),
                Instance.boot_ms < 100)).scalar_one() >= 1

    # The start takes 50 ms, a provision 100 ms: a backfill from the stopped tier shows in boot_ms.
    wait_for(started_from_stopped_tier, what="a stopped instance started to replace the taken one")
    p = wait_for(lambda: (lambda p: p if p.status_version > before and p.ready_instances == 3 and p.stopped_instances == 1
                          else None)(pool_state(pool_id)), what="3 ready again and the stopped tier refilled")
    assert p.leased_instances == 1
    assert len(FakeCloud(redis_client, ns).all()) == 5


def test_completed_prebuild_rotates_all_free_instances(engine):
    w, _ = world()
    pool_id = create(w, 3)
    wait_for(lambda: pool_state(pool_id).phase == "ready", what="READY")
    with session_scope() as s:
        prebuilds.create_prebuild(w.org_id, w.project_id, w.env_class_id, session=s)
    snap = wait_for(lambda: pool_state(pool_id).snapshot_id, what="the new snapshot on the pool")

    def rotated():
        with session_scope() as s:
            rows = s.execute(sa.select(Instance.snapshot_id).where(Instance.pool_id == pool_id, Instance.state == "running")).all()
        return len(rows) == 3 and {r[0] for r in rows} == {snap}

    low = []
    deadline = time.monotonic() + 20
    while not rotated():
        low.append(pool_state(pool_id).ready_instances)
        assert time.monotonic() < deadline, "rotation did not finish"
        time.sleep(0.02)
    assert min(low or [3]) >= 3, f"ready capacity dropped during rotation: {low}"


def test_failing_provider_degrades_the_pool_which_recovers(engine, redis_client):
    w, ns = world()
    cloud = FakeCloud(redis_client, ns)
    cloud.configure(fail_create=1)
    pool_id = create(w, 2)
    p = wait_for(lambda: (lambda p: p if p.phase == "degraded" else None)(pool_state(pool_id)), what="DEGRADED")
    assert "create failed" in p.failure_message
    cloud.reset_config()
    p = wait_for(lambda: (lambda p: p if p.phase == "ready" and p.ready_instances == 2 else None)(pool_state(pool_id)),
                 timeout=30, what="recovery to READY")
    assert p.failure_message == ""


def test_worker_killed_while_the_cloud_boots_leaves_no_orphan(engine, redis_client):
    # The create calls returned at once; the fake cloud boots for 1.5 s on its own while the worker dies.
    w, ns = world(boot_ms=1500)
    pool_id = create(w, 2)

    def provisioning():
        with session_scope() as s:
            return s.execute(sa.select(sa.func.count()).where(Instance.pool_id == pool_id, Instance.state == "provisioning")).scalar_one() == 2

    wait_for(provisioning, what="both instances provisioning")
    engine.kill("worker", signal.SIGKILL)
    engine.start("worker2", "worker", "--concurrency", "8", "--hostname", f"test2-{uuid.uuid4().hex[:6]}@%h")
    engine.start("beat", "beat")
    wait_for(lambda: pool_state(pool_id).phase == "ready" and pool_state(pool_id).ready_instances == 2, timeout=30,
             what="convergence after SIGKILL\n" + engine.log("worker2"))
    with session_scope() as s:
        live = {r[0] for r in s.execute(sa.select(Instance.provider_ref).where(Instance.pool_id == pool_id, Instance.state != "deleted"))}
    resources = set(FakeCloud(redis_client, ns).all())
    assert resources == live and len(resources) == 2, f"orphans: {resources - live}"
