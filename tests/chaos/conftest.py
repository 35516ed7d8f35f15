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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
WARMPOOL = str(Path(sys.executable).with_name("warmpool"))
ITERATIONS = int(os.environ.get("ITERATIONS", "2"))
CONVERGE_SECONDS = 10.0
REPLICAS = [int(n) for n in os.environ.get("CHAOS_REPLICAS", "1,2").split(",")]
"""Replica counts the suite runs with (CHAOS_REPLICAS, default both): each fault runs once per count."""

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
    http_ports: list[int]
    replicas: int = 1
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    turn: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    hostnames: dict[str, str] = field(default_factory=dict)
    """The settings the stack runs with (the test process takes them too)."""

    @property
    def http_port(self) -> int:
        """The api replica the next call goes to (round robin, like a load balancer)."""
        self.turn += 1
        return self.http_ports[self.turn % len(self.http_ports)]

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([WARMPOOL, *args], env={**self.env, **(env or {})}, cwd=self.tmp, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        self.hostnames[name] = f"{name}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        return self.start(name, "worker", "--concurrency", "8", "--hostname", self.hostnames[name])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(15)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def dead(self) -> list[str]:
        return [name for name in self.procs if not self.alive(name)]

    def log(self, name: str, chars: int = 4000) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def logs(self, *kinds: str, chars: int = 3000) -> str:
        """The tail of each process log whose name starts with one of `kinds` (every process if none)."""
        return "".join(f"\n--- {name}\n{self.log(name, chars)}" for name in sorted(self.procs)
                       if not kinds or name.startswith(kinds))

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM every process group at once, SIGKILL what is left after `grace` (nothing here tests a clean
        stop, and one at a time took half a minute)."""
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(15)
        self.procs.clear()


def named(kind: str, i: int) -> str:
    """The first replica keeps the bare name (`worker`), the others are numbered (`worker2`)."""
    return kind if i == 0 else f"{kind}{i + 1}"


@pytest.fixture
def own_redis(tmp_path):
    r = OwnRedis(tmp_path)
    r.start()
    yield r
    r.stop()


def chaos_env(own_redis: OwnRedis, tmp: Path, http_port: int) -> dict[str, str]:
    """The settings of every process of the stack and of the test itself: short timers, the test's Redis."""
    return {
        "WARMPOOL_ENV": "test", "WARMPOOL_REDIS_URL": own_redis.url, "WARMPOOL_DATA_DIR": str(tmp / "data"),
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


@pytest.fixture(params=REPLICAS, ids=[f"{n}-replica{'s' if n > 1 else ''}" for n in REPLICAS])
def stack(request, db, own_redis, tmp_path, monkeypatch):
    """api, worker, events and observe (`replicas` of each) and beat on the test PostgreSQL and the test's own
    Redis, with short timers. With two replicas a second beat runs too, as if started by mistake on another
    host (its own schedule file). One stack per test: a stack shared between tests would outlive them and
    act on the next tests' rows (and the per-test TRUNCATE deadlocks with its processes)."""
    replicas = request.param
    http_ports = [free_port() for _ in range(replicas)]
    extra = chaos_env(own_redis, tmp_path, http_ports[0])
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    from app.domain import effects
    from config.settings import get_settings
    from workers import celery_app as capp

    get_settings.cache_clear()
    capp.reconfigure()
    previous = effects.set_dispatcher(capp.dispatch_effect)
    s = Stack(dict(os.environ), tmp_path, http_ports, replicas, extra=extra)
    try:
        for i in range(replicas):
            (tmp_path / f"data{i}").mkdir(exist_ok=True)
            mine = {"WARMPOOL_DATA_DIR": str(tmp_path / f"data{i}")}
            s.start(named("api", i), "api", "--host", "127.0.0.1", "--port", str(http_ports[i]),
                    env={**mine, "WARMPOOL_GRPC_PORT": str(free_port())})
            s.start_worker(named("worker", i))
            s.start(named("beat", i), "beat", env=mine)  # replicas > 1: the second beat is the mistake
            s.start(named("events", i), "events")
            s.start(named("observe", i), "observe")
        for port in http_ports:
            wait_for(lambda: _healthy(port), 60, "warmpool api to serve\n" + s.logs("api"))
        yield s
    finally:
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


def provider_work(redis_url: str, world: World) -> dict[str, int]:
    """Resources the fake cloud made, by instance id, as the cloud itself counted them (since it last lost its
    state: read it before a fault that loses the cloud)."""
    import redis

    from workers.providers.fake import FakeCloud

    return FakeCloud(redis.Redis.from_url(redis_url, socket_timeout=2), world.namespace).calls("create")


@dataclass
class Work:
    """Provider work over a whole test: every create the cloud counted, per cloud lifetime, and the instances
    it made more than once (work done twice: two workers, two beats or a redelivery creating one instance)."""

    creates: int = 0
    twice: dict[str, int] = field(default_factory=dict)

    def take(self, redis_url: str, world: World) -> None:
        """Add what the cloud counted since its last loss, then forget it (so nothing is counted twice here)."""
        import redis

        from workers.providers.fake import FakeCloud

        cloud = FakeCloud(redis.Redis.from_url(redis_url, socket_timeout=2), world.namespace)
        counted = cloud.calls("create")
        cloud.r.delete(cloud.calls_key)
        self.creates += sum(counted.values())
        self.twice.update({i: n for i, n in counted.items() if n > 1})


def runner_epoch(world: World) -> int:
    from app.db import session_scope
    from app.domain.epochs import runner_epoch_of

    with session_scope() as s:
        return s.execute(sa.select(runner_epoch_of(world.pool_id))).scalar_one()


def lease(stack: Stack, world: World, tag: str = "chaos", timeout_ms: int = 3000) -> str | None:
    """One Lease over Connect JSON; the instance id, or None if the pool had nothing (or the api said no)."""
    r = httpx.post(f"http://127.0.0.1:{stack.http_port}/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Lease",
                   json={"pool": world.pool_name, "serviceTag": tag}, timeout=10,
                   headers={"authorization": f"Bearer {world.token}", "connect-timeout-ms": str(timeout_ms)})
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
    """From the database and the fake cloud: free ready instances (claimable, epoch included), resources nobody owns (orphans), live rows
    whose resource is gone (ghosts), active leases on lost instances, instances with two active leases."""
    from app.db import session_scope
    from app.domain.epochs import runner_epoch_of
    from app.models import Instance, Lease

    refs = cloud_refs(redis_url, world)
    with session_scope() as s:
        epoch = s.execute(sa.select(runner_epoch_of(world.pool_id))).scalar_one()
        rows = s.execute(sa.select(Instance.id, Instance.state, Instance.provider_ref, Instance.lease_id,
                                   Instance.desired_state, Instance.seen_epoch)
                         .where(Instance.pool_id == world.pool_id)).all()
        active = s.execute(sa.select(Lease.instance_id).where(Lease.pool_id == world.pool_id,
                                                              Lease.state == "active")).scalars().all()
    live_refs = {r.provider_ref for r in rows if r.state != "deleted" and r.provider_ref}
    by_id = {r.id: r for r in rows}
    lost = [i for i in active if by_id[i].state in ("failed", "deleting", "deleted")
            or (by_id[i].provider_ref and by_id[i].provider_ref not in refs)]
    return Figures(
        ready=sum(1 for r in rows if r.state == "running" and r.lease_id is None and r.desired_state == "running"
                  and r.seen_epoch >= epoch),  # claimable: seen running since the last loss or re-list
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


def assert_converges(stack: Stack, redis_url: str, world: World, target: int, since: float, what: str,
                     ends: Callable[[], float] | None = None) -> float:
    """Poll until converged; returns the seconds it took from `since` (the end of the fault), or from what
    `ends()` says once converged when the fault's end is only known later (a replacement process up)."""
    try:
        wait_for(lambda: converged(redis_url, world, target), CONVERGE_SECONDS + (30 if ends else 5), what)
    except AssertionError as exc:
        try:
            now = figures(redis_url, world)
        except Exception as e:  # noqa: BLE001
            now = e
        raise AssertionError(f"{exc}\nfigures: {now}{stack.logs('worker', 'events')}") from None
    took = time.monotonic() - (ends() if ends else since)
    assert took <= CONVERGE_SECONDS, f"{what}: converged only after {took:.1f}s"
    return took


def report(name: str, stack: Stack, times: list[float], work: Work | None) -> None:
    """Print the figures of one fault (the README table is made of these lines) and assert no work twice
    (`work` None: counted with another fault of the same test)."""
    made = f" creates={work.creates} made-twice={len(work.twice)}" if work else ""
    print(f"\nchaos {name} replicas={stack.replicas}: iterations={len(times)} worst convergence={max(times):.2f}s "
          f"mean={sum(times) / len(times):.2f}s orphans=0 ghosts=0 lost-leases=0 doubles=0{made}")
    assert not work or not work.twice, f"{name}: the fake cloud made these instances more than once: {work.twice}"
    assert not stack.dead(), f"{name}: processes died: {stack.dead()}{stack.logs(*stack.dead())}"
