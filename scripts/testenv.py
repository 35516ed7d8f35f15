#!/usr/bin/env python3
"""Start throwaway PostgreSQL and Redis servers on free loopback ports, run a command against them,
stop them after. `make test` runs the suite through this; `python scripts/testenv.py --shell` gives
you a shell with WARMPOOL_TEST_DATABASE_URL and WARMPOOL_TEST_REDIS_URL set.

Existing servers are used instead when WARMPOOL_TEST_DATABASE_URL / WARMPOOL_TEST_REDIS_URL are set.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin(name: str) -> str:
    for candidate in [shutil.which(name), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)]:
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit(f"testenv: {name} not found; install PostgreSQL (apt-get install -y postgresql)")


def wait_port(port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"testenv: {what} did not listen on port {port} within {timeout}s")


class Postgres:
    def __init__(self, options: str = "") -> None:
        """`options`: more server options, as `postgres` takes them (e.g. "-c shared_preload_libraries=pg_stat_statements")."""
        self.options = options
        self.dir = tempfile.mkdtemp(prefix="warmpool-pg-")
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: run the server as the postgres (or nobody) user.
            user = "postgres"
            try:
                pwd.getpwnam(user)
            except KeyError:
                user = "nobody"
            shutil.chown(self.dir, user=user)
            self.as_user = ["runuser", "-u", user, "--"]

    def start(self) -> str:
        data = os.path.join(self.dir, "data")
        subprocess.run(
            [*self.as_user, find_pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            check=True, stdout=subprocess.DEVNULL,
        )
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        if self.options:
            opts += " " + self.options
        subprocess.run(
            [*self.as_user, find_pg_bin("pg_ctl"), "-D", data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start"],
            check=True, stdout=subprocess.DEVNULL,
        )
        wait_port(self.port, "PostgreSQL")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run([*self.as_user, find_pg_bin("pg_ctl"), "-D", os.path.join(self.dir, "data"), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="warmpool-redis-")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        exe = shutil.which("redis-server") or sys.exit("testenv: redis-server not found (apt-get install -y redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
        )
        wait_port(self.port, "Redis")
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    args = sys.argv[1:]
    if args and args[0] == "--shell":
        args = [os.environ.get("SHELL", "/bin/bash")]
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        sys.exit("usage: testenv.py [--shell | -- COMMAND ...]")
    env = dict(os.environ)
    started: list[Postgres | Redis] = []
    try:
        if not env.get("WARMPOOL_TEST_DATABASE_URL"):
            pg = Postgres()
            started.append(pg)
            env["WARMPOOL_TEST_DATABASE_URL"] = pg.start()
        if not env.get("WARMPOOL_TEST_REDIS_URL"):
            rd = Redis()
            started.append(rd)
            env["WARMPOOL_TEST_REDIS_URL"] = rd.start()
        print(f"testenv: postgres {env['WARMPOOL_TEST_DATABASE_URL']}  redis {env['WARMPOOL_TEST_REDIS_URL']}", flush=True)
        return subprocess.call(args, env=env)
    finally:
        for svc in reversed(started):
            svc.stop()


if __name__ == "__main__":
    sys.exit(main())
