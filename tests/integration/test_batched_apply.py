"""Batched event apply (issue 11: applier throughput): a batch written in a few statements leaves exactly
what applying its events one at a time would, in any split into batches; duplicates change nothing; a
poison event in the middle of a batch is dead-lettered while the rest apply. On both backends, checked
in the database."""
from __future__ import annotations

import random
import time

import pytest
import redis
import sqlalchemy as sa

from app import events as ev
from app.db import get_engine, session_scope
from app.domain import instances, pools, reservations
from app.domain.states import InstanceState as S, PoolKind
from app.models import Instance, Lease, Pool, utcnow
from config.settings import get_settings
from workers.events import Applier

STATES = [str(s) for s in S]
COLUMNS = ("state", "event_seq", "address", "provider_ref", "failure_count", "last_error", "boot_ms", "draining",
           "ready_at", "lease_id")
POOL_COLUMNS = ("phase", "ready_instances", "running_instances", "stopped_instances", "consecutive_failures",
                "failure_message", "needs_reconcile")


def make_pool(org_id: str, name: str, size: int, *, flagged: bool = False) -> tuple[str, list[str]]:
    """A named pool of `size` instances just requested (not provisioned yet), flagged for a pass or not."""
    with session_scope() as s:
        pool = pools.new_pool(org_id, kind=PoolKind.NAMED, name=name, min_size=size, max_size=size)
        pool.needs_reconcile = flagged
        s.add(pool)
        s.flush()
        ids = []
        for _ in range(size):
            inst = Instance(pool_id=pool.id, organization_id=org_id, provider="fake", requested_at=utcnow())
            s.add(inst)
            ids.append(inst.id)
        return pool.id, ids


def random_events(rng: random.Random, n_instances: int, n_events: int) -> list[tuple[int, dict]]:
    """(instance index, event fields): states in any order, sequence numbers that repeat and go backwards,
    references, addresses and failure messages, and pool-level kinds among them."""
    out = []
    for _ in range(n_events):
        i = rng.randrange(n_instances)
        roll = rng.random()
        if roll < 0.08:
            out.append((i, {"kind": ev.KIND_FAILURE, "message": f"quota {rng.randrange(5)}"}))
        elif roll < 0.14:
            out.append((i, {"kind": ev.KIND_SUCCESS}))
        elif roll < 0.18:
            out.append((i, {"kind": rng.choice([ev.KIND_LEASED, ev.KIND_RETURNED])}))
        else:
            out.append((i, {"state": rng.choice(STATES), "seq": rng.randrange(1, 12),
                            "ref": rng.choice(["", "", f"ref-{rng.randrange(3)}"]),
                            "address": rng.choice(["", f"10.0.0.{rng.randrange(9)}"]),
                            "boot_ms": rng.choice([None, rng.randrange(1, 500)]),
                            "message": rng.choice(["", "crashed"])}))
    return out


def events_for(pool_id: str, ids: list[str], script: list[tuple[int, dict]]) -> list[ev.InstanceEvent]:
    return [ev.InstanceEvent(instance_id=ids[i], pool_id=pool_id, **fields) for i, fields in script]


def snapshot(pool_id: str, ids: list[str]) -> tuple[list[tuple], tuple]:
    with session_scope() as s:
        rows = {r.id: r for r in s.execute(sa.select(Instance).where(Instance.pool_id == pool_id)).scalars()}
        pool = s.get(Pool, pool_id)
        return ([tuple(getattr(rows[i], c) for c in COLUMNS) for i in ids],
                tuple(getattr(pool, c) for c in POOL_COLUMNS))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_split_into_batches_applies_like_one_event_at_a_time(any_org, seed):
    rng = random.Random(seed)
    n = 10
    script = random_events(rng, n, 160)
    now = utcnow()
    whole, split, single = (make_pool(any_org.org_id, f"{name}-{seed}", n) for name in ("whole", "split", "single"))

    with session_scope() as s:  # the whole script as one batch
        instances.apply_events(events_for(*whole, script), session=s, now=now)
    evs = events_for(*split, script)  # in batches of random sizes
    while evs:
        cut = rng.randrange(1, 12)
        with session_scope() as s:
            instances.apply_events(evs[:cut], session=s, now=now)
        evs = evs[cut:]
    for event in events_for(*single, script):  # one event per transaction
        with session_scope() as s:
            instances.apply_events([event], session=s, now=now)

    reference = snapshot(*single)
    assert snapshot(*whole) == reference
    assert snapshot(*split) == reference
    moved = sum(1 for row in reference[0] if row[0] != "requested")
    assert moved >= n // 2, "the script should move most instances (else it proves little)"


