#!/usr/bin/env python3
"""Time to READY and backfill time, with the fake provider's latencies as the unit.

Starts throwaway PostgreSQL and Redis, a `warmpool api`, `worker`, `events` and `observe`
process, then for pools of 1, 10 and 20 instances (boot latency L of the fake cloud):
  - time from CreateWarmPool (Connect JSON over HTTP) to phase READY with every instance running, as a
    multiple of L (target: <= 1.5 x L for 20: the creates run in parallel, events drive progress);
  - backfill: an instance is taken (leased), time until the pool is back to its target, as a multiple
    of the start latency S (the stopped tier is started, not a new instance provisioned).
Each size is measured --repeat times; medians are printed. Usage: python bench/time_to_ready.py [--boot-ms 500]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.testenv import Postgres, Redis  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot-ms", type=int, default=500)
    ap.add_argument("--start-ms", type=int, default=100)
    ap.add_argument("--sizes", default="1,10,20")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--verbose", action="store_true", help="print where the time to READY goes")
    args = ap.parse_args()
    pg, rd = Postgres(), Redis()
    db_url, redis_url = pg.start(), rd.start()
    port = free_port()
    env = {**os.environ, "WARMPOOL_DATABASE_URL": db_url, "WARMPOOL_REDIS_URL": redis_url, "WARMPOOL_HTTP_PORT": str(port),
           "WARMPOOL_GRPC_PORT": str(free_port()), "WARMPOOL_LOG_LEVEL": "WARNING", "WARMPOOL_ENV": "test",
           "WARMPOOL_SECRET_KEYS": os.environ.get("WARMPOOL_SECRET_KEYS") or Fernet.generate_key().decode()}
    os.environ.update({k: v for k, v in env.items() if k.startswith("WARMPOOL_")})  # a key for runner secrets too
    exe = str(Path(sys.executable).with_name("warmpool"))
    subprocess.run([exe, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    logdir = Path(tempfile.mkdtemp(prefix="warmpool-bench-"))
    procs = [subprocess.Popen([exe, *cmd], env=env, stdout=open(logdir / f"{cmd[0]}.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
             for cmd in (["api"], ["worker", "--concurrency", "40"], ["events"], ["observe"])]
    try:
        return run(args, port, logdir)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(15)
        rd.stop()
        pg.stop()


def run(args: argparse.Namespace, port: int, logdir: Path) -> int:
    import sqlalchemy as sa

    from app.db import session_scope
    from app.domain import catalog, pools, tenancy, tokens
    from workers.providers.catalog import install as install_catalog
    from app.events import InstanceEvent, KIND_LEASED, publish
    from app.models import Instance, Pool

    from app.domain import effects
    from workers.celery_app import dispatch_effect, reconfigure

    reconfigure()
    effects.set_dispatcher(dispatch_effect)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"api did not start; see {logdir}")
            time.sleep(0.1)
    install_catalog()  # runner settings pass the fake provider's model
    with session_scope() as s:
        org = tenancy.ensure_organization("bench", session=s)
        _, token = tokens.create_token(org, session=s, scope=tokens.Scope.MEMBER)
        runner = tenancy.create_runner(org.id, "fake", "fake", {
            "namespace": "bench", "boot_ms": args.boot_ms, "start_ms": args.start_ms, "stop_ms": 10, "delete_ms": 5}, session=s)
        org_id, runner_id = org.id, runner.id

    def create_pool(size: int) -> str:
        with session_scope() as s:
            ec = catalog.create_environment_class(org_id, runner_id, "bench", "bench", [], session=s)
            project = catalog.create_project(org_id, f"p-{uuid.uuid4().hex[:6]}", {
                "prebuildConfiguration": {"enabled": True, "environmentClassIds": [ec.id]}}, session=s)
            pair = (project.id, ec.id)
        body = json.dumps({"projectId": pair[0], "environmentClassId": pair[1], "minSize": size, "maxSize": size}).encode()
        req = urllib.request.Request(f"{base}/api/gitpod.v1.PrebuildService/CreateWarmPool", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read())["warmPool"]["id"]

    def status(pool_id: str) -> Pool:
        with session_scope() as s:
            return s.get(Pool, pool_id)

    def wait(pred, limit: float = 60.0, pool_id: str = "") -> float:
        began = time.monotonic()
        while not pred():
            if time.monotonic() - began > limit:
                detail = ""
                if pool_id:
                    with session_scope() as s:
                        p = s.get(Pool, pool_id)
                        rows = s.execute(sa.select(Instance.state, Instance.desired_state, sa.func.count()).where(
                            Instance.pool_id == pool_id).group_by(Instance.state, Instance.desired_state)).all()
                    detail = f" pool {p.phase} ready={p.ready_instances} stopped={p.stopped_instances} target={p.desired_size} {rows}"
                raise SystemExit(f"timed out;{detail} logs in {logdir}")
            time.sleep(0.005)
        return time.monotonic() - began

    L, S = args.boot_ms / 1000.0, args.start_ms / 1000.0
    print(f"fake cloud: boot L = {args.boot_ms} ms, start S = {args.start_ms} ms; {args.repeat} runs per size; medians")
    print(f"{'size':>5} {'ready s':>9} {'ready/L':>8} {'backfill s':>11} {'backfill/S':>11}")
    worst = 0.0
    for size in [int(x) for x in args.sizes.split(",")]:
        readies, backfills = [], []
        for _ in range(args.repeat):
            began = time.monotonic()
            pool_id = create_pool(size)
            wait(lambda: (lambda p: p.phase == "ready" and p.ready_instances >= size)(status(pool_id)), pool_id=pool_id)
            readies.append(time.monotonic() - began)
            with session_scope() as s:
                p = s.get(Pool, pool_id)
                rows = s.execute(sa.select(Instance.requested_at, Instance.ready_at, Instance.boot_ms).where(Instance.pool_id == pool_id)).all()
            phases = {
                "create->rows": min(r[0] for r in rows) - p.created_at,
                "rows->first ready": min(r[1] for r in rows) - min(r[0] for r in rows),
                "rows->last ready": max(r[1] for r in rows) - min(r[0] for r in rows),
                "max boot": max(r[2] or 0 for r in rows) / 1000.0,
            }
            if args.verbose:
                from app.events import InstanceEvent, redis_client

                evs = [InstanceEvent.from_fields(f) for _, f in redis_client().xrange("warmpool:events")]
                evs = [e for e in evs if e.pool_id == pool_id]
                t0 = p.created_at.timestamp()
                prov = sorted(e.observed_at - t0 for e in evs if e.state == "provisioning")
                run_ = sorted(e.observed_at - t0 for e in evs if e.state == "running")
                phases["provision tasks start"] = f"{prov[0]:.3f}..{prov[-1]:.3f}"
                phases["running observed"] = f"{run_[0]:.3f}..{run_[-1]:.3f}"
                phases["last ready applied"] = max(r[1] for r in rows).timestamp() - t0
                print("   ", {k: round(v.total_seconds(), 3) if hasattr(v, "total_seconds") else (round(v, 3) if isinstance(v, float) else v) for k, v in phases.items()})
            # Give it a stopped tier of one, then take an instance and time the backfill.
            with session_scope() as s:
                pools.resize_pool(org_id, pool_id, session=s, stopped_size=1)
            wait(lambda: status(pool_id).stopped_instances >= 1, pool_id=pool_id)
            with session_scope() as s:
                taken = s.execute(sa.select(Instance).where(Instance.pool_id == pool_id, Instance.state == "running",
                                                            Instance.lease_id.is_(None)).limit(1)).scalars().one()
                taken.lease_id = str(uuid.uuid4())
                taken_id = taken.id
            began = time.monotonic()
            publish(InstanceEvent(instance_id=taken_id, pool_id=pool_id, kind=KIND_LEASED))
            wait(lambda: (lambda p: p.leased_instances == 1)(status(pool_id)), pool_id=pool_id)
            wait(lambda: (lambda p: p.ready_instances >= size)(status(pool_id)), pool_id=pool_id)
            backfills.append(time.monotonic() - began)
        r, b = statistics.median(readies), statistics.median(backfills)
        worst = max(worst, r / L) if size == max(int(x) for x in args.sizes.split(",")) else worst
        print(f"{size:>5} {r:>9.3f} {r / L:>8.2f} {b:>11.3f} {b / S:>11.2f}")
    print(f"target: READY within 1.5 x L for the largest pool: {'met' if worst <= 1.5 else 'NOT met'} ({worst:.2f} x L)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
