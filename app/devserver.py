"""`warmpool dev`: every process on one machine under one supervisor, on embedded defaults.

- Database: WARMPOOL_DATABASE_URL if set, else SQLite in .data/.
- Redis: WARMPOOL_REDIS_URL if set, else a private `redis-server` on a free loopback port if one is
  installed, else an in-process Redis-protocol server (fakeredis) — nothing to install by hand.
- Migrates, makes sure the `dev` organization and a `local` runner exist, prints a fresh token, then
  runs api, worker, beat, events, observe and flower as children and prints where each listens.
  Ctrl-C (or SIGTERM) stops every child; a child that dies is restarted with backoff (app.supervise).
- Nothing it starts outlives it, even when it is SIGKILLed: each child (the private redis-server too) gets
  a parent-death signal and a process group of its own, and what a killed run left (recorded in
  `<data dir>/dev.pids`, and its `local` instance processes) is stopped when the next run starts.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from app.supervise import AlreadyRunning, PidFile, Supervisor, die_with_parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class EmbeddedRedis:
    """A private Redis for dev: the real server when installed, else fakeredis over TCP in a thread."""

    def __init__(self, data_dir: Path, kind: str = "auto") -> None:
        self.want = kind
        self.port = _free_port()
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None
        self.server: Any = None
        self.kind = ""

    def start(self) -> str:
        exe = shutil.which("redis-server") if self.want in ("auto", "server") else None
        if self.want == "server" and not exe:
            raise RuntimeError("--embedded-redis server: redis-server is not installed")
        if exe:
            self.kind = "redis-server"
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.data_dir)], stdout=subprocess.DEVNULL, preexec_fn=die_with_parent())  # noqa: PLW1509
        else:
            from app.extras import require

            TcpFakeServer = require("fakeredis", "dev", "warmpool dev without a redis-server").TcpFakeServer
            self.kind = "in-process fakeredis"
            self.server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
            threading.Thread(target=self.server.serve_forever, daemon=True, name="embedded-redis").start()
        if not _wait_port(self.port):
            raise RuntimeError("the embedded Redis did not start")
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.server is not None:
            self.server.shutdown()


def prepare(org_name: str) -> tuple[str, str]:
    """Migrate, ensure the org and its `local` runner; returns (token, runner id)."""
    from sqlmodel import select

    from app.db import session_scope
    from app.domain import tenancy, tokens
    from app.migrate import upgrade
    from app.models import Runner
    from config.settings import get_settings

    from app.crypto import configured_keys

    upgrade(get_settings().database_url)
    configured_keys()  # under dev with no WARMPOOL_SECRET_KEYS: made now in the data dir, before the children start
    with session_scope() as s:
        org = tenancy.ensure_organization(org_name, session=s)
        # admin: the README walkthrough creates runners and tokens with it (leases and pools need less)
        _, token = tokens.create_token(org, session=s, scope=tokens.Scope.ADMIN, name="warmpool dev")
        runner = s.exec(select(Runner).where(Runner.organization_id == org.id, Runner.name == "local")).first()
        if runner is None:
            runner = tenancy.create_runner(org.id, "local", "local", {}, session=s)
    return token, runner.id


def run_dev(args: Any) -> int:
    from config.logging import configure_logging
    from config.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pidfile = PidFile(settings.data_dir / "dev.pids")
    try:
        reaped = pidfile.reap_leftovers()
    except AlreadyRunning as exc:
        print(f"warmpool dev: {exc}", file=sys.stderr)
        return 1
    if reaped:
        print(f"warmpool dev: stopped what an earlier run left running: {', '.join(reaped)}", flush=True)
    _halt_local_instances()
    env = dict(os.environ)
    redis = None
    if not os.environ.get("WARMPOOL_REDIS_URL"):
        redis = EmbeddedRedis(settings.data_dir, getattr(args, "embedded_redis", "auto"))
        env["WARMPOOL_REDIS_URL"] = redis.start()
        if redis.proc is not None:
            pidfile.record("redis-server", redis.proc.pid)
        os.environ["WARMPOOL_REDIS_URL"] = env["WARMPOOL_REDIS_URL"]
        get_settings.cache_clear()
        settings = get_settings()
    token, runner_id = prepare(args.org)
    # --- dev.env: a second shell's `warmpool …` finds this Redis, database and org (app.cli_context) ---
    from app.cli_context import remove_dev_env, write_dev_env

    dev_env = write_dev_env(settings.data_dir, redis_url=settings.redis_url, database_url=settings.database_url,
                            org=args.org)
    # --- end dev.env ---

    exe = str(Path(sys.executable).with_name("warmpool"))
    if not Path(exe).exists():
        exe = sys.argv[0]
    children = {
        "api": [exe, "api"],
        "worker": [exe, "worker", "--concurrency", "8"],
        "beat": [exe, "beat"],
        "events": [exe, "events"],
        "observe": [exe, "observe"],
    }
    import importlib.util

    flower_line = "not installed: pip install 'warmpool[flower]'"
    if importlib.util.find_spec("flower") is not None:  # an extra (warmpool[dev] brings it)
        children["flower"] = [exe, "flower"]
        # To the operator's terminal once (never a log line): the password is a secret outside dev.
        flower_line = (f"http://{settings.flower.address}:{settings.flower.port}  "
                       f"(user {settings.flower.user}, password {settings.flower.password.get_secret_value()})")
    supervisor = Supervisor(env, pidfile)
    stopping = threading.Event()

    def stop(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name, argv in children.items():
        supervisor.add(name, argv)
    supervisor.start_all()

    base = f"http://{settings.http_host}:{settings.http_port}"
    print(f"""
warmpool dev is starting (Ctrl-C stops everything)
  database   {settings.database_url}
  redis      {env['WARMPOOL_REDIS_URL']}{f' ({redis.kind})' if redis else ''}
  api        {base}  (Connect under {base}/api, OpenAPI at {base}/docs, health {base}/healthz)
  grpc       {settings.http_host}:{settings.grpc_port}
  flower     {flower_line}
  runner     local  {runner_id}
  cli        another shell here: `. .venv/bin/activate` and `warmpool pools` (settings from {dev_env})

  # an admin token of organization {args.org!r}: runners, tokens, and all a member may do
  export WARMPOOL_TOKEN={token}
""", flush=True)
    try:
        while not stopping.is_set():
            supervisor.tick()
            stopping.wait(0.3)
    finally:
        remove_dev_env(settings.data_dir)  # --- dev.env ---
        supervisor.stop_all()
        if redis:
            redis.stop()
        halted = _halt_local_instances()
        pidfile.remove()
        print(f"warmpool dev: stopped (and {halted} local instance processes)", flush=True)
    return 0


def _halt_local_instances() -> int:
    """Stop the `local` provider's instance processes (they live in sessions of their own, so no signal
    of ours reaches them): on exit, and on start for those a killed run left."""
    from workers.providers.local import LocalProvider

    try:
        return LocalProvider().halt_all()
    except OSError:
        return 0