def test_newest_sequence_wins_within_and_across_batches_and_duplicates_change_nothing(any_org):
    pool_id, (a, b) = make_pool(any_org.org_id, "order", 2)

    def apply(*evs: ev.InstanceEvent) -> int:
        with session_scope() as s:
            return instances.apply_events(list(evs), session=s)

    def e(instance_id: str, state: str, seq: int, **kw) -> ev.InstanceEvent:
        return ev.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state=state, seq=seq, **kw)

    # Within one batch: a's stop is newer than its start; b's events arrive newest first.
    first = [e(a, "running", 2, address="10.0.0.1"), e(a, "stopping", 4), e(a, "stopped", 5), e(a, "starting", 3),
             e(b, "running", 9, address="10.0.0.2"), e(b, "provisioning", 1), e(b, "stopping", 8)]
    assert apply(*first) == 4  # a: running, stopping, stopped; b: running (the rest are stale)
    assert [r[:3] for r in snapshot(pool_id, [a, b])[0]] == [("stopped", 5, ""), ("running", 9, "10.0.0.2")]
    # The same events again, in any order: nothing changes, in the rows or the pool's status.
    before = snapshot(pool_id, [a, b])
    assert apply(*first, *reversed(first)) == 0
    assert snapshot(pool_id, [a, b]) == before
    # Across batches: an older turn changes nothing, a newer one applies, and then an older event that only
    # moves the instance forward within that leg (its start's "running", published late) applies too.
    assert apply(e(a, "starting", 3)) == 0
    assert apply(e(a, "starting", 6)) == 1
    assert apply(e(a, "running", 2, address="10.0.0.3")) == 1
    with session_scope() as s:
        row = s.get(Instance, a)
        assert (row.state, row.event_seq, row.address) == ("running", 6, "10.0.0.3")


def test_a_batch_is_a_few_statements_not_one_per_event_on_postgresql(org):
    """(SQLite writes one in-process UPDATE per row under its database lock: no round trips to save.)"""
    pool_ids, batch = [], []
    for p in range(4):
        pool_id, ids = make_pool(org.org_id, f"few-{p}", 50)
        pool_ids.append(pool_id)
        batch += [ev.InstanceEvent(instance_id=i, pool_id=pool_id, state="provisioning", seq=1) for i in ids]
        batch += [ev.InstanceEvent(instance_id=i, pool_id=pool_id, state="running", seq=2, address="10.1.1.1")
                  for i in ids]
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    sa.event.listen(get_engine(), "before_cursor_execute", count)
    try:
        with session_scope() as s:
            assert instances.apply_events(batch, session=s) == 400
    finally:
        sa.event.remove(get_engine(), "before_cursor_execute", count)
    updates = [st for st in statements if st.startswith("UPDATE instances")]
    assert len(updates) == 2, updates  # two rounds (provisioning, then running), one UPDATE each
    assert len(statements) <= 12, statements  # lock pools, read instances, 2 updates, recount, pools, commit
    with session_scope() as s:
        phases = s.execute(sa.select(Pool.phase, Pool.ready_instances).where(Pool.id.in_(pool_ids))).all()
    assert sorted(phases) == [("ready", 50)] * 4


