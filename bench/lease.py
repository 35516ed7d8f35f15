#!/usr/bin/env python3
"""Lease and Return throughput and latency over gRPC and Connect JSON, next to raw pgbench.

Starts throwaway PostgreSQL and Redis and a `warmpool api` (HTTP + gRPC, like a user runs it), seeds
one pool per measurement and run with enough ready instances, then, --runs times, for each --clients level:
  - pgbench runs the server's claim SQL for one Lease (pool by name, SELECT … FOR UPDATE SKIP LOCKED
    on the ready index, INSERT the lease, point the instance at it, COMMIT) on the same PostgreSQL;
  - Connect JSON Lease: h2load --h1 (apt-get install nghttp2-client; without it wrk, and without either, Python
    client processes), then Return of what was leased: `wrk` with a Lua script (apt-get install wrk; without
    it, the Python processes). With both installed, wrk also leases from a pool of its own (the `wrk` row), and
    GET /healthz under each generator shows what the generator itself adds to a p99 (bench/loadgen.py);
  - gRPC Lease, then Return: h2load for Lease and bench/grpc_raw.py (raw HTTP/2 from one asyncio process,
    a body per call) for Return, one connection and one call in flight per client; without h2load, client
    processes with stubs generated from our .proto.
  - with --pods N: Connect JSON Lease from a pod pool of N (at least what one measurement can lease, 2,500/s)
    that the engine (worker, events, observe on the fake cloud) filled, running beside the api and backfilling
    what is leased meanwhile; the engine is settled (the last run's refill, the Returns' destroys) before each
    run's pgbench and before the pod-pool measurement (bench/lease_engine.py); --engine-nice N runs the engine
    at WARMPOOL_ENGINE__NICE=N (README: Letting the engine yield the CPU to the api), the niceness is printed;
    pgbench runs once more right before it (on a pool of its own), and the row is also held against that;
It prints the medians of throughput, p50/p99 latency, the ratio to pgbench's claim rate of the same run,
and Return's rate against Lease's; with --wakeups N, the reservation wake-up latency. Then each run's rate
and p99, and for each Lease measurement the share of calls whose lease took over 25 ms inside the api
(warmpool_lease_seconds, read from the workers' metrics files: the database and the domain, without HTTP,
the loop's queue or the client), which tells a tail in the lease from one around it. The load generators
share the 2 cores with the server and PostgreSQL, so the ratios are a floor for the server itself.

Usage: python bench/lease.py [--seconds 5] [--clients 8] [--runs 3] [--pods 2000] [--wakeups 40]
(the py-spy summary of a --profile run: python bench/spy_summary.py DIR/connect-8-r0.txt; with --pods it also
records the api, worker and applier during the pod-pool measurement, DIR/pods-8-r0-worker.txt etc.; --diagnose
prints what PostgreSQL's backends waited on meanwhile (pg_stat_activity, sampled) and, from pg_stat_statements
preloaded for it, the statements that took PostgreSQL's time in the Connect seeded-pool Lease and the pod-pool
measurement, by process: each engine process and the api log in as a role of their own, bench/pg_statements.py)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import (  # noqa: E402
    WRK_LEASE, WRK_RETURN, generator_check, pct, run_h2load_grpc, run_h2load_h1, run_wrk,
)

SERVICE = "intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"

# The statements the server runs for one Lease of a named pool (app.domain.leases.lease with the
# auth cache warm), in the form pgbench takes: -D org=… -D name=…
CLAIM_SQL = """\
BEGIN;
SELECT id AS pool_id FROM pools WHERE organization_id = :org AND name = :name AND deleted_at IS NULL \\gset
SELECT id AS iid, zone FROM instances WHERE pool_id = :pool_id AND state = 'running' AND lease_id IS NULL AND draining = false ORDER BY stale, ready_at LIMIT 1 FOR UPDATE SKIP LOCKED \\gset
INSERT INTO leases (id, organization_id, pool_id, instance_id, service_tag, state, reservation_id, created_at, expires_at, ended_at, end_reason) VALUES (gen_random_uuid()::text, :org, :pool_id, :iid, 'bench', 'active', NULL, now(), now() + interval '30 minutes', NULL, '') RETURNING id AS lid \\gset
UPDATE instances SET lease_id = :lid, idle_since = NULL WHERE id = :iid;
END;
"""

def server_side(directory: Path) -> dict[str, dict[str, float]]:
    """warmpool_lease_seconds as the api's workers recorded it (multiprocess files in `directory`): per
    transport, the cumulative count of calls by bucket bound (`le`), summed over outcomes and workers. It times
    a lease from its start in the handler to its answer: the database and the domain, not HTTP or queueing."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not directory.is_dir():
        return {}
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    out: dict[str, dict[str, float]] = {}
    for metric in registry.collect():
        for sample in metric.samples if metric.name == "warmpool_lease_seconds" else ():
            if sample.name.endswith("_bucket"):
                per = out.setdefault(sample.labels["transport"], {})
                per[sample.labels["le"]] = per.get(sample.labels["le"], 0.0) + sample.value
        for sample in metric.samples if metric.name == "warmpool_lease_claims" else ():
            if sample.name.endswith("_total"):  # app.api.claim_batch: calls, and the statements that claimed them
                per = out.setdefault("claims", {})
                per[sample.labels["what"]] = per.get(sample.labels["what"], 0.0) + sample.value
    return out


