#!/usr/bin/env python3
"""The reconcile sweep over many converged pools: the time of one beat sweep (`tasks.reconcile.reconcile_sweep`,
the real task function: its query and its enqueues on the real broker) on PostgreSQL + Redis.

Starts throwaway PostgreSQL and Redis, bulk-inserts --pools converged pools (over --orgs organizations,
--running free running instances each on the pool's snapshot, plus --history deleted instance rows each),
reconciled a minute ago, ANALYZEs, then times --repeat sweeps (median printed). Each sweep must enqueue
nothing. Then --need of the pools lose a running instance (they need a pass) and the sweep is timed again
(it enqueues up to sweep_batch passes; the queue and dedupe keys are cleared between runs).

Same-run baselines:
  - old sweep: the previous sweep, the window-ranked query over every live pool (flagged, then least
    recently reconciled, sweep_per_org per organization) and one enqueue per chosen pool (busy check,
    claim, send: three Redis round trips each), 500 passes every sweep whatever the pools' state;
  - the old sweep's passes: --passes reconcile_pool task bodies over converged pools, run in this process
    (each is "steady"), so the worker time the old sweep's 500 passes cost every sweep;
  - raw GROUP BY: `SELECT pool_id, count(*) FROM instances GROUP BY pool_id`, the floor of any
    set-based look at every pool's instances.
Also timed: the sweep once every pool's last pass is older than the backstop's age (it then enqueues the
backstop's batch, the steady state of a fleet too big for one round per backstop period).
Usage: python bench/sweep.py [--pools 10000] [--running 3] [--repeat 5] [--need 1000] [--passes 100] [--explain]   (target: <= 2 s)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import Stack, load

TARGET = 2.0


def seed(pools: int, orgs: int, running: int, history: int) -> list[str]:
    """Converged pools in a few multi-row INSERTs (the API path is not what is timed); their ids."""
    import sqlalchemy as sa

    from app.db import session_scope
    from app.domain import pools as pool_domain
    from app.domain.states import PoolKind
    from app.models import Instance, Organization, Pool, new_id, utcnow

    now = utcnow()
    org_ids = [new_id() for _ in range(orgs)]
    pool_row = pool_domain.new_pool(org_ids[0], kind=PoolKind.NAMED, name="x", min_size=running, max_size=running + 2,
                                    snapshot_id="snap-1").model_dump()
    pool_row.update(needs_reconcile=False, reconciled_at=now - timedelta(minutes=1), phase="ready",
                    desired_size=running, ready_instances=running, running_instances=running,
                    rollout_state={"snapshot": "snap-1", "stage": "complete", "stalled": ""})
    inst_row = Instance(pool_id="x", organization_id="x", provider="fake", state="running", desired_state="running",
                        snapshot_id="snap-1", ready_at=now, idle_since=now).model_dump()
    pool_rows: list[dict[str, Any]] = []
    inst_rows: list[dict[str, Any]] = []
    for k in range(pools):
        org = org_ids[k % orgs]
        pid = new_id()
        pool_rows.append({**pool_row, "id": pid, "name": f"p{k}", "organization_id": org})
        for _ in range(running):
            inst_rows.append({**inst_row, "id": new_id(), "pool_id": pid, "organization_id": org})
        for _ in range(history):
            inst_rows.append({**inst_row, "id": new_id(), "pool_id": pid, "organization_id": org, "state": "deleted",
                              "desired_state": "deleted", "ready_at": None, "idle_since": None})
    with session_scope() as s:
        s.execute(sa.insert(Organization), [{"id": o, "name": f"bench-{o[:8]}", "created_at": now} for o in org_ids])
        for i in range(0, len(pool_rows), 5000):
            s.execute(sa.insert(Pool), pool_rows[i:i + 5000])
        for i in range(0, len(inst_rows), 5000):
            s.execute(sa.insert(Instance), inst_rows[i:i + 5000])
    with session_scope() as s:
        s.connection().exec_driver_sql("ANALYZE pools")
        s.connection().exec_driver_sql("ANALYZE instances")
    return [r["id"] for r in pool_rows]


def clear_queue() -> None:
    """Forget the queued sweep passes and their dedupe keys, so the next sweep enqueues them again."""
    from app import events
    from config.celery import SWEEP_QUEUE

    r = events.redis_client()
    r.delete(SWEEP_QUEUE)
    keys = list(r.scan_iter("warmpool:inflight:swept_reconcile:*", count=1000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i:i + 1000])


def old_choice(limit: int, per_org: int) -> list[str]:
    """The previous sweep's query: every live pool ranked, flagged first, then least recently reconciled."""
    import sqlalchemy as sa

    from app.db import session_scope
    from app.models import Pool

    order = (Pool.needs_reconcile.desc(), Pool.reconciled_at.asc().nulls_first(), Pool.id)
    ranked = (sa.select(Pool.id, Pool.needs_reconcile, Pool.reconciled_at,
                        sa.func.row_number().over(partition_by=Pool.organization_id, order_by=order).label("rank"))
              .where(Pool.phase != "deleted").subquery())
    with session_scope() as s:
        return list(s.execute(
            sa.select(ranked.c.id).where(ranked.c.rank <= per_org)
            .order_by(ranked.c.needs_reconcile.desc(), ranked.c.reconciled_at.asc().nulls_first(), ranked.c.id)
            .limit(limit)).scalars().all())