def test_a_batch_of_leases_and_returns_asks_its_pool_for_one_pass(any_org, effects_log):
    pool_id, ids = make_pool(any_org.org_id, "leased", 30)
    other_id, others = make_pool(any_org.org_id, "other", 2)
    batch = [ev.InstanceEvent(instance_id=i, pool_id=pool_id, kind=ev.KIND_LEASED) for i in ids]
    batch += [ev.InstanceEvent(instance_id=i, pool_id=pool_id, kind=ev.KIND_RETURNED) for i in ids[:5]]
    batch += [ev.InstanceEvent(instance_id=others[0], pool_id=other_id, kind=ev.KIND_LEASED)]
    effects_log.clear()
    with session_scope() as s:
        assert instances.apply_events(batch, session=s) == 36
    asked = sorted(p["pool_id"] for name, p in effects_log if name == "reconcile_pool")
    assert asked == sorted([pool_id, other_id])  # one ask per pool, not one per lease
    with session_scope() as s:
        assert all(s.get(Pool, p).needs_reconcile for p in (pool_id, other_id))


def test_a_lease_leaves_the_recount_and_its_announcement_to_the_pass_it_asks_for(any_org, effects_log):
    from app.domain import reconciler
    from app.domain.events import pool_channel

    pool_id, ids = make_pool(any_org.org_id, "recount", 3)
    with session_scope() as s:
        s.execute(sa.update(Instance).where(Instance.id.in_(ids)).values(state="running", event_seq=1, ready_at=utcnow()))
    with session_scope() as s:
        instances.recount(s.get(Pool, pool_id), session=s)
    with session_scope() as s:
        s.execute(sa.update(Instance).where(Instance.id == ids[0]).values(lease_id="lease-1"))
        before = s.get(Pool, pool_id)
        version, counted = before.status_version, (before.ready_instances, before.leased_instances)
    assert counted == (3, 0)
    effects_log.clear()
    with session_scope() as s:
        assert instances.apply_events([ev.InstanceEvent(instance_id=ids[0], pool_id=pool_id, kind=ev.KIND_LEASED)],
                                      session=s) == 1
    with session_scope() as s:
        after = s.get(Pool, pool_id)
        assert (after.status_version, after.ready_instances, after.leased_instances) == (version, 3, 0)
    assert [n for n, _ in effects_log] == ["reconcile_pool"]  # no recount, no announcement: the pass makes them

    channel = pool_channel(any_org.org_id, pool_id)
    effects_log.clear()
    with session_scope() as s:
        reconciler.reconcile(pool_id, session=s)
    with session_scope() as s:
        after = s.get(Pool, pool_id)
        assert after.status_version > version and (after.ready_instances, after.leased_instances) == (2, 1)
    assert [p for n, p in effects_log if n == "notify"] == [{"channel": channel, "message": after.phase}]
    effects_log.clear()
    with session_scope() as s:
        reconciler.reconcile(pool_id, session=s)
    assert not [p for n, p in effects_log if n == "notify"]  # nothing changed: nothing to announce


def test_a_lost_instance_ends_its_lease_and_a_ready_one_serves_the_oldest_reservation_in_one_batch(any_org):
    from app.domain import leases

    pool_id, (held, fresh) = make_pool(any_org.org_id, "effects", 2)
    with session_scope() as s:
        s.execute(sa.update(Instance).where(Instance.id == held).values(state="running", event_seq=1))
        pool = s.get(Pool, pool_id)
        pool.empty_policy = "reserve"
    with session_scope() as s:
        lease = leases.lease(any_org.org_id, pool.name, service_tag="svc", session=s)
    assert lease.instance_id == held
    with session_scope() as s:
        queued = leases.lease(any_org.org_id, pool.name, service_tag="late", reservation_id="late-1", session=s)
    assert not isinstance(queued, leases.LeaseView)
    with session_scope() as s:
        instances.apply_events([
            ev.InstanceEvent(instance_id=held, pool_id=pool_id, state="failed", seq=2, message="oom"),
            ev.InstanceEvent(instance_id=fresh, pool_id=pool_id, state="running", seq=1, address="10.0.0.7"),
        ], session=s)
    with session_scope() as s:
        ended = s.execute(sa.select(Lease.state, Lease.end_reason).where(Lease.instance_id == held)).one()
        assert tuple(ended) != ("active", "")
        assert s.get(Instance, held).lease_id is None
        res = reservations.list_waiting(pool_id, session=s)
        assert res == []  # the reservation was served by the instance that became ready
        assert s.get(Instance, fresh).lease_id is not None


