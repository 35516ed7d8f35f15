#!/usr/bin/env python3
"""The claim's SQL alone, driven by pgbench: what one Lease costs PostgreSQL in each shape, without the api.

Starts a throwaway PostgreSQL, migrates it, makes pools of --size ready instances, and runs pgbench (8 clients,
prepared statements) --seconds on each shape in turn, --repeat times:
  - pgbench's claim: the five-statement transaction bench/lease.py compares the api with (CLAIM_SQL);
  - one statement: the api's claim of one call (app.domain.leases_async.CLAIM_NAMED);
  - batch of K: the api's claim of K calls that queued behind one (CLAIM_NAMED_MANY, app.api.claim_batch).
Prints claims/s (transactions x calls per statement), medians, and each against pgbench's claim.
Usage: python bench/claim_sql.py [--seconds 5] [--repeat 3] [--batch 3] [--size 120000]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pgbench_sql(sql: str, values: dict[str, str]) -> str:
    """A `%(name)s` statement as one pgbench line: values inlined as SQL, the rest as pgbench `:name` variables."""
    for name, value in values.items():
        sql = sql.replace(f"%({name})s", value)
    return " ".join(re.sub(r"%\((\w+)\)s", r":\1", sql).split()) + ";\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--size", type=int, default=120_000, help="ready instances per pool (one pool per shape and run)")
    args = ap.parse_args()

    from scripts.testenv import Postgres

    pg = Postgres()
    url = pg.start()
    os.environ["WARMPOOL_DATABASE_URL"] = url
    try:
        subprocess.run([str(Path(sys.executable).with_name("warmpool")), "migrate"], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ))
        from app.db import session_scope
        from app.domain import quotas
        from app.domain.leases_async import CLAIM_NAMED, CLAIM_NAMED_MANY
        from bench.lease import CLAIM_SQL
        from tests.conftest import make_org
        from tests.leasing import add_ready_bulk, make_pool

        world = make_org("claim-sql")
        with session_scope() as s:
            quotas.set_quota(world.org_id, max_pool_size=10 * args.size, max_instances=10 ** 8, max_pools=1000, session=s)
        new_id = "gen_random_uuid()::text"
        k = args.batch
        shapes = {
            "pgbench's claim": (CLAIM_SQL, 1),
            "one statement": (pgbench_sql(CLAIM_NAMED, {"lease_id": new_id, "service_tag": "'bench'",
                                                        "wished": "NULL", "now": "now()"}), 1),
            f"batch of {k}": (pgbench_sql(CLAIM_NAMED_MANY, {
                "lease_ids": "ARRAY[" + ", ".join([new_id] * k) + "]", "service_tags": "ARRAY[" + ", ".join(["'bench'"] * k) + "]",
                "wished": "ARRAY[" + ", ".join(["NULL"] * k) + "]::timestamptz[]", "k": str(k), "now": "now()"}), k),
        }
        user, host, port, db = re.match(r".*://(\w+)@([\d.]+):(\d+)/(\w+)", url).groups()
        exe = shutil.which("pgbench") or str(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))[-1])
        script = Path(pg.dir) / "claim.sql"
        rates: dict[str, list[float]] = {name: [] for name in shapes}
        for run in range(args.repeat):
            for i, (name, (sql, per)) in enumerate(shapes.items()):
                pool = make_pool(world.org_id, f"r{run}-{i}", max_size=2 * args.size)
                add_ready_bulk(pool.id, world.org_id, args.size)
                script.write_text(sql)
                out = subprocess.run([exe, "-n", "-M", "prepared", "-c", "8", "-j", "2", "-T", str(args.seconds),
                                      "-D", f"org={world.org_id}", "-D", f"org_id={world.org_id}",
                                      "-D", f"name={pool.name}", "-D", f"pool_name={pool.name}", "-f", str(script),
                                      "-h", host, "-p", port, "-U", user, db], capture_output=True, text=True)
                found = re.search(r"tps = ([\d.]+)", out.stdout)
                if out.returncode != 0 or not found:
                    raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
                rates[name].append(float(found.group(1)) * per)
                print(f"  run {run}: {name:<16} {rates[name][-1]:8,.0f} claims/s", flush=True)
        base = statistics.median(rates["pgbench's claim"])
        print(f"claims/s, medians of {args.repeat} ({args.seconds} s each, 8 clients, pools of {args.size:,}):")
        for name, values in rates.items():
            print(f"  {name:<16} {statistics.median(values):8,.0f}   {statistics.median(values) / base:5.2f} x pgbench's claim")
        print("load average (1/5/15 min) at the end: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