def old_sweep() -> int:
    """The previous sweep: its query, then a busy check, a claim and a send per chosen pool."""
    from config.celery import SWEEP_QUEUE
    from config.settings import get_settings
    from workers import inflight
    from workers.celery_app import celery_app

    e = get_settings().engine
    sent = 0
    for pool_id in old_choice(e.sweep_batch, e.sweep_per_org):
        if inflight.busy("reconcile_pool", {"pool_id": pool_id}) or not inflight.claim("swept_reconcile", {"pool_id": pool_id}):
            continue
        celery_app.send_task("warmpool.reconcile_pool", kwargs={"pool_id": pool_id, "swept": True}, queue=SWEEP_QUEUE)
        sent += 1
    return sent


def raw_group_by() -> int:
    import sqlalchemy as sa

    from app.db import session_scope

    with session_scope() as s:
        return len(s.execute(sa.text("SELECT pool_id, count(*) FROM instances GROUP BY pool_id")).all())


def explain() -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the sweep's query with the deployment's settings."""
    from app.db import session_scope
    from app.domain import sweep
    from app.models import utcnow
    from config.settings import get_settings

    e = get_settings().engine
    with session_scope() as s:
        dialect = s.get_bind().dialect
        compiled = sweep.statement(dialect.name, now=utcnow(), limit=e.sweep_batch, per_org=e.sweep_per_org,
                                   stuck_after=e.stuck_after_seconds, backstop_after=e.sweep_backstop_seconds,
                                   backstop_limit=e.sweep_backstop_batch).compile(
                                       dialect=dialect, compile_kwargs={"render_postcompile": True})
        plan = s.connection().exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), compiled.params)
        print("\n".join("    " + row[0] for row in plan))


def timed(fn: Any, repeat: int, between: Any = None) -> tuple[float, list[float], Any]:
    """Median seconds of `repeat` calls (after one warm-up call), each call's, and the last result."""
    result = fn()
    runs = []
    for _ in range(repeat):
        if between:
            between()
        t = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs, result