def per_statement(before: dict, after: dict) -> float | None:
    """Named-pool Lease calls per claim statement between two `server_side` readings (the mean batch)."""
    a, b = after.get("claims", {}), before.get("claims", {})
    statements = a.get("statements", 0.0) - b.get("statements", 0.0)
    return None if statements <= 0 else (a.get("calls", 0.0) - b.get("calls", 0.0)) / statements


def share_over(before: dict, after: dict, transport: str, bound: str = "0.025") -> float | None:
    """The share of the calls timed between two `server_side` readings that took longer than `bound` s."""
    a, b = after.get(transport, {}), before.get(transport, {})
    total = a.get("+Inf", 0.0) - b.get("+Inf", 0.0)
    return None if total <= 0 else (total - (a.get(bound, 0.0) - b.get(bound, 0.0))) / total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- load generator processes (this file, run with --worker) ---------------------------------------

def worker(args: argparse.Namespace) -> int:
    """One load process: `threads` clients, one call in flight each, for `seconds` or until its ids run out."""
    ids = Path(args.ids).read_text().split() if args.ids else []
    per_thread = [ids[i::args.threads] for i in range(args.threads)] if ids else None
    latencies: list[list[float]] = [[] for _ in range(args.threads)]
    errors = [0] * args.threads
    # The clock starts when every client of every load process is connected (imports and channels on a
    # loaded machine are not the server's time), on the parent's word: the barrier's action says "ready",
    # waits for "go" and sets the end, before any thread passes it.
    window = {"began": 0.0, "stop_at": 0.0}

    def clock() -> None:
        print("ready", flush=True)
        sys.stdin.readline()
        window["began"] = time.perf_counter()
        window["stop_at"] = window["began"] + args.seconds

    start = threading.Barrier(args.threads, action=clock)

    def grpc_client(n: int) -> None:
        import grpc
        from google.protobuf import empty_pb2

        from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb, lease_api_pb2_grpc

        stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(grpc.insecure_channel(args.target))
        md = [("authorization", f"Bearer {args.token}")]
        todo = iter(per_thread[n]) if per_thread else None
        stub.Ping(empty_pb2.Empty(), timeout=10)  # connected before the clock starts
        start.wait()
        while time.perf_counter() < window["stop_at"]:
            t = time.perf_counter()
            try:
                if todo is None:
                    stub.Lease(pb.LeaseRequest(pool=args.pool, service_tag="bench"), metadata=md, timeout=10)
                else:
                    iid = next(todo, None)
                    if iid is None:
                        return
                    stub.Return(pb.ReturnRequest(instance=iid, service_tag="bench"), metadata=md, timeout=10)
                latencies[n].append(time.perf_counter() - t)
            except grpc.RpcError:
                errors[n] += 1

    def connect_client(n: int) -> None:
        import http.client

        host, port = args.target.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {"content-type": "application/json", "authorization": f"Bearer {args.token}"}
        todo = iter(per_thread[n]) if per_thread else None
        start.wait()
        while time.perf_counter() < window["stop_at"]:
            if todo is None:
                rpc, body = "Lease", json.dumps({"pool": args.pool, "serviceTag": "bench"})
            else:
                iid = next(todo, None)
                if iid is None:
                    return
                rpc, body = "Return", json.dumps({"instance": iid, "serviceTag": "bench"})
            t = time.perf_counter()
            conn.request("POST", f"/api/{SERVICE}/{rpc}", body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                latencies[n].append(time.perf_counter() - t)
            else:
                errors[n] += 1

    fn = grpc_client if args.worker == "grpc" else connect_client
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump({"latencies": [x for ls in latencies for x in ls], "errors": sum(errors),
               "elapsed": time.perf_counter() - window["began"]}, sys.stdout)
    return 0


def run_workers(kind: str, target: str, token: str, pool: str, clients: int, seconds: float,
                ids_file: str | None = None) -> dict:
    procs_n = min(clients, 4)
    per = [clients // procs_n + (1 if i < clients % procs_n else 0) for i in range(procs_n)]
    ids = Path(ids_file).read_text().split() if ids_file else None
    procs = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-ids-"))
    for i, threads in enumerate(per):
        cmd = [sys.executable, __file__, "--worker", kind, "--target", target, "--token", token, "--pool", pool,
               "--threads", str(threads), "--seconds", str(seconds)]
        if ids is not None:
            part = tmp / f"ids-{i}"
            part.write_text("\n".join(ids[i::procs_n]))
            cmd += ["--ids", str(part)]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
    for p in procs:  # all connected, then all go at once
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    lat, errors, elapsed = [], 0, 0.0
    for p in procs:
        out = json.loads(p.communicate()[0])
        lat += out["latencies"]
        errors += out["errors"]
        elapsed = max(elapsed, out["elapsed"])
    shutil.rmtree(tmp, ignore_errors=True)
    return {"rps": len(lat) / elapsed, "p50": pct(lat, 0.5) * 1000, "p99": pct(lat, 0.99) * 1000,
            "ok": len(lat), "errors": errors}


def run_raw_grpc_return(target: str, token: str, ids: list[str], clients: int, seconds: float) -> dict:
    """gRPC Return of `ids` from bench/grpc_raw.py's raw HTTP/2 generator (one asyncio process)."""
    from bench import grpc_raw
    from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb

    bodies = [pb.ReturnRequest(instance=iid, service_tag="bench").SerializeToString() for iid in ids]
    out = grpc_raw.run(target, f"/{SERVICE}/Return", token, bodies, clients, seconds)
    lat = out["latencies"]
    return {"rps": len(lat) / out["elapsed"], "p50": pct(lat, 0.5) * 1000, "p99": pct(lat, 0.99) * 1000,
            "ok": len(lat), "errors": out["errors"]}


def run_pgbench(pg_url: str, org: str, pool_name: str, clients: int, seconds: float) -> dict:
    m = re.match(r".*://(\w+)@([\d.]+):(\d+)/(\w+)", pg_url)
    user, host, port, db = m.groups()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(CLAIM_SQL)
    exe = shutil.which("pgbench") or sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))[-1]
    out = subprocess.run([str(exe), "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
                          "-T", str(int(seconds)), "-D", f"org={org}", "-D", f"name={pool_name}", "-f", f.name,
                          "-h", host, "-p", port, "-U", user, db], capture_output=True, text=True)
    os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    avg = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    return {"rps": tps, "avg": avg, "errors": int(failed.group(1)) if failed else 0}


