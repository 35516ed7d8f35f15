#!/usr/bin/env python3
"""Fill rate of a pod pool on the fake cloud with 0 ms boots: how fast the engine makes instances.

Starts throwaway PostgreSQL and Redis and real `warmpool worker`, `events` and `observe` processes, then
creates a pod pool of --size instances (openYuanrong's create, as its façade calls it) and times it from
the commit to READY with every instance running. Fill rate = size / that time; --repeat runs, medians.
Before each measurement a pool of 50 is filled and not counted (the processes just started). Each run also
prints the CPU milliseconds per instance of every process (PostgreSQL and Redis included): where the time goes.

Baseline, measured in the same run: the same fill with provider calls one Celery task per instance
(`WARMPOOL_ENGINE__PROVISION_BATCH=1`, the worker restarted for it) on a pool of --baseline-size, and the
organization's default quota (`max_creating`) unless --default-quota is off.
Usage: python bench/fill.py [--size 3000] [--repeat 3] [--profile]   (target: >= 500 instances/s)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import Stack, cpu_snapshot, load, profile, summarize, tenant, wait

TARGET = 500.0


def fill(org_id: str, size: int, logdir: Path, limit: float) -> tuple[float, dict[str, float]]:
    """Seconds from the pod pool's commit to READY with `size` running, and where the time went."""
    import sqlalchemy as sa

    from app.db import session_scope
    from app.domain import podpools
    from app.domain.podpools import PodPoolInput
    from app.models import Instance, Pool

    spec = dict(id=f"fill-{uuid.uuid4().hex[:8]}", size=size, image="bench:latest",
                resources={"requests": {"cpu": "100m", "memory": "64Mi"}})
    with session_scope() as s:
        failures = podpools.create_pod_pools(org_id, [PodPoolInput(**spec, given=spec)], tenant_id="0", session=s)
        assert failures == [], failures
        pool_id = s.execute(sa.select(Pool.id).where(Pool.name == spec["id"], Pool.organization_id == org_id)).scalar_one()

    def ready() -> bool:
        with session_scope() as s:
            p = s.get(Pool, pool_id)
            return p.phase == "ready" and p.ready_instances >= size

    from app.events import redis_client
    from config.settings import get_settings

    stream = get_settings().engine.events_stream
    events_before = redis_client().xlen(stream)
    took = wait(ready, limit, f"a pool of {size} ready", logdir)
    events_per_instance = (redis_client().xlen(stream) - events_before) / size
    with session_scope() as s:
        created = s.get(Pool, pool_id).created_at
        first_row, last_row, first_ready, last_ready = s.execute(sa.select(
            sa.func.min(Instance.requested_at), sa.func.max(Instance.requested_at),
            sa.func.min(Instance.ready_at), sa.func.max(Instance.ready_at)).where(Instance.pool_id == pool_id)).one()
    phases = {"last row made": (last_row - created).total_seconds(),
              "first ready": (first_ready - created).total_seconds(),
              "last ready": (last_ready - created).total_seconds(), "events per instance": events_per_instance}
    return took, phases


def warm_up(stack: Stack, org_id: str) -> None:
    """A pool of 50 filled before anything is timed: the processes just started (a worker imports everything,
    opens its connections, compiles its statements), and a fill rate is a steady-state figure."""
    took, _ = fill(org_id, 50, stack.logdir, 300)
    print(f"  warm-up (not counted): a pool of 50 ready in {took:.2f}s", flush=True)


def measure(stack: Stack, org_id: str, size: int, repeat: int, label: str, limit: float,
            spy_seconds: float = 0) -> float:
    warm_up(stack, org_id)
    rates = []
    for n in range(repeat):
        spies = {}
        if spy_seconds and n == repeat - 1:
            spies = profile({k: p.pid for k, p in stack.procs.items()}, spy_seconds, stack.logdir)
            time.sleep(1.0)  # py-spy attaches
        cpu_before = cpu_snapshot(stack)
        took, phases = fill(org_id, size, stack.logdir, limit)
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_snapshot(stack).items()}
        for name, spy in spies.items():
            spy.wait()
            print(f"  py-spy, {name} (first {spy_seconds:.0f}s of the run):\n" + summarize(stack.logdir / f"{name}.raw"))
        rates.append(size / took)
        print(f"  {label} run {n + 1}: {size} ready in {took:.2f}s = {size / took:7.1f}/s   "
              + "  ".join(f"{k} {v:.2f}" + ("" if k.startswith("events") else "s") for k, v in phases.items()) + f"   ({load()})", flush=True)
        # CPU per instance does not depend on how loaded the machine is: it says where the time goes.
        print("    CPU ms per instance: " + "  ".join(f"{k} {1000 * v / size:.2f}" for k, v in sorted(cpu.items()))
              + f"  (total {1000 * sum(cpu.values()) / size:.2f})", flush=True)
    return statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-size", type=int, default=300)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--concurrency", type=int, default=8, help="worker threads")
    ap.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                    help="py-spy the worker, applier and observer for SECONDS of the last run")
    args = ap.parse_args()
    print(f"fill rate of a pod pool on the fake cloud, 0 ms boots; {load()}", flush=True)
    with Stack() as stack:
        runner = {"namespace": "fill", "boot_ms": 0, "start_ms": 0, "stop_ms": 0, "delete_ms": 0}
        big = 10 * args.size
        org_id, _ = tenant("fill", runner, max_pool_size=args.size, max_instances=big + 50, max_creating=args.size)
        base_org, _ = tenant("fill-default", {**runner, "namespace": "fill-default"},
                             max_pool_size=args.baseline_size, max_instances=10 * args.baseline_size + 50)
        stack.start("events", "events")
        stack.start("observe", "observe")
        baseline = None
        if not args.no_baseline:
            stack.start("worker", "worker", "--concurrency", str(args.concurrency), WARMPOOL_ENGINE__PROVISION_BATCH="1")
            baseline = measure(stack, base_org, args.baseline_size, 1, "baseline (per-instance tasks, default quota)", 300)
            stack.stop("worker")
        stack.start("worker", "worker", "--concurrency", str(args.concurrency))
        rate = measure(stack, org_id, args.size, args.repeat, "batched", 600, args.profile)
        print(f"median fill rate: {rate:.1f} instances/s for a pool of {args.size} "
              f"(target >= {TARGET:.0f}/s: {'met' if rate >= TARGET else 'NOT met'})")
        if baseline:
            print(f"baseline: {baseline:.1f} instances/s for a pool of {args.baseline_size}; ratio {rate / baseline:.1f}x")
        print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