def show(label: str, median: float, runs: list[float], extra: str = "") -> None:
    print(f"  {label:<50} median {median * 1000:8.1f} ms  runs {' '.join(f'{r * 1000:.0f}' for r in runs)} ms{extra}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pools", type=int, default=10000)
    ap.add_argument("--orgs", type=int, default=100, help="organizations the pools are spread over")
    ap.add_argument("--running", type=int, default=3, help="running instances per pool (its target)")
    ap.add_argument("--history", type=int, default=2, help="deleted instance rows per pool (kept as history)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--passes", type=int, default=100, help="old sweep's passes run in-process to time them")
    ap.add_argument("--explain", action="store_true", help="print the sweep query's EXPLAIN ANALYZE")
    ap.add_argument("--need", type=int, default=1000, help="pools that then need a pass (one running instance gone)")
    args = ap.parse_args()

    with Stack():
        import sqlalchemy as sa

        from app.db import session_scope
        from app.domain import sweep
        from app.models import Instance, Pool, utcnow
        from config.settings import get_settings
        from tasks.reconcile import reconcile_pool, reconcile_sweep

        e = get_settings().engine
        began = time.perf_counter()
        ids = seed(args.pools, args.orgs, args.running, args.history)
        print(f"seeded {args.pools} converged pools x {args.running} running (+{args.history} deleted rows) over "
              f"{args.orgs} organizations in {time.perf_counter() - began:.1f}s; {load()}")
        print(f"settings: sweep_batch {e.sweep_batch}, sweep_per_org {e.sweep_per_org}, backstop after "
              f"{e.sweep_backstop_seconds:.0f}s (batch {e.sweep_backstop_batch})")

        def choose() -> list[str]:
            with session_scope() as s:
                return sweep.choose(session=s, now=utcnow(), limit=e.sweep_batch, per_org=e.sweep_per_org,
                                    stuck_after=e.stuck_after_seconds, backstop_after=e.sweep_backstop_seconds,
                                    backstop_limit=e.sweep_backstop_batch)

        print(f"no-op sweep over {args.pools} converged pools ({args.repeat} runs each):")
        noop, noop_runs, sent = timed(reconcile_sweep, args.repeat)
        show("reconcile_sweep (query + enqueues)", noop, noop_runs, f"  enqueued {sent}")
        q, q_runs, chosen = timed(choose, args.repeat)
        show("  its query alone (app.domain.sweep.choose)", q, q_runs, f"  chose {len(chosen)}")
        old, old_runs, old_sent = timed(old_sweep, args.repeat, between=clear_queue)
        show("baseline: old sweep (ranked query + enqueues)", old, old_runs, f"  enqueued {old_sent}")
        oq, oq_runs, _ = timed(lambda: old_choice(e.sweep_batch, e.sweep_per_org), args.repeat)
        show("baseline: old query alone", oq, oq_runs)
        raw, raw_runs, groups = timed(raw_group_by, args.repeat)
        show("baseline: raw SELECT pool_id, count(*) GROUP BY", raw, raw_runs, f"  {groups} groups")
        clear_queue()
        # What the old sweep's passes cost a worker: the task body over converged pools, in this process.
        sample = ids[:args.passes]
        t = time.perf_counter()
        outcomes = [reconcile_pool(pool_id, swept=True) for pool_id in sample]
        per_pass = (time.perf_counter() - t) / max(len(sample), 1)
        print(f"  baseline: the old sweep's passes: {len(sample)} over converged pools, {per_pass * 1000:.1f} ms each "
              f"({outcomes.count('steady')} steady): ~{per_pass * e.sweep_batch:.1f} s of worker time per old sweep, "
              f"none now")

        if args.explain:
            explain()

        with session_scope() as s:  # every pool past the backstop's age: the steady state of a large fleet
            s.execute(sa.update(Pool).values(reconciled_at=utcnow() - timedelta(seconds=e.sweep_backstop_seconds + 60)))
        print(f"no-op sweep with every pool last reconciled more than {e.sweep_backstop_seconds:.0f}s ago (the backstop):")
        due, due_runs, due_sent = timed(reconcile_sweep, args.repeat, between=clear_queue)
        show("reconcile_sweep (query + enqueues)", due, due_runs, f"  enqueued {due_sent}")
        clear_queue()
        with session_scope() as s:
            s.execute(sa.update(Pool).values(reconciled_at=utcnow() - timedelta(minutes=1)))

        need = min(args.need, len(ids))
        with session_scope() as s:  # one running instance of each of `need` pools gone: each is short
            victims = sa.select(sa.func.min(Instance.id)).where(
                Instance.pool_id.in_(ids[:need]), Instance.state == "running").group_by(Instance.pool_id)
            s.execute(sa.delete(Instance).where(Instance.id.in_(victims.scalar_subquery())))
        print(f"sweep with {need} of the pools short of their target:")
        busy, busy_runs, busy_sent = timed(reconcile_sweep, args.repeat, between=clear_queue)
        show("reconcile_sweep (query + enqueues)", busy, busy_runs, f"  enqueued {busy_sent}")
        clear_queue()

        print(f"no-op sweep: {noop * 1000:.0f} ms median, enqueued {sent}; old sweep {old * 1000:.0f} ms "
              f"(x{old / noop:.1f} of the new), {old_sent} passes each time; {load()}")
        ok = noop <= TARGET and sent == 0
        print(f"target: a no-op reconcile sweep over {args.pools} pools <= {TARGET:.0f} s, enqueueing nothing: "
              f"{'met' if ok else 'NOT met'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
