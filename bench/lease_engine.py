"""bench/lease.py's measurements that need more than seeded rows: a pod pool the engine filled, and the
reservation wake-up latency (instance ready -> the waiting Lease call's answer)."""
from __future__ import annotations

import gc
import json
import multiprocessing
import statistics
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE = "intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"


def _post(url: str, token: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (api workers, Celery's pool, PostgreSQL backends)."""
    from bench.stack import _children, _cpu

    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _cpu(p)
        todo.extend(_children(p))
    return total


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: _tree_cpu(pid) for name, pid in pids.items()}


def lease_tally(pool_id: str) -> dict[str, int]:
    """The pool's leases so far, and how many of them a reservation served (the pool was empty: the call
    waited for the engine's refill)."""
    import sqlalchemy as sa

    from app.db import session_scope
    from app.models import Lease

    with session_scope() as s:
        total, reserved = s.execute(sa.select(sa.func.count(), sa.func.count(Lease.reservation_id))
                                    .where(Lease.pool_id == pool_id)).one()
    return {"leases": total, "reserved": reserved}


def _ready(pool_id: str) -> int:
    import sqlalchemy as sa

    from app.db import session_scope
    from app.domain.claims import READY
    from app.models import Instance

    with session_scope() as s:
        return s.execute(sa.select(sa.func.count()).select_from(Instance)
                         .where(Instance.pool_id == pool_id, READY)).scalar_one()


def settle(timeout: float = 120) -> float:
    """Wait until the engine has nothing queued or in hand (every Celery queue empty, no task reserved by a
    worker, no instance event unread or unacknowledged), so a measurement does not share the machine with the
    backlog of the one before (the destroys of the Returns just measured, the last run's refill); seconds waited."""
    from app import events
    from config.celery import ALL_QUEUES
    from config.settings import get_settings

    r = events.redis_client()
    e = get_settings().engine
    began = time.monotonic()
    quiet = 0
    while quiet < 3:  # three looks in a row, 0.1 s apart: a task between two queues is not missed
        busy = sum(r.llen(q) for q in ALL_QUEUES) + r.hlen("unacked")
        if r.exists(e.events_stream):
            for group in r.xinfo_groups(e.events_stream):
                busy += int(group.get("pending") or 0) + int(group.get("lag") or 0)
        quiet = quiet + 1 if busy == 0 else 0
        if time.monotonic() - began > timeout:
            raise SystemExit(f"the engine still had {busy} tasks and events in hand after {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - began


@dataclass
class PodPool:
    name: str
    pool_id: str
    size: int
    logdir: Path

    def refill(self, timeout: float = 600) -> float:
        """Wait until the engine has the pool back at its size (it backfills what the last run leased) and has
        nothing else in hand (settle); seconds waited."""
        began = time.monotonic()
        deadline = began + timeout
        while _ready(self.pool_id) < self.size:
            if time.monotonic() > deadline:
                raise SystemExit(f"the pod pool has {_ready(self.pool_id)}/{self.size} ready after {timeout:.0f} s; "
                                 f"see {self.logdir}")
            time.sleep(0.2)
        settle(max(deadline - time.monotonic(), 1.0))
        return time.monotonic() - began


def fill_pod_pool(org_id: str, token: str, port: int, size: int, logdir: Path) -> PodPool:
    """A pod pool of `size` (POST /serverless/v1/podpools, as a user makes one) on a fake-cloud runner,
    filled by the engine processes bench/lease.py started."""
    from app.db import session_scope
    from app.domain import tenancy
    from app.models import Pool
    from workers.providers.catalog import install as install_catalog

    install_catalog()
    with session_scope() as s:
        tenancy.create_runner(org_id, "bench-fake", "fake", {"namespace": "bench", "boot_ms": 20, "start_ms": 10,
                                                            "stop_ms": 5, "delete_ms": 5}, session=s)
    name = "bench-pods"
    status, body = _post(f"http://127.0.0.1:{port}/serverless/v1/podpools", token, {"pools": [
        {"id": name, "group": "default", "size": size, "max_size": size, "reuse": False,
         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]})
    if status != 200 or body.get("code") not in (None, 0):
        raise SystemExit(f"could not create the pod pool: {status} {body}")
    import sqlalchemy as sa

    with session_scope() as s:
        pool_id = s.execute(sa.select(Pool.id).where(Pool.organization_id == org_id, Pool.name == name)).scalar_one()
    began = time.monotonic()
    pods = PodPool(name, pool_id, size, logdir)
    pods.refill()
    print(f"pod pool {name!r}: {size} instances filled by the engine in {time.monotonic() - began:.1f} s")
    return pods


def time_wakeups(port: int, n: int) -> dict:
    """`n` times, in an organization and pool of their own: a Lease call waits on its reservation on an empty pool; a starting instance is observed
    running and the applier's step for that event hands it over (app.domain.instances.apply_event: the
    compare-and-set to running and reservations.assign_ready_instance in one transaction, the wake-up
    published after commit, as workers/events.py does for an event); measured from the start of that step
    to the waiting call's answer (one clock: same machine)."""
    from app.db import session_scope
    from app.domain import effects, pools, quotas, tenancy, tokens
    from app.domain.states import PoolKind
    from app.heap import freeze_startup_heap
    from workers.celery_app import dispatch_effect, reconfigure

    reconfigure()
    effects.set_dispatcher(dispatch_effect)
    # The hand-made instances must be left alone by an engine running beside (bench/lease.py --pods): a pass
    # of the pool (the previous wake-up's backfill ask) removes a free instance above the pool's target
    # before it is ready, and the call then waits for nothing. So the pool's target covers every instance
    # made here, and its organization (of its own) may create none (max_creating 0): a pass finds nothing to
    # remove and nothing to make.
    with session_scope() as s:
        org = tenancy.ensure_organization("bench-wake", session=s)
        _, token = tokens.create_token(org, session=s, scope=tokens.Scope.MEMBER)
        org_id = org.id
        quotas.set_quota(org_id, max_creating=0, max_pool_size=n + 2, max_instances=n + 2, session=s)
        pool = pools.insert_pool(pools.new_pool(org_id, kind=PoolKind.NAMED, name="bench-wake", min_size=n + 2,
                                                max_size=n + 2, empty_policy="reserve", idle_recycle_scaled=-1,
                                                stopped_size=0),
                                 session=s, conflict="exists")
    url = f"http://127.0.0.1:{port}/api/{SERVICE}/Lease"
    # The waiting caller is a process of its own, as a client is: in this one, its answer would queue for
    # the interpreter behind the applier's own after-commit work. Both read the same clock (CLOCK_MONOTONIC).
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    caller = ctx.Process(target=_wake_caller, args=(theirs, url, token), daemon=True)
    caller.start()
    waits: list[float] = []
    steps: list[float] = []  # of which the applier's transaction, to its commit
    collected: list[float] = []  # and of that, this process's garbage collections
    # The applier's step runs in this process, whose heap holds the whole benchmark so far: frozen, as
    # `warmpool events` freezes its start-up heap (app.heap), so a full collection walks what an applier's would.
    freeze_startup_heap()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        for i in range(n + 2):  # the first two warm the server's wake-up path and are not counted
            pauses.total = 0.0
            wait = _one_wakeup(ours, org_id, pool, f"wake-{i}")
            if i >= 2:
                waits.append(wait[0])
                steps.append(wait[1])
                collected.append(pauses.total * 1000)
    finally:
        gc.callbacks.remove(pauses)
        ours.send(None)
        caller.join(10)
    worst = max(range(len(waits)), key=waits.__getitem__)
    waits_sorted = sorted(waits)
    return {"p50": statistics.median(waits),
            "p99": waits_sorted[min(len(waits) - 1, round(0.99 * (len(waits) - 1)))],
            "max": waits[worst], "step_p50": statistics.median(steps), "step_max": max(steps),
            "worst_step": steps[worst], "worst_gc": collected[worst], "gc_max": max(collected)}


class GcPauses:
    """A gc.callbacks entry: the seconds this process spent collecting garbage since `total` was reset."""

    def __init__(self) -> None:
        self.total = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._began


def _wake_caller(conn: Any, url: str, token: str) -> None:
    """The waiting client: for each reservation id it is sent, one Lease call; it answers (status, the
    monotonic time the answer arrived)."""
    while (rid := conn.recv()) is not None:
        status, _ = _post(url, token, {"pool": "bench-wake", "reservationId": rid})
        conn.send((status, time.monotonic()))


def _one_wakeup(caller: Any, org_id: str, pool: Any, rid: str) -> tuple[float, float]:
    """(ms from the applier's step to the answer, ms of that step's transaction) for one waiting call."""
    from app.db import session_scope
    from app.domain import instances
    from app.domain.events import InstanceEvent
    from app.models import Instance, Reservation
    from workers.celery_app import dispatch_effects

    caller.send(rid)
    deadline = time.monotonic() + 10
    while True:  # the call is waiting once its reservation is queued
        with session_scope() as s:
            res = s.query(Reservation).filter_by(organization_id=org_id, client_id=rid).first()
            if res is not None and res.state == "waiting":
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"reservation {rid} never queued")
        time.sleep(0.01)
    with session_scope() as s:  # booting: not ready yet, and not on the clock
        inst = Instance(pool_id=pool.id, organization_id=org_id, provider="fake", state="starting",
                        desired_state="running")
        s.add(inst)
    ready = InstanceEvent(instance_id=inst.id, pool_id=pool.id, state="running")
    time.sleep(0.05)  # the server is in its wait, not still answering the first unit of work
    committed: list[float] = []

    def after_commit(done: list) -> None:
        committed.append(time.monotonic())
        dispatch_effects(done)  # as the applier sends them: the wake-ups first, in one pipeline

    began = time.monotonic()
    with session_scope(after_commit=after_commit) as s:
        instances.apply_event(ready, session=s)
    if not caller.poll(15):
        with session_scope() as s:
            got = s.get(Instance, inst.id)
            res = s.query(Reservation).filter_by(organization_id=org_id, client_id=rid).first()
            raise SystemExit(f"wake-up call {rid} did not answer (instance {got.state}/{got.desired_state}, "
                             f"lease {got.lease_id}; reservation {res.state if res else None})")
    status, at = caller.recv()
    if status != 200:
        raise SystemExit(f"wake-up call {rid} answered {status}")
    return (at - began) * 1000, (committed[0] - began) * 1000


class ActivitySampler:
    """What PostgreSQL's backends are doing, sampled every `every` seconds while it runs (bench/lease.py --diagnose):
    counts of (who: the process's role, see bench/pg_statements.py; state, wait event and who holds the lock waited
    on, the statement's first words), to see who waits on whom."""

    def __init__(self, every: float = 0.05) -> None:
        import collections
        import threading

        self.every = every
        self.counts: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import sqlalchemy as sa

        from app.db import get_engine

        with get_engine().connect() as conn:
            while not self._stop.wait(self.every):
                for row in conn.execute(sa.text(
                        "SELECT regexp_replace(usename, '^wp_', '') AS who, state, "
                        "coalesce(wait_event_type, '') || ':' || coalesce(wait_event, '') || CASE WHEN wait_event_type = 'Lock' "
                        "THEN coalesce(' <- ' || (SELECT string_agg(DISTINCT regexp_replace(b.usename, '^wp_', ''), ',') "
                        "FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))), '') ELSE '' END AS w, "
                        "left(regexp_replace(query, '\\s+', ' ', 'g'), 60) AS q FROM pg_stat_activity a "
                        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'")):
                    self.counts[(row.who, row.state, row.w, row.q)] += 1
                conn.rollback()

    def report(self, top: int = 15) -> str:
        return "\n".join(f"    {n:5d}  {who:<8} {state:<20} {w:<36} {q}" for (who, state, w, q), n in self.counts.most_common(top))
