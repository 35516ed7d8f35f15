"""The lease race under `warmpool dev` itself (SQLite, the in-process Redis, the local provider), as a
new user runs it: 64 clients, half gRPC and half Connect, race for a warm pool's ready instances round
after round; after each round the dev database shows no instance with two active leases and no active
lease that no client received."""
from __future__ import annotations

import os
import time

import sqlalchemy as sa

from app.db import make_engine
from app.models import Instance, Lease, Reservation
from tests.e2e.lease_crowd import Crowd
from tests.e2e.test_dev import ready_pool, start_dev, stop_dev

CLIENTS = 64
ROUNDS = int(os.environ.get("WARMPOOL_DEV_RACE_ROUNDS", "5"))
SIZE = 3


def test_the_lease_race_under_warmpool_dev(tmp_path):
    db = tmp_path / "data" / "wp.sqlite3"
    log_path = tmp_path / "dev.log"
    proc, base, token, runner, _, grpc = start_dev(tmp_path, startup_seconds=90)
    crowd = None
    engine = None
    try:
        pool = ready_pool(base, token, runner, SIZE, tmp_path)
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
        stop_dev(proc)
    assert proc.returncode == 0, log_path.read_text()[-2000:]
