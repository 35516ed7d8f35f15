"""WARMPOOL_ENGINE__NICE: real `warmpool worker`, `events`, `observe` and `beat` processes run (every thread,
and their session's autogroup where the kernel has one) at that niceness, and so do their PostgreSQL backends
on this host; a `warmpool api` started with the same environment and its backends do not."""
from __future__ import annotations

import os
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port
from tests.integration.test_engine_processes import Processes, wait_for

NICE = 7


def niceness(pid: int) -> dict[int, int]:
    """Niceness of each thread of a process (field 19 of /proc/PID/task/TID/stat; the name may hold spaces)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        found[int(task.name)] = int(fields[16])
    return found


def group_nice(pid: int) -> int | None:
    """The niceness of the process's autogroup (/proc/PID/autogroup: "/autogroup-N nice X"), None without one."""
    group = Path(f"/proc/{pid}/autogroup")
    return int(group.read_text().split()[-1]) if group.exists() else None


def _backends() -> dict[int, str]:
    """The PostgreSQL backends of this test's database, by pid, with the application name they gave."""
    import sqlalchemy as sa

    from app.db import get_engine

    with get_engine().connect() as conn:
        return {pid: name for pid, name in conn.execute(sa.text(
            "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend'"))}


def tree(pid: int) -> list[int]:
    """A process and its descendants (the api's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.fixture
def procs(db, redis_client, tmp_path):
    env = {**os.environ, "WARMPOOL_ENGINE__NICE": str(NICE), "WARMPOOL_LOG_LEVEL": "WARNING",
           "WARMPOOL_GRPC_PORT": str(free_port())}
    p = Processes(env, tmp_path)
    yield p
    p.stop_all()


def test_engine_processes_run_niced_and_the_api_does_not(procs):
    own = os.getpriority(os.PRIO_PROCESS, 0)  # a niced test run starts everything niced: only more is asked
    engine_nice = max(NICE, own)
    hostname = f"nice-{uuid.uuid4().hex[:6]}@test"
    started = {
        "worker": procs.start("worker", "worker", "--concurrency", "2", "--hostname", hostname),
        "events": procs.start("events", "events"),
        "observe": procs.start("observe", "observe"),
        "beat": procs.start("beat", "beat"),
    }
    port = free_port()
    api = procs.start("api", "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")

    from workers.celery_app import celery_app, reconfigure

    reconfigure()
    # The worker serves (it answers a ping, its consumer and pool threads are up) and every thread of it,
    # including those started after the setting was applied, runs at the niceness asked.
    wait_for(lambda: celery_app.control.ping(destination=[hostname], timeout=0.5), 90, f"{hostname} to answer a ping")
    for name, proc in started.items():
        assert proc.poll() is None, f"{name} exited:\n{procs.log(name)}"
        # Every thread, and the process's session group: each was started in a session of its own (as under
        # systemd or `warmpool dev`), and with autogroup scheduling only the group's niceness weighs against
        # the api's (a new session's group starts at 0).
        wait_for(lambda pid=proc.pid: set(niceness(pid).values()) == {engine_nice} and group_nice(pid) in (None, NICE),
                 30, f"every thread and the session group of {name} at niceness {engine_nice}")
    assert len(niceness(started["worker"].pid)) > 1  # threads started after the process reniced itself

    def healthy() -> bool:
        assert api.poll() is None, f"api exited:\n{procs.log('api')}"
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
        except OSError:
            return False

    wait_for(healthy, 90, "the api to answer /healthz")
    # Their PostgreSQL backends too, where the server runs on this host (the suite's does): named by the
    # process they serve; the api's keep their priority.
    # The observer holds a connection from its start; the worker opens one for its first task.
    celery_app.send_task("warmpool.reconcile_pool", kwargs={"pool_id": "no-such-pool"})
    wanted = {"warmpool worker", "warmpool observe"}
    wait_for(lambda: wanted <= set(_backends().values()), 30, f"backends of {sorted(wanted)}")
    backends = _backends()
    engine = {pid for pid, name in backends.items() if name in ("warmpool worker", "warmpool events",
                                                                "warmpool observe", "warmpool beat")}
    postmaster = int(Path(f"/proc/{next(iter(backends))}/stat").read_text().rsplit(")", 1)[1].split()[1])
    base = os.getpriority(os.PRIO_PROCESS, postmaster)  # what every backend starts at
    assert all(set(niceness(pid).values()) == {max(NICE, base)} for pid in engine), \
        {backends[p]: niceness(p) for p in engine}
    api_backends = [pid for pid, name in backends.items() if name == "warmpool api"]
    assert api_backends, backends
    assert all(set(niceness(pid).values()) == {base} for pid in api_backends), {p: niceness(p) for p in api_backends}
    api_threads = {pid: niceness(pid) for pid in tree(api.pid)}
    assert all(set(n.values()) == {own} for n in api_threads.values()), api_threads
    assert group_nice(api.pid) in (None, 0), "the api's session group was niced"
