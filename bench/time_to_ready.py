#!/usr/bin/env python3
"""Time to READY and backfill time, with the fake provider's latencies as the unit.

Starts throwaway PostgreSQL and Redis, a `warmpool api`, `worker`, `events` and `observe` process, then
for pools of 20, 200 and 1,000 instances (boot latency L of the fake cloud):
  - time from the create call over HTTP to phase READY with every instance running, as a multiple of L
    (targets: <= 1.5 x L for 20 and 200, <= 3 x L for 1,000: the creates go out as batched calls at once,
    the cloud boots them together, events drive progress). Pools of up to 20 are Gitpod warm pools
    (CreateWarmPool, Connect JSON); larger ones, beyond Gitpod's bound of 20, openYuanrong pod pools
    (POST /serverless/v1/podpools);
  - for Gitpod pools, backfill: an instance is taken (leased), time until the pool is back to its target,
    as a multiple of the start latency S (the stopped tier is started, not a new instance provisioned).
Baseline in the same run: L itself, the floor (an instance cannot be ready before it booted). A warm pool
of 20 is filled first and not counted (the processes just started).
The bench's organization may create max_pool_size instances at once (its max_creating quota is set to it).
Each size is measured --repeat times; medians are printed. Usage: python bench/time_to_ready.py [--boot-ms 500]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import Stack, load, tenant, wait

TARGETS = {20: 1.5, 200: 1.5, 1000: 3.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot-ms", type=int, default=500)
    ap.add_argument("--start-ms", type=int, default=100)
    ap.add_argument("--sizes", default="20,200,1000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8, help="worker threads")
    ap.add_argument("--verbose", action="store_true", help="print where the time to READY goes")
    args = ap.parse_args()
    print(f"time to READY; {load()}", flush=True)
    with Stack() as stack:
        largest = max(int(x) for x in args.sizes.split(","))
        org_id, runner_id = tenant("bench", {"namespace": "bench", "boot_ms": args.boot_ms, "start_ms": args.start_ms,
                                             "stop_ms": 10, "delete_ms": 5},
                                   max_pool_size=largest, max_instances=20 * largest + 20, max_creating=largest)
        for name in ("api", "events", "observe"):
            stack.start(name, name)
        stack.start("worker", "worker", "--concurrency", str(args.concurrency))
        return run(args, stack, org_id, runner_id)


def run(args: argparse.Namespace, stack: Stack, org_id: str, runner_id: str) -> int:
    import sqlalchemy as sa

    from app.db import session_scope
    from app.domain import catalog, pools, tokens
    from app.events import KIND_LEASED, InstanceEvent, publish
    from app.models import Instance, Pool

    base = f"http://127.0.0.1:{stack.env['WARMPOOL_HTTP_PORT']}"

    def up() -> bool:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1)
            return True
        except OSError:
            return False

    wait(up, 30, "the api", stack.logdir)
    with session_scope() as s:
        from app.models import Organization

        _, token = tokens.create_token(s.get(Organization, org_id), session=s, scope=tokens.Scope.MEMBER)

    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    def create_pool(size: int) -> str:
        if size > 20:  # beyond Gitpod's bound: an openYuanrong pod pool
            name = f"ttr-{uuid.uuid4().hex[:8]}"
            answer = post("/serverless/v1/podpools", {"pools": [{"id": name, "size": size, "image": "bench:latest",
                                                                 "resources": {"requests": {"cpu": "100m"}}}]})
            assert answer.get("code") == 0, answer
            with session_scope() as s:
                return s.execute(sa.select(Pool.id).where(Pool.name == name, Pool.organization_id == org_id)).scalar_one()
        with session_scope() as s:
            ec = catalog.create_environment_class(org_id, runner_id, "bench", "bench", [], session=s)
            project = catalog.create_project(org_id, f"p-{uuid.uuid4().hex[:6]}", {
                "prebuildConfiguration": {"enabled": True, "environmentClassIds": [ec.id]}}, session=s)
            pair = (project.id, ec.id)
        return post("/api/gitpod.v1.PrebuildService/CreateWarmPool", {
            "projectId": pair[0], "environmentClassId": pair[1], "minSize": size, "maxSize": size})["warmPool"]["id"]

    def status(pool_id: str) -> Pool:
        with session_scope() as s:
            return s.get(Pool, pool_id)

    L, S = args.boot_ms / 1000.0, args.start_ms / 1000.0
    # Warm-up, not counted: the processes just started (imports, connections, prepared statements).
    warm = create_pool(20)
    wait(lambda: (lambda p: p.phase == "ready" and p.ready_instances >= 20)(status(warm)), 120, "the warm-up pool",
         stack.logdir)
    print(f"fake cloud: boot L = {args.boot_ms} ms (the floor: the baseline), start S = {args.start_ms} ms; "
          f"{args.repeat} runs per size; medians")
    print(f"{'size':>5} {'ready s':>9} {'ready/L':>8} {'target':>7} {'backfill s':>11} {'backfill/S':>11}  load average")
    met = True
    for size in [int(x) for x in args.sizes.split(",")]:
        readies, backfills = [], []
        for _ in range(args.repeat):
            began = time.monotonic()
            pool_id = create_pool(size)
            wait(lambda: (lambda p: p.phase == "ready" and p.ready_instances >= size)(status(pool_id)),
                 60, f"a pool of {size} ready", stack.logdir)
            readies.append(time.monotonic() - began)
            if args.verbose:
                with session_scope() as s:
                    p = s.get(Pool, pool_id)
                    first, last_row, last_ready = s.execute(sa.select(
                        sa.func.min(Instance.requested_at), sa.func.max(Instance.requested_at),
                        sa.func.max(Instance.ready_at)).where(Instance.pool_id == pool_id)).one()
                print(f"    create->first row {(first - p.created_at).total_seconds():.3f}s, last row "
                      f"{(last_row - p.created_at).total_seconds():.3f}s, last ready {(last_ready - p.created_at).total_seconds():.3f}s")
            if size > 20:
                continue
            # Give it a stopped tier of one, then take an instance and time the backfill.
            with session_scope() as s:
                pools.resize_pool(org_id, pool_id, session=s, stopped_size=1)
            wait(lambda: status(pool_id).stopped_instances >= 1, 60, "a stopped instance", stack.logdir)
            with session_scope() as s:
                taken = s.execute(sa.select(Instance).where(Instance.pool_id == pool_id, Instance.state == "running",
                                                            Instance.lease_id.is_(None)).limit(1)).scalars().one()
                taken.lease_id = str(uuid.uuid4())
                taken_id = taken.id
            began = time.monotonic()
            publish(InstanceEvent(instance_id=taken_id, pool_id=pool_id, kind=KIND_LEASED))
            wait(lambda: status(pool_id).leased_instances == 1, 60, "the lease applied", stack.logdir)
            wait(lambda: status(pool_id).ready_instances >= size, 60, "the backfill", stack.logdir)
            backfills.append(time.monotonic() - began)
        r = statistics.median(readies)
        target = TARGETS.get(size, 1.5)
        met = met and r / L <= target
        b = f"{statistics.median(backfills):>11.3f} {statistics.median(backfills) / S:>11.2f}" if backfills else f"{'-':>11} {'-':>11}"
        print(f"{size:>5} {r:>9.3f} {r / L:>8.2f} {target:>6.1f}x {b}  {load()}", flush=True)
    print(f"targets (READY within 1.5 x L for 20 and 200, 3 x L for 1,000): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