# ---- the run -------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--api-workers", type=int, default=2,
                    help="`warmpool api --workers N` (default 2: one per core; --profile needs 1)")
    ap.add_argument("--clients", default="8")
    ap.add_argument("--runs", type=int, default=3, help="measurements of each row; the medians are printed")
    ap.add_argument("--seed", type=int, default=6000, help="ready instances per measured pool and run, at least "
                    "2,500 a second of measurement (pgbench's pools: three times as many, at least 6,000 a second)")
    ap.add_argument("--pods", type=int, default=0, help="also lease from a pod pool of this size that the "
                    "engine (worker, events, observe, fake cloud) filled; 0: skip")
    ap.add_argument("--engine-nice", type=int, help="WARMPOOL_ENGINE__NICE of the engine's processes under --pods "
                    "(default: the setting's, as `warmpool worker` runs by default)")
    ap.add_argument("--wakeups", type=int, default=0, help="also time this many reservation wake-ups; 0: skip")
    ap.add_argument("--profile", metavar="DIR", help="record the api process with py-spy during each Lease "
                    "measurement (collapsed stacks in DIR; pip install py-spy)")
    ap.add_argument("--diagnose", action="store_true", help="print what PostgreSQL's backends were doing during "
                    "the pod-pool measurement (sampled) and which statements took its time (pg_stat_statements)")
    ap.add_argument("--worker", choices=["grpc", "connect"], help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from bench import pg_statements
    from scripts.testenv import Postgres, Redis

    pg, rd = Postgres(options=pg_statements.SERVER_OPTIONS if args.diagnose else ""), Redis()
    db_url, redis_url = pg.start(), rd.start()
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "WARMPOOL_DATABASE_URL": db_url, "WARMPOOL_REDIS_URL": redis_url,
           "WARMPOOL_GRPC_PORT": str(grpc_port), "WARMPOOL_LOG_LEVEL": "WARNING", "WARMPOOL_ENV": "test",
           "WARMPOOL_SECRET_KEYS": os.environ.get("WARMPOOL_SECRET_KEYS") or Fernet.generate_key().decode()}
    if args.engine_nice is not None:  # the CLI applies it in worker, events, observe and beat, never in api
        env["WARMPOOL_ENGINE__NICE"] = str(args.engine_nice)
    os.environ.update({k: v for k, v in env.items() if k.startswith("WARMPOOL_")})  # a key for runner secrets too
    exe = str(Path(sys.executable).with_name("warmpool"))
    subprocess.run([exe, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    if args.diagnose:
        pg_statements.install()
    logdir = Path(tempfile.mkdtemp(prefix="warmpool-bench-"))
    if args.profile and args.api_workers != 1:
        sys.exit("--profile records one process: add --api-workers 1")
    commands = {"api": ["api", "--port", str(port), "--workers", str(args.api_workers)]}
    if args.pods:
        commands.update(worker=["worker", "--concurrency", "8"], events=["events"], observe=["observe"])
    # The api's workers keep their metrics where this script reads them (server_side): the lease's own time.
    args.metrics_dir = logdir / "metrics-api"
    args.metrics_dir.mkdir()  # it must exist before the api first imports prometheus_client
    envs = {name: pg_statements.env_for(name, env) if args.diagnose else env for name in commands}
    envs["api"] = {**envs["api"], "PROMETHEUS_MULTIPROC_DIR": str(args.metrics_dir)}
    procs = {name: subprocess.Popen([exe, *cmd], env=envs[name], stdout=open(logdir / f"{name}.log", "w"),
                                    stderr=subprocess.STDOUT, start_new_session=True) for name, cmd in commands.items()}
    args.api_pid = procs["api"].pid
    print(f"logs: {logdir}", flush=True)
    args.pids = {name: proc.pid for name, proc in procs.items()}
    pidfile = Path(pg.dir) / "data" / "postmaster.pid"
    if pidfile.exists():
        args.pids["postgres"] = int(pidfile.read_text().split()[0])
    if rd.proc is not None:
        args.pids["redis"] = rd.proc.pid
    try:
        return measure(args, db_url, port, grpc_port, logdir)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.wait(20)
        rd.stop()
        pg.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(args: argparse.Namespace, db_url: str, port: int, grpc_port: int, logdir: Path) -> int:
    import urllib.request

    import sqlalchemy as sa

    from app.db import session_scope
    from app.domain import pools, quotas, tenancy, tokens
    from app.domain.states import PoolKind
    from tests.leasing import add_ready_bulk

    deadline = time.monotonic() + 120  # each api worker imports everything: slow on a busy machine
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"warmpool api did not start; see {logdir / 'api.log'}")
            time.sleep(0.2)
    with session_scope() as s:
        org = tenancy.ensure_organization("bench", session=s)
        _, token = tokens.create_token(org, session=s, scope=tokens.Scope.MEMBER)
    org_id = org.id
    levels = [int(c) for c in args.clients.split(",")]
    use_wrk = shutil.which("wrk") is not None
    use_h2load = shutil.which("h2load") is not None
    # Connect JSON Lease is driven by h2load --h1 where it is installed (bench/loadgen.py says why); wrk's
    # figures on a pool of their own beside it.
    wrk_too = use_wrk and use_h2load
    kinds = ("pgbench", "connect", "grpc") + (("wrk",) if wrk_too else ()) + (("pgbench-near",) if args.pods else ())
    names = [f"{kind}-{c}-r{run}" for run in range(args.runs) for c in levels for kind in kinds]
    # Room for the whole measurement: a pool that runs dry turns the rest of the run into refusals (pgbench
    # claims about 4,000/s on two quiet cores, so 3 x 6,000 lasted under 5 s).
    seeded = {"pgbench": max(3 * args.seed, round(6000 * args.seconds)), "other": max(args.seed, round(2500 * args.seconds))}
    # The pod pool holds one measurement too: one that runs dry measures the engine's refill (the calls wait on
    # reservations the refill serves), not the Lease.
    pod_size = max(args.pods, seeded["other"]) if args.pods else 0
    with session_scope() as s:  # the operator's override: the seeded pools are far above the default quota
        # The pod pool is made in one wave (max_creating: its size), as the README tells operators of big pools.
        quotas.set_quota(org_id, max_pool_size=max(seeded["pgbench"], pod_size),
                         max_instances=seeded["pgbench"] * len(names) + args.wakeups + (args.runs + 2) * pod_size,
                         max_creating=max(pod_size, 10), session=s)
    for name in names:
        size = seeded["pgbench" if name.startswith("pgbench") else "other"]
        with session_scope() as s:
            pool = pools.new_pool(org_id, kind=PoolKind.NAMED, name=name, min_size=0, max_size=size,
                                  empty_policy="reject")
            pools.insert_pool(pool, session=s, conflict=name)
        add_ready_bulk(pool.id, org_id, size)
    with session_scope() as s:
        s.execute(sa.text("ANALYZE"))

    base = f"http://127.0.0.1:{port}/api/{SERVICE}"
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}

    def connect_lease(pool_name: str, c: int) -> dict:
        if use_h2load:
            body = json.dumps({"pool": pool_name, "serviceTag": "bench"}).encode()
            return run_h2load_h1(f"{base}/Lease", headers, body, c, args.seconds)
        if use_wrk:
            return run_wrk(f"{base}/Lease", WRK_LEASE % {"token": token, "pool": pool_name}, c, args.seconds)
        return run_workers("connect", f"127.0.0.1:{port}", token, pool_name, c, args.seconds)

    print(f"warmpool lease benchmark: {args.seconds:.0f} s per measurement, {args.runs} runs (medians), "
          f"{os.cpu_count()} cores shared by server ({args.api_workers} api workers), PostgreSQL and load; "
          f"Connect Lease load: {'h2load --h1' if use_h2load else 'wrk' if use_wrk else 'Python processes'}"
          f"{' (and wrk on a pool of its own: the wrk row)' if wrk_too else ''}, Connect Return load: "
          f"{'wrk' if use_wrk else 'Python processes'}; gRPC Lease load: "
          f"{'h2load' if use_h2load else 'Python processes'}, gRPC Return load: "
          f"{'raw HTTP/2 from one asyncio process (bench/grpc_raw.py)' if use_h2load else 'Python processes'}")
    rows: dict[tuple[int, str], list[dict]] = {}
    checks: list[dict[str, float]] = []
    pods = None
    from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
    from bench.pg_statements import Statements

    statements = Statements()
    if args.pods:
        from bench.lease_engine import fill_pod_pool

        if pod_size > args.pods:
            print(f"pod pool: {pod_size:,} instances (--pods {args.pods:,} raised to hold one measurement, "
                  f"2,500 leases/s for {args.seconds:.0f} s)")
        pods = fill_pod_pool(org_id, token, port, pod_size, logdir)
        # read from the processes (they filled the pool, so they have applied WARMPOOL_ENGINE__NICE)
        print("niceness: " + ", ".join(f"{who} {os.getpriority(os.PRIO_PROCESS, pid)}" for who, pid in args.pids.items()
                                       if who in ("api", "worker", "events", "observe"))
              + "; load average at the start: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    for run in range(args.runs):
        for c in levels:
            if pods is not None:  # the last run's backfill is done: not on pgbench's clock, nor on the api's
                pods.refill()
            pgb = run_pgbench(db_url, org_id, f"pgbench-{c}-r{run}", c, args.seconds)
            rows.setdefault((c, "pgbench claim SQL"), []).append(dict(pgb, ratio=1.0))
            for kind in ("connect", "grpc"):
                name = f"{kind}-{c}-r{run}"
                spy = profile(args, f"{name}")
                from bench.lease_engine import _tree_cpu

                api_cpu, timed = _tree_cpu(args.pids["api"]), server_side(args.metrics_dir)
                if args.diagnose and kind == "connect":
                    statements.reset()
                if kind == "connect":
                    lease = connect_lease(name, c)
                elif use_h2load:
                    # A fixed count (h2load cannot tell gRPC errors): about as many calls as Connect answered.
                    sent = min(seeded["other"], max(200, round(rows[(c, "Connect JSON Lease")][-1]["rps"] * args.seconds)))
                    message = pb.LeaseRequest(pool=name, service_tag="bench").SerializeToString()
                    lease = run_h2load_grpc(f"127.0.0.1:{grpc_port}", f"/{SERVICE}/Lease", token, message, c, sent)
                else:
                    lease = run_workers("grpc", f"127.0.0.1:{grpc_port}", token, name, c, args.seconds)
                api_cpu, after = _tree_cpu(args.pids["api"]) - api_cpu, server_side(args.metrics_dir)
                over, batch = share_over(timed, after, kind), per_statement(timed, after)
                if args.diagnose and kind == "connect":
                    print(statements.report(f"Connect JSON Lease, seeded pool, {c} clients, run {run}"), flush=True)
                if spy is not None:
                    spy.wait(30)
                ids = leased_instances(name)
                if "sent" in lease:  # h2load: a call succeeded iff it made a lease
                    lease.update(ok=len(ids), errors=lease["sent"] - len(ids), rps=len(ids) / lease["elapsed"])
                else:
                    checked(lease, ids, name, c)
                lease["api_us"] = api_cpu / max(1, lease["ok"]) * 1e6  # the api's CPU (all workers) per answered call
                lease["server_over"], lease["batch"] = over, batch
                ids_file = logdir / f"{name}.ids"
                ids_file.write_text("\n".join(ids))
                # A third of the Lease's time: Return may run up to three times as fast before wrk runs out of
                # leased ids (and counts the refusals of "exhausted" as errors).
                back_seconds = max(1.0, args.seconds / 3)
                if kind == "connect" and use_wrk:
                    ret = run_wrk(f"{base}/Return", WRK_RETURN % {"token": token, "ids": ids_file,
                                                                  "threads": min(c, 2)}, c, back_seconds)
                elif kind == "connect":
                    ret = run_workers("connect", f"127.0.0.1:{port}", token, name, c, back_seconds, str(ids_file))
                elif use_h2load:  # as light a generator as h2load's for Lease (which cannot vary the body)
                    ret = run_raw_grpc_return(f"127.0.0.1:{grpc_port}", token, ids, c, back_seconds)
                else:
                    ret = run_workers("grpc", f"127.0.0.1:{grpc_port}", token, name, c, back_seconds, str(ids_file))
                label = "Connect JSON" if kind == "connect" else "gRPC"
                rows.setdefault((c, f"{label} Lease"), []).append(dict(lease, ratio=lease["rps"] / pgb["rps"]))
                rows.setdefault((c, f"{label} Return"), []).append(
                    dict(ret, ratio=ret["rps"] / pgb["rps"], vs_lease=ret["rps"] / max(lease["rps"], 1e-9)))
            if wrk_too:  # the other generator, on the same server, right after: its own figures
                name = f"wrk-{c}-r{run}"
                lease = checked(run_wrk(f"{base}/Lease", WRK_LEASE % {"token": token, "pool": name}, c, args.seconds),
                                leased_instances(name), name, c)
                rows.setdefault((c, "Connect JSON Lease, wrk"), []).append(dict(lease, ratio=lease["rps"] / pgb["rps"]))
                checks.append(generator_check(f"http://127.0.0.1:{port}", c, args.seconds))
            if pods is not None:
                from bench.lease_engine import _ready, cpu_of, lease_tally

                waited = pods.refill()  # and the destroys of the Returns just measured are done
                # pgbench again, right before the pod pool's row: its baseline as near in time as the seeded rows'
                # (pgbench swings by a third between the measurements of one run on this shared machine).
                near = run_pgbench(db_url, org_id, f"pgbench-near-{c}-r{run}", c, args.seconds)
                cpu0, tally0 = cpu_of(args.pids), lease_tally(pods.pool_id)
                spies = [profile(args, f"pods-{c}-r{run}-{who}", args.pids[who]) for who in ("api", "worker", "events")]
                from bench.lease_engine import ActivitySampler

                if args.diagnose:
                    statements.reset()
                timed = server_side(args.metrics_dir)
                with ActivitySampler() as sampled:
                    lease = connect_lease(pods.name, c)
                if args.diagnose:
                    print(statements.report(f"Connect JSON Lease, pod pool, {c} clients, run {run}"), flush=True)
                    print("  pg_stat_activity, sampled every 50 ms (samples, who, state, wait event, query):\n"
                          + sampled.report(), flush=True)
                cpu1, tally1 = cpu_of(args.pids), lease_tally(pods.pool_id)
                after = server_side(args.metrics_dir)
                lease["server_over"], lease["batch"] = share_over(timed, after, "connect"), per_statement(timed, after)
                for spy in spies:
                    if spy is not None:
                        spy.wait(30)
                print(f"  pods run {run}: {lease['rps']:.0f}/s, {tally1['leases'] - tally0['leases']} leases, "
                      f"{tally1['reserved'] - tally0['reserved']} of them served after a wait (pool empty), "
                      f"{_ready(pods.pool_id)} ready at the end (settled {waited:.1f} s before); CPU s: "
                      + " ".join(f"{k} {cpu1[k] - cpu0[k]:.2f}" for k in cpu1), flush=True)
                rows.setdefault((c, "Connect JSON Lease, pods"), []).append(
                    dict(lease, ratio=lease["rps"] / pgb["rps"], near=near["rps"], near_ratio=lease["rps"] / near["rps"]))
    print(f"{'clients':>7}  {'what':<25} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  {'vs pgbench':>10}"
          f"  {'vs Lease':>8}")
    for (c, what), rs in rows.items():
        lat = "" if "p50" not in rs[0] else f"{median([r['p50'] for r in rs]):>8.2f} {median([r['p99'] for r in rs]):>8.2f}"
        vs = f"{median([r['vs_lease'] for r in rs]):>8.0%}" if "vs_lease" in rs[0] else ""
        print(f"{c:>7}  {what:<25} {median([r['rps'] for r in rs]):>8.0f} {lat:>17} {sum(r['errors'] for r in rs):>6}"
              f"  {median([r['ratio'] for r in rs]):>10.0%}  {vs}")
    print("api CPU per Lease, all workers (µs, median): " + "; ".join(
        f"{what} @{c}: {median([r['api_us'] for r in rs]):.0f}" for (c, what), rs in rows.items()
        if what.endswith(" Lease") and "api_us" in rs[0]))
    print("per run req/s: " + "; ".join(f"{what} @{c}: " + ", ".join(f"{r['rps']:.0f}" for r in rs)
                                       for (c, what), rs in rows.items()))
    print("per run p99 ms: " + "; ".join(f"{what} @{c}: " + ", ".join(f"{r['p99']:.1f}" for r in rs)
                                        for (c, what), rs in rows.items() if "p99" in rs[0]))
    print("per run, calls whose lease (database and domain, in the api) took over 25 ms (warmpool_lease_seconds): "
          + "; ".join(f"{what} @{c}: " + ", ".join("-" if r["server_over"] is None else f"{r['server_over']:.2%}"
                                                   for r in rs)
                      for (c, what), rs in rows.items() if "server_over" in rs[0]))
    print("per run, named-pool Lease calls per claim statement (warmpool_lease_claims_total, app.api.claim_batch): "
          + "; ".join(f"{what} @{c}: " + ", ".join("-" if r["batch"] is None else f"{r['batch']:.2f}" for r in rs)
                      for (c, what), rs in rows.items() if "batch" in rs[0]))
    for (c, what), rs in rows.items():
        if "near" in rs[0]:
            print(f"{what} @{c} against pgbench measured right before it (the engine settled; the table's ratio is "
                  f"against the run's first pgbench): {median([r['near_ratio'] for r in rs]):.0%} (per run "
                  + ", ".join(f"{r['near_ratio']:.0%} of {r['near']:.0f}/s" for r in rs) + ")")
    if args.wakeups:
        from bench.lease_engine import time_wakeups

        if pods is not None:  # the engine settled: the last run's backfill is not on the clock
            pods.refill()
        w = time_wakeups(port, args.wakeups)
        print(f"reservation wake-up, instance ready -> waiting Lease answered ({args.wakeups} calls): "
              f"p50 {w['p50']:.1f} ms, p99 {w['p99']:.1f} ms, max {w['max']:.1f} ms (targets: 20 / 50 ms); of which the "
              f"applier's transaction: p50 {w['step_p50']:.1f} ms, max {w['step_max']:.1f} ms; the slowest wake-up's "
              f"transaction {w['worst_step']:.1f} ms, of which {w['worst_gc']:.1f} ms collecting garbage in the "
              f"applier's process (at most {w['gc_max']:.1f} ms in any wake-up)")
    print("targets: Connect JSON Lease >= 35% of pgbench (moonshot 60%); gRPC at least that; p99 <= 25 ms at 8 "
          "clients; 0 errors; Return >= 80% of Lease")
    if checks:
        print("the load generators' own tail, GET /healthz right after each run's wrk row, p99 ms: wrk "
              + ", ".join(f"{ch['wrk']:.1f}" for ch in checks) + "; h2load --h1 "
              + ", ".join(f"{ch['h2load']:.1f}" for ch in checks))
    print("load average (1/5/15 min) at the end: %.2f %.2f %.2f (other work on the machine skews every figure)"
          % os.getloadavg())
    return 0


def profile(args: argparse.Namespace, name: str, pid: int | None = None) -> subprocess.Popen | None:
    if not args.profile:
        return None
    Path(args.profile).mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "-p", str(pid or args.api_pid), "-d", str(max(1, int(args.seconds))), "-r", "200",
                             "-f", "raw", "-o", str(Path(args.profile) / f"{name}.txt"), "--gil", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def checked(lease: dict, ids: list[str], name: str, clients: int) -> dict:
    """A Connect measurement's answers held against the database: each answer of 200 made one lease, and no more
    leases were made than that, but for the calls in flight (one per client) when the generator stopped."""
    if not lease["ok"] <= len(ids) <= lease["ok"] + clients:
        print(f"  {name}: {lease['ok']} answers of 200, {len(ids)} leases in the database", flush=True)
        lease["errors"] += abs(len(ids) - lease["ok"])
    return lease


def leased_instances(pool_name: str) -> list[str]:
    import sqlalchemy as sa

    from app.db import session_scope

    with session_scope() as s:
        return list(s.execute(sa.text(
            "SELECT l.instance_id FROM leases l JOIN pools p ON p.id = l.pool_id "
            "WHERE p.name = :n AND l.state = 'active' ORDER BY l.created_at"), {"n": pool_name}).scalars())


if __name__ == "__main__":
    sys.exit(main())
