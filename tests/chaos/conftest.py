"""Chaos fixtures: a redis-server of the test's own (so it may be flushed and SIGKILLed without harming other
tests), the real processes on it and the test PostgreSQL, and the checks every fault ends with — read from
the database and the fake cloud, never from what clients saw.

ITERATIONS (env, default 2) is how many times each fault is repeated; `make chaos` runs 10."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
WARMPOOL = str(Path(sys.executable).with_name("warmpool"))
ITERATIONS = int(os.environ.get("ITERATIONS", "2"))
CONVERGE_SECONDS = 10.0

pytestmark = [pytest.mark.postgres]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class OwnRedis:
    """A redis-server only this test uses, restartable on the same port (no persistence: a restart is a loss)."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.tmp = free_port(), tmp
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (the chaos tests need a real one)")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.tmp)], stdout=subprocess.DEVNULL)
        wait_for(self.ping, 10, "redis-server to answer")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Stack:
    env: dict[str, str]
    tmp: Path
    http_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([WARMPOOL, *args], env=self.env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        return self.start(name, "worker", "--concurrency", "8", "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(15)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def log(self, name: str, chars: int = 4000) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM if self.alive(name) else signal.SIGKILL)


@pytest.fixture
def own_redis(tmp_path):
    r = OwnRedis(tmp_path)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def stack(db, own_redis, tmp_path, monkeypatch):
    """api, worker, beat, events and observe on the test PostgreSQL and the test's own Redis, with short timers."""
    http_port = free_port()
    env = dict(os.environ)
    extra = {
        "WARMPOOL_ENV": "test", "WARMPOOL_REDIS_URL": own_redis.url, "WARMPOOL_DATA_DIR": str(tmp_path / "data"),
        "WARMPOOL_HTTP_PORT": str(http_port), "WARMPOOL_GRPC_PORT": str(free_port()), "WARMPOOL_LOG_LEVEL": "WARNING",
        "WARMPOOL_AUTH_CACHE_SECONDS": "0", "WARMPOOL_DB_POOL_SIZE": "4",
        "WARMPOOL_ENGINE__STUCK_AFTER_SECONDS": "2", "WARMPOOL_ENGINE__BACKOFF_BASE_SECONDS": "0.2",
        "WARMPOOL_ENGINE__BACKOFF_MAX_SECONDS": "1", "WARMPOOL_ENGINE__PROVIDER_RETRIES": "50",
        "WARMPOOL_ENGINE__RECONCILE_INTERVAL_SECONDS": "1", "WARMPOOL_ENGINE__ORPHAN_INTERVAL_SECONDS": "1",
        "WARMPOOL_ENGINE__LEASE_EXPIRY_INTERVAL_SECONDS": "1",
        "WARMPOOL_ENGINE__INFLIGHT_PROVIDER_SECONDS": "3", "WARMPOOL_ENGINE__INFLIGHT_RECONCILE_SECONDS": "3",
        "WARMPOOL_ENGINE__EVENTS_CLAIM_IDLE_MS": "2000", "WARMPOOL_ENGINE__EVENTS_RETRY_MAX_SECONDS": "1",
        "WARMPOOL_ENGINE__BROKER_VISIBILITY_SECONDS": "4",
    }
    env.update(extra)
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    from app.domain import effects
    from config.settings import get_settings
    from workers import celery_app as capp

    get_settings.cache_clear()
    capp.reconfigure()
    previous = effects.set_dispatcher(capp.dispatch_effect)
    (tmp_path / "data").mkdir(exist_ok=True)
    s = Stack(env, tmp_path, http_port)
    s.start("api", "api", "--host", "127.0.0.1", "--port", str(http_port))
    s.start_worker()
    s.start("beat", "beat")
    s.start("events", "events")
    s.start("observe", "observe")
    wait_for(lambda: _healthy(http_port), 30, "warmpool api to serve\n" + s.log("api"))
    yield s
    s.stop_all()
    effects.set_dispatcher(previous)
    get_settings.cache_clear()
    capp.reconfigure()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---- the world and what is checked ------------------------------------------------------------------

@dataclass
class World:
    org_id: str
    token: str
    pool_id: str
    pool_name: str
    namespace: str


def make_world(size: int, boot_ms: int = 300) -> World:
    from app.db import session_scope
    from app.domain import pools
    from app.models import Runner
    from tests.conftest import make_catalog, make_org

    w = make_catalog(make_org())
    ns = f"chaos-{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        s.get(Runner, w.runner_id).settings = {"namespace": ns, "boot_ms": boot_ms, "start_ms": 50, "stop_ms": 10,
                                               "delete_ms": 5}
    with session_scope() as s:
        p = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=size, max_size=size, session=s)
        pool_id, name = p.id, p.name
    return World(org_id=w.org_id, token=w.token, pool_id=pool_id, pool_name=name, namespace=ns)


