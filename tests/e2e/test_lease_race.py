"""The lease race and the lease load, end to end, on PostgreSQL and on SQLite: a running `warmpool api`
(gRPC and Connect), a real `warmpool worker`, `events` and `observe` on the fake provider, and 64 clients
(half gRPC, half Connect) per round (WARMPOOL_RACE_ROUNDS rounds of the race, 5 here). Checked from the
database after every round: no instance with two active leases, and no lease that no client received
(every lease ended by a client's Return is one a client got; every other one was given back as
`undelivered`); no reservation left waiting.

The load test runs WARMPOOL_SOAK_ROUNDS rounds per deadline in WARMPOOL_SOAK_DEADLINES (2 rounds at 2.5 s
here; `make soak` runs 20 rounds at 0.5 s and 2.5 s)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.db import reset_engine, session_scope
from app.domain import effects, pools
from app.domain.states import PoolKind
from app.models import Instance, Lease, Pool, Reservation, Runner
from tests.conftest import World, make_catalog, make_org
from tests.e2e.conftest import ROOT, free_port
from tests.e2e.lease_crowd import Crowd, Tally

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CLIENTS = 64
# The suite's smoke runs the race 5 rounds per backend (each round is a full race of 64 clients; on SQLite a
# round costs about 2.5 s under load); `make soak` runs 20.
RACE_ROUNDS = int(os.environ.get("WARMPOOL_RACE_ROUNDS", "5"))
SOAK_ROUNDS = int(os.environ.get("WARMPOOL_SOAK_ROUNDS", "2"))
# The suite's smoke uses the 2.5 s deadline only. At 500 ms on a loaded 2-core machine, an answer the
# server sent in time can still reach its client late (the client then reports deadline_exceeded while
# the server counts the lease delivered): `make soak` runs both deadlines and shows that gap honestly.
SOAK_DEADLINES = tuple(float(d) for d in os.environ.get("WARMPOOL_SOAK_DEADLINES", "2.5").split(","))
FAST = {"boot_ms": 0, "start_ms": 0, "stop_ms": 0, "delete_ms": 0, "reset_ms": 20}


@dataclass
class Stack:
    backend: str
    database_url: str
    redis_url: str
    http: str
    grpc: str
    logs: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def dead(self) -> list[str]:
        return [p.name for p, proc in zip(self.logs, self.procs, strict=True) if proc.poll() is not None]

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]) for p in self.logs)


def _warmpool() -> str:
    exe = Path(sys.executable).with_name("warmpool")
    return str(exe if exe.exists() else ROOT / ".venv/bin/warmpool")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def stack(request, redis_url: str, tmp_path_factory) -> Iterator[Stack]:
    """api + worker + events as real processes on a database of their own (PostgreSQL: a fresh database
    on the test server; SQLite: a fresh file, as `warmpool dev` makes it), migrated to head."""
    from app.migrate import upgrade

    tmp = tmp_path_factory.mktemp(f"race-{request.param}")
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_server_url")
        name = f"warmpool_race_{os.getpid()}"
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = server.rsplit("/", 1)[0] + f"/{name}"
    else:
        url = f"sqlite:///{tmp / 'race.sqlite3'}"
    upgrade(url)
    redis = redis_url.rsplit("/", 1)[0] + "/5"  # its own Redis database: other tests flush theirs
    http, grpc_port = free_port(), free_port()
    env = dict(os.environ, WARMPOOL_ENV="test", WARMPOOL_DATABASE_URL=url, WARMPOOL_REDIS_URL=redis,
               WARMPOOL_DATA_DIR=str(tmp / "data"), WARMPOOL_GRPC_PORT=str(grpc_port), WARMPOOL_LOG_LEVEL="WARNING",
               WARMPOOL_DB_POOL_SIZE="16", WARMPOOL_LEASE_DB_CONCURRENCY="16")  # the claims meet in PostgreSQL
    s = Stack(request.param, url, redis, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}")
    commands = {"api": ["api", "--host", "127.0.0.1", "--port", str(http)],
                "worker": ["worker", "--concurrency", "8"], "events": ["events"],
                "observe": ["observe"]}  # the fake cloud boots on its own; the observer reports it
    procs = s.procs
    try:
        for name, args in commands.items():
            log = tmp / f"{name}.log"
            s.logs.append(log)
            with log.open("wb") as out:
                procs.append(subprocess.Popen([_warmpool(), *args], cwd=tmp, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), s.tail()
            try:
                if httpx.get(s.http + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"warmpool api did not answer within 60 s:\n{s.tail()}")
        yield s
    finally:
        _stop(procs)
    assert "Traceback" not in s.logs[0].read_text(errors="replace"), s.tail()


@pytest.fixture
def world(stack: Stack, monkeypatch) -> Iterator[World]:
    """This process on the stack's database and Redis (to set up and to check), with an organization
    whose runner is the fake cloud, fast; committed effects go to the real worker through Celery."""
    from app import auth
    from config.settings import get_settings
    from workers.celery_app import dispatch_effect, reconfigure

    # A stack a failed test left without one of its processes, or with an api that cannot reach its database,
    # fails the next test here, not 60 s later.
    import httpx

    assert not stack.dead(), f"{stack.dead()} exited:\n{stack.tail()}"
    ready = httpx.get(stack.http + "/readyz", timeout=30)
    assert ready.status_code == 200, f"the stack's api is not ready: {ready.text}\n{stack.tail()}"
    monkeypatch.setenv("WARMPOOL_DATABASE_URL", stack.database_url)
    monkeypatch.setenv("WARMPOOL_REDIS_URL", stack.redis_url)
    get_settings.cache_clear()
    reset_engine()
    auth.clear_cache()
    reconfigure()
    previous = effects.set_dispatcher(dispatch_effect)
    w = make_catalog(make_org(f"race-{uuid.uuid4().hex[:8]}"), provider="fake")
    with session_scope() as s:
        s.get(Runner, w.runner_id).settings = dict(FAST, namespace=f"race-{uuid.uuid4().hex[:8]}")
    yield w
    effects.set_dispatcher(previous)
    reset_engine()
    get_settings.cache_clear()


def warm_pool(w: World, size: int, max_size_override: int | None = None, **fields) -> Pool:
    with session_scope() as s:
        pool = pools.new_pool(w.org_id, kind=PoolKind.NAMED, name=f"p-{uuid.uuid4().hex[:8]}", min_size=size,
                              max_size=max_size_override or size, runner_id=w.runner_id, stopped_size=0, **fields)
        pool = pools.insert_pool(pool, session=s, conflict="exists")
        pools.request_reconcile(pool, session=s)
    return pool


def ready_count(pool_id: str) -> int:
    with session_scope() as s:
        return s.execute(sa.select(sa.func.count()).select_from(Instance).where(
            Instance.pool_id == pool_id, Instance.state == "running", Instance.lease_id.is_(None),
            Instance.draining == sa.false())).scalar_one()


def census(pool_id: str) -> Counter:
    """The pool's instances by (state, desired state, draining, leased): what a failed wait_ready saw."""
    with session_scope() as s:
        rows = s.execute(sa.select(Instance.state, Instance.desired_state, Instance.draining, Instance.lease_id)
                         .where(Instance.pool_id == pool_id)).all()
    return Counter((r.state, r.desired_state, "draining" if r.draining else "", "leased" if r.lease_id else "")
                   for r in rows)


