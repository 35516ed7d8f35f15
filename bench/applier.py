#!/usr/bin/env python3
"""Event applier throughput: events/s the real applier (workers.events.Applier, with its after-commit
effects sent to Redis as in production) applies from a pre-filled stream.

Starts throwaway PostgreSQL and Redis (or a fresh SQLite file with --backend sqlite), makes --pools pools
of --per-pool instances in `requested`, and publishes what a fill produces: for every instance a
`provisioning` then a `running` event (sequence numbers from the database, as publishers take them),
interleaved across instances and pools, plus --dup-percent duplicates redelivered. The applier then
drains the stream; the run checks that every instance is running with the newest sequence and every pool
READY. Each run makes fresh pools; --repeat runs, median printed.

Same-run baselines:
  - raw UPDATE: one single-row `UPDATE instances ... WHERE id = ?` round trip per event, committed every
    --batch events: what an applier making one database round trip per event could reach at best;
  - redis: XREADGROUP COUNT --batch + XACK of the same number of entries, nothing applied: the stream's
    own ceiling.
Usage: python bench/applier.py [--backend postgresql|sqlite] [--pools 50 --per-pool 200] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.testenv import Postgres, Redis  # noqa: E402


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    ap.add_argument("--pools", type=int, default=50)
    ap.add_argument("--per-pool", type=int, default=200)
    ap.add_argument("--dup-percent", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=0, help="applier batch (XREADGROUP COUNT); 0: the setting's")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rd = Redis()
    redis_url = rd.start()
    pg = Postgres() if args.backend == "postgresql" else None
    tmp = tempfile.mkdtemp(prefix="warmpool-bench-applier-")
    db_url = pg.start() if pg else f"sqlite:///{tmp}/bench.sqlite3"
    os.environ.update({"WARMPOOL_DATABASE_URL": db_url, "WARMPOOL_REDIS_URL": redis_url, "WARMPOOL_ENV": "test",
                       "WARMPOOL_LOG_LEVEL": "WARNING", "WARMPOOL_DATA_DIR": tmp,
                       "WARMPOOL_SECRET_KEYS": os.environ.get("WARMPOOL_SECRET_KEYS") or Fernet.generate_key().decode()})
    if args.batch:
        os.environ["WARMPOOL_ENGINE__EVENTS_BATCH"] = str(args.batch)
    if "config.settings" in sys.modules:  # imported before the servers existed (a profiler's harness)
        sys.modules["config.settings"].get_settings.cache_clear()
    try:
        return run(args)
    finally:
        rd.stop()
        if pg:
            pg.stop()


def run(args: argparse.Namespace) -> int:
    import logging

    import redis
    import sqlalchemy as sa

    from app.db import get_engine, session_scope
    from app.domain import effects, pools, tenancy
    from app.domain.states import PoolKind
    from app.events import InstanceEvent
    from app.migrate import upgrade
    from app.models import Instance, Pool
    from config.settings import get_settings
    from workers.celery_app import dispatch_effect, dispatch_effects, reconfigure
    from workers.events import Applier
    from workers.providers.catalog import install as install_catalog

    logging.basicConfig(level=logging.WARNING)
    upgrade(get_settings().database_url)
    reconfigure()
    effects.set_dispatcher(dispatch_effect)
    install_catalog()
    s = get_settings().engine
    batch = s.events_batch if hasattr(s, "events_batch") else 200
    client = redis.Redis.from_url(get_settings().redis_url)
    with session_scope() as ses:
        org = tenancy.ensure_organization("bench", session=ses)
        runner = tenancy.create_runner(org.id, "fake", "fake", {"namespace": "bench"}, session=ses)
        org_id, runner_id = org.id, runner.id
    rng = random.Random(7)

    def fill(run_no: int) -> tuple[list[str], list[str], int]:
        """Fresh pools and instances, and their events on the stream; returns (pool ids, instance ids, entries)."""
        client.delete(s.events_stream, f"{s.events_stream}:dead")
        client.flushdb()
        size = args.per_pool
        pool_rows = [pools.new_pool(org_id, kind=PoolKind.NAMED, name=f"r{run_no}-p{i}", min_size=size, max_size=size,
                                    runner_id=runner_id) for i in range(args.pools)]
        for p in pool_rows:
            p.needs_reconcile = False
        template = Instance(pool_id="", organization_id=org_id, provider="fake").model_dump()
        inst_rows = [dict(template, id=str(uuid.uuid4()), pool_id=p.id, provider_ref=f"ref-{p.id}-{j}")
                     for p in pool_rows for j in range(size)]
        with session_scope() as ses:
            ses.execute(sa.insert(Pool), [p.model_dump() for p in pool_rows])
            ses.execute(sa.insert(Instance), inst_rows)
            # the publishers' sequence numbers: two per instance, issued by the database (op_seq) as they would be
            ses.execute(sa.update(Instance).where(Instance.pool_id.in_([p.id for p in pool_rows]))
                        .values(op_seq=2).execution_options(synchronize_session=False))
        evs = []
        for state, seq in (("provisioning", 1), ("running", 2)):
            leg = [InstanceEvent(instance_id=i["id"], pool_id=i["pool_id"], state=state, seq=seq, ref=i["provider_ref"],
                                 address="10.0.0.1" if state == "running" else "", boot_ms=5 if state == "running" else None)
                   for i in inst_rows]
            rng.shuffle(leg)
            evs.extend(leg)
        dups = rng.sample(evs, int(len(evs) * args.dup_percent / 100))
        evs.extend(dups)
        pipe = client.pipeline(transaction=False)
        for n, ev in enumerate(evs):
            pipe.xadd(s.events_stream, ev.to_fields())
            if n % 1000 == 999:
                pipe.execute()
        pipe.execute()
        Applier(client=client, consumer="setup")  # creates the group from id 0
        return [p.id for p in pool_rows], [i["id"] for i in inst_rows], len(evs)

    def check(pool_ids: list[str], inst_ids: list[str]) -> None:
        with session_scope() as ses:
            rows = ses.execute(sa.select(Instance.state, Instance.event_seq, sa.func.count())
                               .where(Instance.pool_id.in_(pool_ids)).group_by(Instance.state, Instance.event_seq)).all()
            phases = ses.execute(sa.select(Pool.phase, Pool.ready_instances, sa.func.count())
                                 .where(Pool.id.in_(pool_ids)).group_by(Pool.phase, Pool.ready_instances)).all()
        want = [("running", 2, len(inst_ids))]
        if [tuple(r) for r in rows] != want or [tuple(p) for p in phases] != [("ready", args.per_pool, len(pool_ids))]:
            raise SystemExit(f"wrong result: instances {rows}, pools {phases}")

    def applier_run(run_no: int) -> tuple[float, int]:
        pool_ids, inst_ids, total = fill(run_no)
        applier = Applier(client=client, consumer="bench", after_commit=dispatch_effects)  # as `warmpool events` runs it
        done, began, cpu = 0, time.perf_counter(), time.process_time()
        while done < total:
            done += applier.run_once(block_ms=50)
            if time.perf_counter() - began > 120:
                raise SystemExit(f"applier stalled at {done} of {total}")
        took, cpu = time.perf_counter() - began, time.process_time() - cpu
        check(pool_ids, inst_ids)
        cpu_us.append(cpu / total * 1e6)
        return total / took, total

    def update_baseline(run_no: int) -> float:
        """One single-row UPDATE round trip per event, a commit per batch."""
        pool_ids, inst_ids, total = fill(run_no)
        stmt = sa.text("UPDATE instances SET event_seq = :seq, state_changed_at = :now WHERE id = :id AND event_seq < :seq")
        order = [rng.choice(inst_ids) for _ in range(total)]
        from app.models import utcnow
        began = time.perf_counter()
        with get_engine().connect() as conn:
            for n in range(0, total, batch):
                with conn.begin():
                    for k, inst_id in enumerate(order[n:n + batch]):
                        conn.execute(stmt, {"seq": n + k + 1, "now": utcnow(), "id": inst_id})
        return total / (time.perf_counter() - began)

    def redis_baseline(run_no: int) -> float:
        """XREADGROUP COUNT batch + XACK per batch over the same stream, nothing applied."""
        _, _, total = fill(run_no)
        done, began = 0, time.perf_counter()
        while done < total:
            for _stream, entries in client.xreadgroup(s.events_group, "raw", {s.events_stream: ">"}, count=batch, block=50) or []:
                client.xack(s.events_stream, s.events_group, *[e for e, _ in entries])
                done += len(entries)
        return total / (time.perf_counter() - began)

    print(f"backend {args.backend}; {args.pools} pools x {args.per_pool} instances, {args.dup_percent:g}% duplicates; "
          f"batch {batch}; load average before {load()}")
    rates, raw, xread, cpu_us = [], [], [], []
    total = 0
    for r in range(args.repeat):
        rate, total = applier_run(r)
        rates.append(rate)
        raw.append(update_baseline(100 + r))
        xread.append(redis_baseline(200 + r))
        print(f"  run {r + 1}: applier {rate:,.0f} ev/s ({cpu_us[-1]:.0f} us CPU/event in the applier)   raw UPDATE {raw[-1]:,.0f}/s   redis read+ack {xread[-1]:,.0f}/s   "
              f"load {load()}")
    a, u, x = statistics.median(rates), statistics.median(raw), statistics.median(xread)
    print(f"events per run: {total}")
    print(f"applier (median of {args.repeat}): {a:,.0f} events/s; the applier's own CPU: "
          f"{statistics.median(cpu_us):.0f} us/event (the rest is the database's and Redis's time, and waiting)")
    print(f"baseline raw UPDATE, one round trip per event: {u:,.0f}/s  (applier / raw = {a / u:.2f})")
    print(f"baseline redis XREADGROUP+XACK only:           {x:,.0f}/s  (applier / redis = {a / x:.2f})")
    print(f"load average after: {load()}")
    print(f"target >= 5,000 events/s: {'met' if a >= 5000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