def resize(world: World, size: int) -> None:
    from app.db import session_scope
    from app.domain import pools

    with session_scope() as s:
        pools.resize_pool(world.org_id, world.pool_id, min_size=size, max_size=size, session=s)


def cloud_refs(redis_url: str, world: World) -> set[str]:
    """What the fake cloud holds for this world (None-safe while Redis is down: the caller polls)."""
    import redis

    from workers.providers.fake import FakeCloud

    return set(FakeCloud(redis.Redis.from_url(redis_url, socket_timeout=2), world.namespace).all())


def lease(stack: Stack, world: World, tag: str = "chaos") -> str | None:
    """One Lease over Connect JSON; the instance id, or None if the pool had nothing (or the api said no)."""
    r = httpx.post(f"http://127.0.0.1:{stack.http_port}/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Lease",
                   json={"pool": world.pool_name, "serviceTag": tag}, timeout=10,
                   headers={"authorization": f"Bearer {world.token}", "connect-timeout-ms": "3000"})
    if r.status_code == 200:
        return r.json()["lease"]["instance"]
    LEASE_ERRORS.append(f"{r.status_code} {r.text[:300]}")
    return None


LEASE_ERRORS: list[str] = []


@dataclass
class Figures:
    ready: int
    orphans: set[str]
    ghosts: set[str]
    lost_leases: int
    doubles: int
    in_flight: int


def figures(redis_url: str, world: World) -> Figures:
    """From the database and the fake cloud: free ready instances, resources nobody owns (orphans), live rows
    whose resource is gone (ghosts), active leases on lost instances, instances with two active leases."""
    from app.db import session_scope
    from app.models import Instance, Lease

    refs = cloud_refs(redis_url, world)
    with session_scope() as s:
        rows = s.execute(sa.select(Instance.id, Instance.state, Instance.provider_ref, Instance.lease_id,
                                   Instance.desired_state).where(Instance.pool_id == world.pool_id)).all()
        active = s.execute(sa.select(Lease.instance_id).where(Lease.pool_id == world.pool_id,
                                                              Lease.state == "active")).scalars().all()
    live_refs = {r.provider_ref for r in rows if r.state != "deleted" and r.provider_ref}
    by_id = {r.id: r for r in rows}
    lost = [i for i in active if by_id[i].state in ("failed", "deleting", "deleted")
            or (by_id[i].provider_ref and by_id[i].provider_ref not in refs)]
    return Figures(
        ready=sum(1 for r in rows if r.state == "running" and r.lease_id is None and r.desired_state == "running"),
        orphans=refs - live_refs,
        ghosts={r.id for r in rows if r.state in ("running", "stopped") and r.provider_ref not in refs},
        lost_leases=len(lost),
        doubles=len(active) - len(set(active)),
        in_flight=sum(1 for r in rows if r.state in ("requested", "provisioning", "starting", "stopping",
                                                     "deleting")),
    )


def converged(redis_url: str, world: World, target: int) -> Figures | None:
    try:
        f = figures(redis_url, world)
    except Exception:  # noqa: BLE001 - Redis may still be coming back: keep polling
        return None
    ok = (f.ready == target and not f.orphans and not f.ghosts and not f.lost_leases and not f.doubles
          and not f.in_flight)
    return f if ok else None


def assert_converges(stack: Stack, redis_url: str, world: World, target: int, since: float, what: str) -> float:
    """Poll until converged; returns the seconds it took from `since` (the end of the fault)."""
    try:
        wait_for(lambda: converged(redis_url, world, target), CONVERGE_SECONDS + 5, what)
    except AssertionError as exc:
        try:
            now = figures(redis_url, world)
        except Exception as e:  # noqa: BLE001
            now = e
        raise AssertionError(f"{exc}\nfigures: {now}\n--- worker\n{stack.log('worker')}\n--- events\n"
                             f"{stack.log('events')}") from None
    took = time.monotonic() - since
    assert took <= CONVERGE_SECONDS, f"{what}: converged only after {took:.1f}s"
    return took


def report(name: str, times: list[float]) -> None:
    print(f"\nchaos {name}: iterations={len(times)} worst convergence={max(times):.2f}s "
          f"mean={sum(times) / len(times):.2f}s orphans=0 ghosts=0 lost-leases=0 doubles=0")