def wait_ready(stack: Stack, pool: Pool, n: int, timeout: float = 60, when: str = "") -> None:
    deadline = time.monotonic() + timeout
    while ready_count(pool.id) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"pool never had {n} ready instances {when}(has {ready_count(pool.id)}; instances by state: "
                        f"{dict(census(pool.id))}; exited: {stack.dead()}):\n{stack.tail()}")
        time.sleep(0.05)


def doubles(pool_id: str) -> list[str]:
    with session_scope() as s:
        return list(s.execute(sa.select(Lease.instance_id).where(Lease.pool_id == pool_id, Lease.state == "active")
                              .group_by(Lease.instance_id).having(sa.func.count() > 1)).scalars())


def active(pool_id: str) -> list[tuple[str, object]]:
    with session_scope() as s:
        return [tuple(r) for r in s.execute(sa.select(Lease.instance_id, Lease.expires_at)
                                            .where(Lease.pool_id == pool_id, Lease.state == "active")).all()]


# ---- the race -------------------------------------------------------------------------------------

def test_64_clients_race_for_n_instances_over_grpc_and_connect(stack, world):
    """`reject` pool: each round the N ready instances go to N clients (and backfill to a few more), the
    rest get resource_exhausted; no instance ever has two active leases, and the active leases are
    exactly the ones clients received."""
    n = 8 if stack.backend == "postgresql" else 4  # SQLite's one writer makes each round's backfill slower
    pool = warm_pool(world, n, empty_policy="reject")
    crowd = Crowd(CLIENTS, stack.grpc, stack.http, world.token)
    try:
        for rnd in range(RACE_ROUNDS):
            wait_ready(stack, pool, n, when=f"before round {rnd} ")
            tally = crowd.round(pool.name, timeout=10, give_back=False)
            assert doubles(pool.id) == [], (stack.backend, rnd)
            # The N ready ones all go; the backfill the first claims trigger may serve a few more callers
            # before the round is over (fast fake boots): never the same instance twice.
            ok = tally.outcomes["ok"]
            assert ok >= n and tally.outcomes == {"ok": ok, "resource_exhausted": CLIENTS - ok}, \
                (stack.backend, rnd, tally.outcomes)
            got = {(g.instance, g.expires) for g in tally.received}
            assert len({g.instance for g in tally.received}) == ok
            assert set(active(pool.id)) == got, (stack.backend, rnd)
            for g in tally.received:
                assert crowd.give_back(g) == "ok"
    finally:
        crowd.close()


