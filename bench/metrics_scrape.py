#!/usr/bin/env python3
"""How long a /metrics scrape takes to compute, with many pools: the operator's view (every pool's gauges from
one query, plus the event applier's lag from Redis) and a tenant's (one organization's pools), next to a
baseline of the two per-organization queries /metrics ran before (pools by phase, ready instances by
organization), timed the same way on the same data.

Starts throwaway PostgreSQL and Redis, seeds ORGS organizations with POOLS pools in all, each with 5 ready
instances, 1 leased and (every tenth pool) 2 waiting reservations, and 1000 events on the stream. Prints the
median of --runs scrapes of each, the ratio to the baseline and the load average.

Usage: python bench/metrics_scrape.py [--pools 10000] [--orgs 100] [--runs 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.testenv import Postgres, Redis  # noqa: E402

BASELINE = [  # what OrganizationSeries ran per scrape before this slice (app/api/ops.py, issue 14)
    "SELECT o.name, p.phase, count(*) FROM pools p JOIN organizations o ON o.id = p.organization_id"
    " WHERE true GROUP BY o.name, p.phase ORDER BY o.name, p.phase",
    "SELECT o.name, count(i.id) FROM organizations o LEFT JOIN instances i"
    " ON i.organization_id = o.id AND i.state = 'running' AND i.lease_id IS NULL AND i.draining = false"
    " WHERE true GROUP BY o.name ORDER BY o.name",
]


def seed(pools: int, orgs: int) -> str:
    import sqlalchemy as sa

    from app.db import get_engine, session_scope
    from app.domain import tenancy
    from app.models import Pool

    with session_scope() as s:
        org_ids = [tenancy.ensure_organization(f"org-{i:03d}", session=s).id for i in range(orgs)]
    for start in range(0, pools, 1000):
        with session_scope() as s:
            s.add_all(Pool(organization_id=org_ids[i % orgs], kind="named", name=f"pool-{i:05d}", phase="ready",
                           desired_size=6, leased_instances=1) for i in range(start, min(pools, start + 1000)))
    with get_engine().begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO instances (id, pool_id, organization_id, provider, state, desired_state, event_seq, "
            "state_changed_at, stale, draining, address, zone, failure_count, last_error, requested_at, "
            "ready_at, idle_since, missing_seen, lease_id) "
            "SELECT gen_random_uuid()::text, p.id, p.organization_id, 'fake', 'running', 'running', 0, now(), false, "
            "false, '', 'z', 0, '', now(), now(), now(), 0, CASE WHEN g = 6 THEN 'leased' END "
            "FROM pools p CROSS JOIN generate_series(1, 6) AS g"))
        conn.execute(sa.text(
            "INSERT INTO reservations (id, organization_id, client_id, pool_id, service_tag, state, created_at, "
            "expires_at, state_changed_at) "
            "SELECT gen_random_uuid()::text, p.organization_id, 'bench-' || p.name || '-' || g, p.id, '', 'waiting', "
            "now() - make_interval(secs => g), now() + interval '1 hour', now() "
            "FROM pools p CROSS JOIN generate_series(1, 2) AS g WHERE right(p.name, 1) = '0'"))
        conn.execute(sa.text("ANALYZE"))
    return org_ids[0]


def median_ms(fn, runs: int) -> float:
    fn()  # warm: connections, plans
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pools", type=int, default=10000)
    ap.add_argument("--orgs", type=int, default=100)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    pg, rd = Postgres(), Redis()
    try:
        url = pg.start()
        os.environ.update(WARMPOOL_ENV="test", WARMPOOL_DATABASE_URL=url, WARMPOOL_REDIS_URL=rd.start(),
                          WARMPOOL_SECRET_KEYS=Fernet.generate_key().decode(), WARMPOOL_LOG_LEVEL="WARNING")
        from app.migrate import upgrade

        upgrade(url)
        import redis
        import sqlalchemy as sa

        from app.api.ops import exposition
        from app.db import get_engine

        started = time.perf_counter()
        one_org = seed(args.pools, args.orgs)
        client = redis.Redis.from_url(os.environ["WARMPOOL_REDIS_URL"])
        pipe = client.pipeline()
        for i in range(1000):
            pipe.xadd("warmpool:events", {"n": i})
        pipe.execute()
        client.xgroup_create("warmpool:events", "appliers", id="0")
        client.xreadgroup("appliers", "bench", {"warmpool:events": ">"}, count=400)
        print(f"seeded {args.pools} pools in {args.orgs} organizations ({args.pools * 6} instances) "
              f"in {time.perf_counter() - started:.1f}s")

        def baseline() -> None:
            with get_engine().connect() as conn:
                for sql in BASELINE:
                    list(conn.execute(sa.text(sql)))

        operator = median_ms(lambda: exposition(None), args.runs)
        tenant = median_ms(lambda: exposition(one_org), args.runs)
        base = median_ms(baseline, args.runs)
        size = len(exposition(None))
        print(f"baseline (old per-organization queries only): {base:8.1f} ms")
        print(f"operator scrape (all pools' gauges, lag, process series, {size / 1e6:.1f} MB of text): "
              f"{operator:8.1f} ms  ratio {operator / base:.2f}x")
        print(f"tenant scrape ({args.pools // args.orgs} pools):                {tenant:8.1f} ms  ratio {tenant / base:.2f}x")
        print(f"median of {args.runs} runs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        rd.stop()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
