"""The lease race under `warmpool dev` itself (SQLite, the in-process Redis, the local provider), as a
new user runs it: 64 clients, half gRPC and half Connect, race for a warm pool's ready instances round
after round; after each round the dev database shows no instance with two active leases and no active
lease that no client received."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa

from app.db import make_engine
from app.models import Instance, Lease, Reservation
from tests.e2e.lease_crowd import Crowd
from tests.e2e.test_dev import call, free_port

CLIENTS = 64
ROUNDS = int(os.environ.get("WARMPOOL_DEV_RACE_ROUNDS", "5"))
SIZE = 3


def test_the_lease_race_under_warmpool_dev(tmp_path):
    http, grpc, flower = free_port(), free_port(), free_port()
    db = tmp_path / "data" / "wp.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMPOOL_")}
    env.update(WARMPOOL_HTTP_PORT=str(http), WARMPOOL_GRPC_PORT=str(grpc), WARMPOOL_FLOWER__PORT=str(flower),
               WARMPOOL_DATA_DIR=str(tmp_path / "data"), WARMPOOL_DATABASE_URL=f"sqlite:///{db}",
               WARMPOOL_LOG_LEVEL="WARNING")
    log_path = tmp_path / "dev.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("warmpool")), "dev", "--embedded-redis", "fakeredis"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    crowd = None
    engine = None
    try:
        deadline = time.monotonic() + 90
        token = runner = ""
        while time.monotonic() < deadline and not (token and runner):
            for line in log_path.read_text().splitlines():
                if "export WARMPOOL_TOKEN=" in line:
                    token = line.split("=", 1)[1].strip()
                if line.strip().startswith("runner") and "local" in line:
                    runner = line.split()[-1]
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.2)
        assert token and runner, log_path.read_text()
        base = f"http://127.0.0.1:{http}"
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        ec = call(base, token, "gitpod.v1.RunnerConfigurationService/CreateEnvironmentClass",
                  {"runnerId": runner, "displayName": "local"})["id"]
        project = call(base, token, "gitpod.v1.ProjectService/CreateProject",
                       {"name": "p", "prebuildConfiguration": {"enabled": True, "environmentClassIds": [ec]}})["project"]["id"]
        pool = call(base, token, "gitpod.v1.PrebuildService/CreateWarmPool",
                    {"projectId": project, "environmentClassId": ec, "minSize": SIZE, "maxSize": SIZE})["warmPool"]["id"]
        engine = make_engine(f"sqlite:///{db}")
        crowd = Crowd(CLIENTS, f"127.0.0.1:{grpc}", base, token)

        def ready() -> int:
            with engine.begin() as c:
                return c.execute(sa.select(sa.func.count()).select_from(Instance).where(
                    Instance.pool_id == pool, Instance.state == "running", Instance.lease_id.is_(None),
                    Instance.draining == sa.false())).scalar_one()

        for rnd in range(ROUNDS):
            until = time.monotonic() + 120
            while ready() < SIZE:
                assert time.monotonic() < until, f"round {rnd}: the pool never got {SIZE} ready\n{log_path.read_text()[-3000:]}"
                time.sleep(0.1)
            tally = crowd.round(pool, timeout=1.5, give_back=False)
            # Winners are answered at once; the rest wait for a backfill until just before their deadline.
            assert tally.outcomes["ok"] >= 1, (rnd, tally.outcomes)
            assert set(tally.outcomes) <= {"ok", "unavailable", "deadline_exceeded"}, (rnd, tally.outcomes)
            # The losers' automatic reservations are withdrawn as they answer; give the last ones a moment.
            until = time.monotonic() + 10
            while True:
                with engine.begin() as c:
                    doubles = c.execute(sa.select(Lease.instance_id).where(Lease.pool_id == pool, Lease.state == "active")
                                        .group_by(Lease.instance_id).having(sa.func.count() > 1)).scalars().all()
                    active = set(c.execute(sa.select(Lease.instance_id, Lease.expires_at)
                                           .where(Lease.pool_id == pool, Lease.state == "active")).all())
                    waiting = c.execute(sa.select(sa.func.count()).select_from(Reservation).where(
                        Reservation.pool_id == pool, Reservation.state == "waiting")).scalar_one()
                assert doubles == [], (rnd, doubles)
                got = {(g.instance, g.expires) for g in tally.received}
                if active == got and waiting == 0 or time.monotonic() > until:
                    break
                time.sleep(0.1)
            assert active == got, (rnd, "active leases that no client received", active - got)
            assert waiting == 0, (rnd, f"{waiting} reservations waiting without a caller")
            for g in tally.received:
                assert crowd.give_back(g) == "ok"
    finally:
        if crowd is not None:
            crowd.close()
        if engine is not None:
            engine.dispose()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, log_path.read_text()[-2000:]
