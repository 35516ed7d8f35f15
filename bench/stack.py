"""What the engine benchmarks share: throwaway PostgreSQL + Redis, the warmpool processes, a bench tenant."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.testenv import Postgres, Redis  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    """The 1, 5 and 15 minute load averages, and the cores they share."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


class Stack:
    """PostgreSQL, Redis and `warmpool <process>`es, with this process pointed at the same servers."""

    def __init__(self, **env: str) -> None:
        self.pg, self.rd = Postgres(), Redis()
        self.procs: dict[str, subprocess.Popen] = {}
        self.logdir = Path(tempfile.mkdtemp(prefix="warmpool-bench-"))
        self.exe = str(Path(sys.executable).with_name("warmpool"))
        self.extra = env
        self.env: dict[str, str] = {}

    def __enter__(self) -> Stack:
        db_url, redis_url = self.pg.start(), self.rd.start()
        self.env = {**os.environ, "WARMPOOL_DATABASE_URL": db_url, "WARMPOOL_REDIS_URL": redis_url,
                    "WARMPOOL_HTTP_PORT": str(free_port()), "WARMPOOL_GRPC_PORT": str(free_port()),
                    "WARMPOOL_LOG_LEVEL": "WARNING", "WARMPOOL_ENV": "test",
                    "WARMPOOL_SECRET_KEYS": os.environ.get("WARMPOOL_SECRET_KEYS") or Fernet.generate_key().decode(),
                    **self.extra}
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("WARMPOOL_")})
        subprocess.run([self.exe, "migrate"], env=self.env, check=True, stdout=subprocess.DEVNULL)
        from app.domain import effects
        from config.settings import get_settings
        from workers.celery_app import dispatch_effect, reconfigure

        get_settings.cache_clear()
        reconfigure()
        effects.set_dispatcher(dispatch_effect)  # this process's commits enqueue, as the API's do
        return self

    def start(self, name: str, *args: str, **env: str) -> None:
        self.procs[name] = subprocess.Popen(
            [self.exe, *args], env={**self.env, **env}, stdout=open(self.logdir / f"{name}.log", "a"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, name: str) -> None:
        p = self.procs.pop(name)
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.rd.stop()
        self.pg.stop()


def wait(pred, limit: float, what: str, logdir: Path | None = None) -> float:
    """Seconds until pred() holds, polled every 5 ms; exits the bench after `limit` seconds."""
    began = time.monotonic()
    while not pred():
        if time.monotonic() - began > limit:
            raise SystemExit(f"timed out waiting for {what}" + (f"; logs in {logdir}" if logdir else ""))
        time.sleep(0.005)
    return time.monotonic() - began


def tenant(name: str, runner_settings: dict, **quota: int) -> tuple[str, str]:
    """An organization with a fake runner and the given quota overrides: (org id, runner id)."""
    from app.db import session_scope
    from app.domain import quotas, tenancy
    from workers.providers.catalog import install as install_catalog

    install_catalog()  # runner settings pass the fake provider's model
    with session_scope() as s:
        org = tenancy.ensure_organization(name, session=s)
        runner = tenancy.create_runner(org.id, "fake", "fake", runner_settings, session=s)
        if quota:
            quotas.set_quota(org.id, session=s, **quota)
        return org.id, runner.id


def profile(pids: dict[str, int], seconds: float, outdir: Path) -> dict[str, subprocess.Popen]:
    """Start py-spy (pip install py-spy) sampling each process for `seconds`; raw collapsed stacks in outdir."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    return {name: subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
                                    "--nonblocking", "--format", "raw", "--output", str(outdir / f"{name}.raw")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()}


def summarize(raw: Path, top: int = 12) -> str:
    """Where one process spent its samples: the busiest functions of ours (inclusive), and idle share."""
    inclusive: dict[str, int] = {}
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        if any(w in leaf for w in ("wait (threading", "select (", "_wait_for_tstate_lock", "poll (", "sleep",
                                   "recv_into", "read (", "epoll", "accept (")):
            idle += n
        seen = set()
        for f in frames:
            func, _, where = f.partition(" (")
            path = where.rsplit(":", 1)[0]
            if path.startswith(("app/", "workers/", "tasks/")):
                name = f"{func} ({path})"
                if name not in seen:
                    seen.add(name)
                    inclusive[name] = inclusive.get(name, 0) + n
    if not total:
        return "  no samples"
    lines = [f"  {total} samples, {100 * idle / total:.0f}% waiting (I/O, locks, idle threads)"]
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines)


def _cpu(pid: int) -> float:
    """CPU seconds a process used (user + system), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each warmpool process, PostgreSQL (all its backends) and Redis."""
    out = {name: _cpu(p.pid) for name, p in stack.procs.items()}
    pidfile = Path(stack.pg.dir) / "data" / "postmaster.pid"
    if pidfile.exists():
        master = int(pidfile.read_text().split()[0])
        out["postgres"] = _cpu(master) + sum(_cpu(c) for c in _children(master))
    if stack.rd.proc is not None:
        out["redis"] = _cpu(stack.rd.proc.pid)
    return out