# ---- a cancelled waiting Lease ----------------------------------------------------------------------

def test_a_waiting_lease_whose_client_leaves_ends_with_one_outcome(stack, world):
    """A client waits on an empty `reserve` pool and hangs up; an instance is served meanwhile or after:
    the instance ends up free (or with a caller who got it), never leased to nobody."""
    pool = warm_pool(world, 0, empty_policy="reserve", max_size_override=2)
    crowd = Crowd(8, stack.grpc, stack.http, world.token)
    try:
        # Every caller gives up at 1 s. Shorter deadlines widen the README's known gap (Known gap, under "make soak"):
        # a request that reaches a stalled api after its caller left is served as new, and were the pool filled by
        # then, its lease would be answered to nobody; this test is about the server's own give-backs.
        tally = crowd.round(pool.name, timeout=1.0, give_back=False)
        assert set(tally.outcomes) <= {"unavailable", "deadline_exceeded"}, tally.outcomes
        with session_scope() as s:
            p = s.get(Pool, pool.id)
            p.min_size = p.max_size = p.desired_size = 2
            pools.request_reconcile(p, session=s)
        wait_ready(stack, pool, 2)
        # A call the server took after its caller left may still claim one of them (its first unit of work
        # ran late on a loaded machine): the server gives it back once it sees the answer time has passed.
        assert_nothing_leased(pool.id)
        assert_no_waiting_reservation(pool.id)
    finally:
        crowd.close()


