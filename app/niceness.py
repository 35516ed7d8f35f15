"""WARMPOOL_ENGINE__NICE: the engine's processes (`warmpool worker`, `events`, `observe`, `beat`) run at a lower
priority, and so do the PostgreSQL backends that serve them where PostgreSQL runs on the same host, so on a host
the engine shares with `warmpool api` a refill yields the CPU to the Lease path, its database work included."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from config.settings import Settings

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})


def apply_engine_niceness(s: Settings) -> None:
    """This process runs at `s.engine.nice` (at least: a niced parent's is kept); threads started later inherit
    it, and each database connection it opens has its backend niced (`nice_backends`)."""
    nice = s.engine.nice
    if nice <= 0:
        return
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.nice(nice - current)
    # With autogroup scheduling (Linux's default on desktops and many servers), a task's niceness only weighs
    # against the tasks of its own session: the CPU is first shared between sessions. A process leading its
    # session (under systemd, `warmpool dev`'s supervisor, bench/lease.py) has one of its own, so the
    # session's group is niced too; one started from a shell shares its group, where the task's niceness counts.
    group = Path("/proc/self/autogroup")
    if os.getsid(0) == os.getpid() and group.exists():
        try:
            if nice > int(group.read_text().split()[-1]):
                group.write_text(str(nice))
        except (OSError, ValueError):  # no autogroup support: the task's niceness is all there is
            pass
    if not s.is_sqlite:
        nice_backends(s.database_url, nice)


def nice_backends(database_url: str, nice: int) -> bool:
    """Have every connection this process's engine (app.db) opens run its PostgreSQL backend at `nice`, if the
    server is on this host: the engine's passes and recounts run there, and at the api's priority they took the
    CPU the niced engine process had left. Backends share the postmaster's session (autogroup), so niced they
    yield to the api's backends. Returns whether it applies (a server elsewhere: nothing to do)."""
    from sqlalchemy import event
    from sqlalchemy.engine import make_url

    from app.db import get_engine

    if (make_url(database_url).host or "") not in LOCAL_HOSTS:
        return False
    warned: list[bool] = []

    @event.listens_for(get_engine(), "connect")
    def _nice(dbapi_conn: Any, _record: Any) -> None:
        pid = getattr(getattr(dbapi_conn, "info", None), "backend_pid", None)  # psycopg 3: no query needed
        if pid and not renice_backend(int(pid), nice) and not warned:
            warned.append(True)
            log.info("engine niceness: cannot renice PostgreSQL backend %s (another user's process, or another "
                     "host's); the engine's database work keeps its priority", pid)

    return True


def renice_backend(pid: int, nice: int) -> bool:
    """Lower PostgreSQL backend `pid`'s priority to `nice` (never raise it). False if `pid` is not a PostgreSQL
    process of this host (a server in a container has pids of its own) or may not be reniced by this user."""
    try:
        if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres"):
            return False
        if os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:  # gone, or not ours to renice
        return False
    return True
