"""A pool held by another transaction (a reconcile pass holds its pool's row for the whole pass) holds up
only its own events: the applier applies the rest of the batch, and the batches after it, and serves the
reservations waiting on them, without waiting for that pass; the held pool's events stay pending, are applied
once the pass ends, and are applied waiting for the lock once they have waited HOLD_MAX_SECONDS. PostgreSQL
only (SQLite has one writer at a time: a pass holds the whole database). Checked in the database and in the
stream's pending list while the pool is still held, then after."""
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
from workers import events as applier_module
from workers.events import Applier


def states(pool_id: str) -> list[str]:
    with session_scope() as s:
        return sorted(s.execute(sa.select(Instance.state).where(Instance.pool_id == pool_id)).scalars())


def pending(redis_client) -> int:
    s = get_settings().engine
    return redis_client.xpending(s.events_stream, s.events_group)["pending"]


class Pass:
    """A reconcile pass of one pool: its row locked as the reconciler locks it, until `end()`."""

    def __init__(self, pool_id: str) -> None:
        self.conn = get_engine().connect()
        self.tx = self.conn.begin()
        self.conn.execute(sa.select(Pool.id).where(Pool.id == pool_id).with_for_update(key_share=True))

    def end(self) -> None:
        self.tx.rollback()
        self.conn.close()


def publish(redis_client, pool_id: str, ids: list[str], state: str, seq: int) -> None:
    for instance_id in ids:
        ev.publish(ev.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state=state, seq=seq),
                   client=redis_client)


def test_a_held_pool_holds_up_only_its_own_events(org, redis_client):
    held_id, held_ids = make_pool(org.org_id, "held", 3)
    free_id, free_ids = make_pool(org.org_id, "free", 3)
    with session_scope() as s:  # someone waits on the free pool: a landing there serves them at once
        s.get(Pool, free_id).empty_policy = "reserve"
    with session_scope() as s:
        queued = leases.lease(org.org_id, "free", service_tag="late", reservation_id="late-1", session=s)
    assert not isinstance(queued, leases.LeaseView)
    running = Pass(held_id)
    try:
        publish(redis_client, held_id, held_ids, "running", 1)
        publish(redis_client, free_id, free_ids, "running", 1)
        applier = Applier(client=redis_client, consumer="a")
        # One batch: the free pool's events are committed and acknowledged while the held pool is still held,
        # and the call waiting there got its instance; the held pool's stay pending, not applied.
        assert applier.poll(block_ms=10) == 3
        assert states(free_id) == ["running"] * 3 and states(held_id) == ["requested"] * 3
        with session_scope() as s:
            assert reservations.list_waiting(free_id, session=s) == []
            leased = s.execute(sa.select(Lease.instance_id).where(Lease.service_tag == "late")).scalars().all()
            assert len(leased) == 1 and leased[0] in free_ids, leased
        assert pending(redis_client) == 3
        # The batches after it do not wait for the pass either (before, the applier waited there for the lock).
        publish(redis_client, free_id, free_ids[1:], "stopped", 2)
        assert applier.poll(block_ms=10) == 2
        assert states(free_id) == ["running", "stopped", "stopped"] and states(held_id) == ["requested"] * 3
        # A later event of the held pool joins the held-back ones, in their order.
        publish(redis_client, held_id, held_ids[:1], "stopped", 2)
        assert applier.poll(block_ms=10) == 0 and pending(redis_client) == 4
    finally:
        running.end()
    assert applier.poll(block_ms=10) == 4  # the pass ended: applied at the next poll, without waiting
    assert states(held_id) == ["running", "running", "stopped"]
    assert pending(redis_client) == 0


def test_events_held_back_too_long_wait_for_the_pass(org, redis_client, monkeypatch):
    held_id, held_ids = make_pool(org.org_id, "held", 2)
    monkeypatch.setattr(applier_module, "HOLD_MAX_SECONDS", 0.3)
    running = Pass(held_id)
    publish(redis_client, held_id, held_ids, "running", 1)
    applier = Applier(client=redis_client, consumer="a")
    assert applier.poll(block_ms=10) == 0 and pending(redis_client) == 2
    time.sleep(0.35)  # held back past the bound: the next poll waits for the lock
    done: list[int] = []
    waiter = threading.Thread(target=lambda: done.append(applier.poll(block_ms=10)), daemon=True)
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive() and not done and states(held_id) == ["requested"] * 2
    running.end()
    waiter.join(15)
    assert done == [2] and states(held_id) == ["running"] * 2 and pending(redis_client) == 0


def test_a_stopping_applier_applies_what_it_held_back(org, redis_client):
    held_id, held_ids = make_pool(org.org_id, "held", 2)
    running = Pass(held_id)
    publish(redis_client, held_id, held_ids, "running", 1)
    applier = Applier(client=redis_client, consumer="a")
    assert applier.poll(block_ms=10) == 0 and pending(redis_client) == 2
    stopper = threading.Thread(target=applier.on_stop, daemon=True)
    stopper.start()
    time.sleep(0.2)
    running.end()  # the pass ends while the stopping applier waits for it
    stopper.join(15)
    assert not stopper.is_alive() and states(held_id) == ["running"] * 2 and pending(redis_client) == 0


def test_held_back_events_of_an_applier_that_died_are_reclaimed(org, redis_client):
    held_id, held_ids = make_pool(org.org_id, "held", 2)
    running = Pass(held_id)
    publish(redis_client, held_id, held_ids, "running", 1)
    dead = Applier(client=redis_client, consumer="dead")
    assert dead.poll(block_ms=10) == 0 and pending(redis_client) == 2  # held back, then killed: no on_stop
    running.end()
    heir = Applier(client=redis_client, consumer="heir")
    heir.claim_idle_ms = 0  # as if `events_claim_idle_ms` had passed
    assert heir.reclaim() == 2
    assert states(held_id) == ["running"] * 2 and pending(redis_client) == 0
