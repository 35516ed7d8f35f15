"""A pool held by another transaction (a reconcile pass holds its pool's row for the whole pass) holds up
only its own events: the applier applies the rest of the batch, and serves the reservations waiting on it,
first. PostgreSQL only (SQLite has one writer at a time: a pass holds the whole database). Checked in the
database while the pool is still held, then after."""
from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from app import events as ev
from app.db import get_engine, session_scope
from app.domain import leases, reservations
from app.models import Instance, Lease, Pool
from config.settings import get_settings
from tests.integration.test_batched_apply import make_pool
from workers.events import Applier


def states(pool_id: str) -> list[str]:
    with session_scope() as s:
        return sorted(s.execute(sa.select(Instance.state).where(Instance.pool_id == pool_id)).scalars())


def test_a_held_pool_holds_up_only_its_own_events(org, redis_client):
    held_id, held_ids = make_pool(org.org_id, "held", 3)
    free_id, free_ids = make_pool(org.org_id, "free", 3)
    with session_scope() as s:  # someone waits on the free pool: a landing there serves them at once
        s.get(Pool, free_id).empty_policy = "reserve"
    with session_scope() as s:
        queued = leases.lease(org.org_id, "free", service_tag="late", reservation_id="late-1", session=s)
    assert not isinstance(queued, leases.LeaseView)
    pass_conn = get_engine().connect()
    pass_tx = pass_conn.begin()  # a pass of the held pool: its row locked as the reconciler locks it
    pass_conn.execute(sa.select(Pool.id).where(Pool.id == held_id).with_for_update(key_share=True))
    for pool_id, ids in ((held_id, held_ids), (free_id, free_ids)):
        for instance_id in ids:
            ev.publish(ev.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state="running", seq=1),
                       client=redis_client)
    applier = Applier(client=redis_client, consumer="a")
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(applier.poll(block_ms=10)), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 15
        while states(free_id) != ["running"] * 3:  # committed while the held pool is still held
            assert time.monotonic() < deadline and not done, (states(free_id), done)
            time.sleep(0.05)
        with session_scope() as s:  # the waiting call got its instance meanwhile
            assert reservations.list_waiting(free_id, session=s) == []
            leased = s.execute(sa.select(Lease.instance_id).where(Lease.service_tag == "late")).scalars().all()
            assert len(leased) == 1 and leased[0] in free_ids, leased
        assert states(held_id) == ["requested"] * 3 and not done  # the held pool's events wait for the pass
    finally:
        pass_tx.rollback()  # the pass ends
        pass_conn.close()
    worker.join(15)
    assert done == [6]
    assert states(held_id) == ["running"] * 3
    s = get_settings().engine
    assert redis_client.xpending(s.events_stream, s.events_group)["pending"] == 0
