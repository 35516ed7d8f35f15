"""Process supervision for `warmpool dev`: a child that dies is restarted with backoff, and nothing the
supervisor starts outlives it, even when it is SIGKILLed.

- Each child runs in a process group of its own (the supervisor stops the group, so a child's own
  children go too) and gets a parent-death signal (Linux prctl PR_SET_PDEATHSIG): when the supervisor
  dies, however it dies, the kernel sends the child SIGTERM and the child shuts down with its group.
- Every child's pid and start time go to a pidfile under the data dir. On start, groups a killed run
  left behind (same pid *and* same start time, so a reused pid is never touched) are stopped; if that
  run's supervisor is itself still alive, starting is refused instead.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: a new session (its own group), and `sig` when the process that started it dies."""
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):  # not Linux: the process group and the pidfile still apply
        prctl = None

    def preexec() -> None:
        os.setsid()
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
            if os.getppid() != parent:  # the parent died between fork and prctl
                os.kill(os.getpid(), sig)

    return preexec


def stop_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL it if it is still there after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            try:  # our own child: reap it, or the group never empties
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)


class AlreadyRunning(RuntimeError):
    pass


class PidFile:
    """{supervisor: [pid, start], children: {name: [pid, start]}} of the current run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.children: dict[str, list[int]] = {}

    def reap_leftovers(self) -> list[str]:
        """Stop what an earlier, killed run left; returns the names stopped. AlreadyRunning if that run lives."""
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        pid, started = old.get("supervisor", [0, 0])
        if pid and pid != os.getpid() and start_time(pid) == started:
            raise AlreadyRunning(f"another warmpool dev (pid {pid}) is running on this data dir ({self.path.parent})")
        reaped = []
        for name, (cpid, cstart) in old.get("children", {}).items():
            if start_time(cpid) == cstart:
                stop_group(cpid, timeout=5.0)
                reaped.append(name)
        self.path.unlink(missing_ok=True)
        return reaped

    def record(self, name: str, pid: int) -> None:
        self.children[name] = [pid, start_time(pid) or 0]
        self._write()

    def _write(self) -> None:
        me = os.getpid()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"supervisor": [me, start_time(me) or 0], "children": self.children}))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive quick deaths, for the backoff
    restart_at: float | None = None
    restarts: int = 0
    log: list[str] = field(default_factory=list)


class Supervisor:
    """Start children, restart the ones that die (backoff doubling from `backoff_base` to `backoff_max`;
    a child that ran `stable_after` seconds starts again from the base), stop them all."""

    def __init__(self, env: dict[str, str], pidfile: PidFile, *, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, stable_after: float = 60.0,
                 say: Callable[[str], Any] = lambda m: print(m, file=sys.stderr, flush=True)) -> None:
        self.env, self.pidfile, self.say = env, pidfile, say
        self.backoff_base, self.backoff_max, self.stable_after = backoff_base, backoff_max, stable_after
        self.children: dict[str, Child] = {}

    def add(self, name: str, argv: list[str]) -> None:
        self.children[name] = Child(name, argv)

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self.env, preexec_fn=die_with_parent())  # noqa: PLW1509
        child.started_at = time.monotonic()
        child.restart_at = None
        self.pidfile.record(child.name, child.proc.pid)

    def start_all(self) -> None:
        for child in self.children.values():
            self._spawn(child)

    def tick(self) -> None:
        """Notice deaths, schedule restarts, carry out the ones due."""
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._spawn(child)
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            ran = now - child.started_at
            child.failures = 0 if ran >= self.stable_after else child.failures + 1
            delay = min(self.backoff_base * (2 ** max(child.failures - 1, 0)), self.backoff_max)
            child.restart_at = now + delay
            stop_group(child.proc.pid, timeout=2.0)  # whatever it left in its group goes with it
            self.say(f"warmpool dev: {child.name} exited with {child.proc.returncode} after {ran:.1f}s; "
                     f"restarting it in {delay:.1f}s")

    def stop_all(self, timeout: float = 10.0) -> None:
        live = [c.proc for c in self.children.values() if c.proc is not None]
        for proc in live:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            stop_group(proc.pid, timeout=0.5)