def assert_nothing_leased(pool_id: str, timeout: float = 30) -> None:
    """No active lease on the pool, once the server's give-backs have landed (each waits at most for SQLite's
    30 s busy timeout). On failure: each lease's tag (client-<even> is gRPC, client-<odd> Connect) and times."""
    deadline = time.monotonic() + timeout
    while active(pool_id) != []:
        if time.monotonic() > deadline:
            with session_scope() as s:
                left = s.execute(sa.select(Lease.service_tag, Lease.created_at, Lease.reservation_id, Lease.instance_id)
                                 .where(Lease.pool_id == pool_id, Lease.state == "active")).all()
                ready = s.execute(sa.select(Instance.id, Instance.ready_at).where(Instance.pool_id == pool_id)).all()
            pytest.fail(f"leased to nobody: {[tuple(r) for r in left]}; instances ready at {[tuple(r) for r in ready]}")
        time.sleep(0.05)


def assert_no_waiting_reservation(pool_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as s:
            waiting = s.execute(sa.select(sa.func.count()).select_from(Reservation).where(
                Reservation.pool_id == pool_id, Reservation.state == "waiting")).scalar_one()
        if waiting == 0:
            return
        assert time.monotonic() < deadline, f"{waiting} reservations left waiting without a caller"
        time.sleep(0.05)


# ---- the load -------------------------------------------------------------------------------------

def leases_nobody_received(pool_id: str, received: set[tuple[str, object]], timeout: float = 15) -> tuple[int, Counter]:
    """Once every client has returned what it got: leases still active, or ended by a Return no client
    could have made (a lease no client received), after giving the server's give-backs time to land."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as s:
            rows = s.execute(sa.select(Lease.instance_id, Lease.expires_at, Lease.state, Lease.end_reason)
                             .where(Lease.pool_id == pool_id)).all()
        reasons = Counter(r.end_reason or r.state for r in rows)
        stray = [r for r in rows if (r.state == "active" or r.end_reason != "undelivered")
                 and (r.instance_id, r.expires_at) not in received]
        still_active = [r for r in rows if r.state == "active"]
        if not stray and not still_active:
            return 0, reasons
        if time.monotonic() > deadline:
            return len(stray) + len(still_active), reasons
        time.sleep(0.1)


@pytest.mark.parametrize("reuse", [False, True], ids=["pool", "reuse-pool"])
def test_load_with_short_deadlines_leaves_no_lease_to_nobody(stack, world, reuse):
    """64 clients per round against 10 ready instances, with 500 ms and 2.5 s deadlines: each returns at
    once what it got, so callers waiting on automatic reservations are served meanwhile."""
    n = 10
    pool = warm_pool(world, n, empty_policy="reserve", reuse=reuse)
    crowd = Crowd(CLIENTS, stack.grpc, stack.http, world.token)
    seen: Counter = Counter()
    by_transport: Counter = Counter()
    received: set = set()
    try:
        for deadline in SOAK_DEADLINES:
            for rnd in range(SOAK_ROUNDS):
                wait_ready(stack, pool, n, when=f"before {deadline} s round {rnd} ")
                tally: Tally = crowd.round(pool.name, timeout=deadline, give_back=True)
                seen.update(tally.outcomes)
                by_transport.update({f"{deadline}s {k}": v for k, v in tally.by_transport.items()})
                received |= {(g.instance, g.expires) for g in tally.received}
                assert doubles(pool.id) == [], (stack.backend, deadline, rnd)
                assert tally.outcomes["return:ok"] == tally.outcomes["ok"], tally.outcomes
        leaked, reasons = leases_nobody_received(pool.id, received)
        assert_no_waiting_reservation(pool.id)
    finally:
        crowd.close()
    # The figures (make soak prints them): a deadline_exceeded is a call the server answered too late for
    # its client, which on a loaded machine happens (the answer leaves a margin, not a guarantee); what
    # must never happen is a lease nobody received.
    print(f"\n{stack.backend} reuse={reuse} rounds={SOAK_ROUNDS}: {dict(sorted(by_transport.items()))}; "
          f"leases by how they ended {dict(reasons)}; leases nobody received: {leaked}")
    assert leaked == 0, (dict(seen), dict(reasons))
    assert seen["ok"] > 0
