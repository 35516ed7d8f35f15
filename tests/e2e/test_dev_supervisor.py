"""`warmpool dev` as a supervisor: a child that dies is restarted (the rest keep running), and nothing it
started outlives it when it is SIGKILLed (its private redis-server included); a next run stops what a
killed one left, found through the pidfile."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.supervise import start_time
from tests.e2e.test_dev import free_port


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_dev(tmp: Path, log_name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMPOOL_")}
    env.update(WARMPOOL_HTTP_PORT=str(free_port()), WARMPOOL_GRPC_PORT=str(free_port()),
               WARMPOOL_FLOWER__PORT=str(free_port()), WARMPOOL_DATA_DIR=str(tmp / "data"),
               WARMPOOL_DATABASE_URL=f"sqlite:///{tmp}/data/wp.sqlite3", WARMPOOL_LOG_LEVEL="WARNING")
    log = open(tmp / log_name, "w")
    return subprocess.Popen([str(Path(sys.executable).with_name("warmpool")), "dev", "--embedded-redis", "server"],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def recorded(tmp: Path) -> dict[str, list[int]]:
    try:
        return json.loads((tmp / "data" / "dev.pids").read_text())["children"]
    except (OSError, ValueError, KeyError):
        return {}


def alive(pid: int, started: int) -> bool:
    return start_time(pid) == started


def group_members(pgids: set[int]) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) in pgids:
                    members.add(int(entry.name))
            except OSError:
                pass
    return members


CHILDREN = {"api", "worker", "beat", "events", "flower", "redis-server"}


def test_children_restart_and_nothing_outlives_a_killed_dev(tmp_path):
    dev = start_dev(tmp_path, "dev.log")
    try:
        pids = wait_for(lambda: (lambda r: r if CHILDREN <= set(r) else None)(recorded(tmp_path)), 60,
                        "every child recorded")
        for name in ("events", "worker"):
            old = pids[name]
            os.kill(old[0], signal.SIGKILL)
            pids = wait_for(lambda: (lambda r: r if r[name] != old and alive(*r[name]) else None)(recorded(tmp_path)),
                            20, f"{name} restarted")
            assert dev.poll() is None, (tmp_path / "dev.log").read_text()[-2000:]
        assert all(alive(*pids[n]) for n in CHILDREN), "a child was stopped with the one that died"
        log = (tmp_path / "dev.log").read_text()
        assert "events exited with -9" in log and "restarting it in" in log, log[-2000:]
        dev.send_signal(signal.SIGKILL)
        dev.wait(10)
        groups = {pid for pid, _ in pids.values()}
        wait_for(lambda: not any(alive(*p) for p in pids.values()) and not group_members(groups), 30,
                 f"every child of the killed dev gone: {[n for n, p in pids.items() if alive(*p)]}")
    finally:
        if dev.poll() is None:
            dev.kill()

    # A leftover of an earlier run (say, one that ran before parent-death signals): the next start stops it.
    leftover = subprocess.Popen(["sleep", "600"], start_new_session=True)
    dead_supervisor = subprocess.Popen(["true"])
    dead_supervisor.wait()
    (tmp_path / "data" / "dev.pids").write_text(json.dumps({
        "supervisor": [dead_supervisor.pid, 1], "children": {"worker": [leftover.pid, start_time(leftover.pid)]}}))
    dev = start_dev(tmp_path, "dev2.log")
    try:
        wait_for(lambda: leftover.poll() is not None, 30, "the leftover stopped by the next run")
        wait_for(lambda: CHILDREN <= set(recorded(tmp_path)), 60, "the second run's children")
        assert "stopped what an earlier run left running: worker" in (tmp_path / "dev2.log").read_text()
        # and a second dev on the same data dir is refused while this one runs
        second = start_dev(tmp_path, "dev3.log")
        assert second.wait(60) == 1
        assert "is running on this data dir" in (tmp_path / "dev3.log").read_text()
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(60)
    pids = {n: p for n, p in recorded(tmp_path).items()}
    assert not pids, "a clean stop removes the pidfile"