@pytest.fixture
def stream(any_org, redis_url, monkeypatch):
    monkeypatch.setenv("WARMPOOL_REDIS_URL", redis_url)
    monkeypatch.setenv("WARMPOOL_ENGINE__EVENTS_MAX_DELIVERIES", "2")
    get_settings.cache_clear()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
    get_settings.cache_clear()


def test_a_poison_event_in_the_middle_of_a_batch_is_dead_lettered_and_the_rest_apply(any_org, stream, monkeypatch):
    from app.domain import observations

    pool_id, ids = make_pool(any_org.org_id, "poison", 6)
    real = observations.decide

    def picky(row, event, now):  # type: ignore[no-untyped-def]
        if event.message == "poison":
            raise RuntimeError("this event breaks the domain")
        return real(row, event, now)

    monkeypatch.setattr(observations, "decide", picky)
    applier = Applier(client=stream, consumer="a")
    for n, instance_id in enumerate(ids):
        ev.publish(ev.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state="running", seq=1,
                                    message="poison" if n == 3 else ""), client=stream)
    s = get_settings().engine
    deadline = time.monotonic() + 10
    while stream.xpending(s.events_stream, s.events_group)["pending"] or not stream.xlen(f"{s.events_stream}:dead"):
        applier.run_once(block_ms=10)
        assert time.monotonic() < deadline, "the poison event was never dead-lettered"
    (_, fields), = stream.xrange(f"{s.events_stream}:dead")
    assert fields[b"reason"].startswith(b"failed 2 times: RuntimeError")
    assert ev.InstanceEvent.from_fields(fields).instance_id == ids[3]
    with session_scope() as ses:
        states = dict(ses.execute(sa.select(Instance.id, Instance.state).where(Instance.pool_id == pool_id)).all())
    assert [states[i] for i in ids] == ["running"] * 3 + ["requested"] + ["running"] * 2


def test_a_race_lost_mid_batch_falls_back_to_one_event_at_a_time_and_the_winner_stands(org, redis_client,
                                                                                        monkeypatch):
    """PostgreSQL only: under SQLite's BEGIN IMMEDIATE no other writer can come between the read and the write."""
    from app.domain import transitions

    pool_id, (x, y) = make_pool(org.org_id, "race", 2)
    real = transitions.Machine.move_many
    raced = []

    def another_writer_first(self, session, moves, **kw):  # type: ignore[no-untyped-def]
        if not raced:  # between the batch's read and its first write, another applier moved x on and committed
            raced.append(1)
            with get_engine().begin() as other:
                other.execute(sa.update(Instance).where(Instance.id == x).values(state="provisioning", event_seq=50))
        return real(self, session, moves, **kw)

    monkeypatch.setattr(transitions.Machine, "move_many", another_writer_first)
    for instance_id, state, seq in ((x, "provisioning", 1), (y, "running", 1), (x, "running", 2)):
        ev.publish(ev.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state=state, seq=seq), client=redis_client)
    applier = Applier(client=redis_client, consumer="a")
    assert applier.poll(block_ms=10) == 3  # the batch failed, then each event applied (or was found stale) alone
    with session_scope() as s:
        rows = {i.id: (i.state, i.event_seq) for i in s.execute(sa.select(Instance)).scalars()}
    # x's late "running" still moves it forward within the leg; the winner's newer sequence stands.
    assert raced and rows == {x: ("running", 50), y: ("running", 1)}
    s = get_settings().engine
    assert redis_client.xpending(s.events_stream, s.events_group)["pending"] == 0
    assert not redis_client.xlen(f"{s.events_stream}:dead")
