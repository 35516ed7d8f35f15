"""Scheduled sizing with a controlled clock on both backends: beat applies a firing once, a PATCH holds
until the next one, the autoscaler works inside the window, refused firings are recorded, and a pool
crossing both Europe/Berlin DST transitions gets each firing once."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.db import session_scope
from app.domain import pool_admin, quotas, reconciler, schedules
from app.domain.cron import Entry
from app.models import Lease, Pool, PoolSchedule
from tests.conftest import World, make_catalog

BERLIN = "Europe/Berlin"
WORKDAY = [Entry("0 8 * * 1-5", BERLIN, min_size=4, max_size=8), Entry("0 19 * * *", BERLIN, min_size=1, max_size=3)]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def world(any_org: World) -> World:
    w = make_catalog(any_org)
    with session_scope() as s:
        w.pool_id = pool_admin.create_named_pool(w.org_id, name="ci", runner_id=w.runner_id, min_size=1, max_size=3,
                                                 session=s).id
    return w


def put(world: World, entries: list[Entry], now: datetime) -> None:
    with session_scope() as s:
        schedules.put_schedule(world.org_id, world.pool_id, entries, session=s, now=now)


def beat(now: datetime) -> list[str]:
    """One scheduled-sizing pass at `now` (the task's body with the clock in our hand); the applied ids."""
    with session_scope() as s:
        due = schedules.due_schedules(now, 100, session=s)
    applied = []
    for pool_id in due:
        with session_scope() as s:
            if schedules.apply_due(pool_id, session=s, now=now):
                applied.append(pool_id)
    return applied


def pool(world: World) -> Pool:
    with session_scope() as s:
        return s.get(Pool, world.pool_id)


def sizes(world: World) -> tuple[int, int]:
    p = pool(world)
    return p.min_size, p.max_size


def test_beat_applies_each_firing_once_and_only_when_due(world):
    monday_0700 = utc(2026, 3, 2, 6, 0)
    put(world, WORKDAY, monday_0700)  # Sunday 19:00 holds: already the pool's sizes, nothing changes
    version = pool(world).spec_version
    assert sizes(world) == (1, 3) and version == 1
    with session_scope() as s:
        assert s.get(PoolSchedule, world.pool_id).next_fire_at == utc(2026, 3, 2, 7, 0)
    assert beat(utc(2026, 3, 2, 6, 59, 59)) == []
    assert beat(utc(2026, 3, 2, 7, 0, 5)) == [world.pool_id]
    assert sizes(world) == (4, 8) and pool(world).spec_version == version + 1
    assert beat(utc(2026, 3, 2, 7, 0, 20)) == []  # run twice: nothing due, nothing applied again
    with session_scope() as s:  # a duplicate pass that still found it due applies nothing either
        assert schedules.apply_due(world.pool_id, session=s, now=utc(2026, 3, 2, 7, 0, 30)) is False
    assert pool(world).spec_version == version + 1
    assert beat(utc(2026, 3, 2, 18, 0, 1)) == [world.pool_id] and sizes(world) == (1, 3)


def test_a_patch_holds_until_the_next_firing(world):
    put(world, WORKDAY, utc(2026, 3, 2, 7, 30))  # 08:30 Monday: the weekday entry holds at once
    assert sizes(world) == (4, 8)
    with session_scope() as s:
        pool_admin.update_pool(world.org_id, world.pool_id, {"min_size": 6}, session=s)
    assert beat(utc(2026, 3, 2, 12, 0)) == [] and sizes(world) == (6, 8)
    assert beat(utc(2026, 3, 2, 18, 0)) == [world.pool_id] and sizes(world) == (1, 3)


def test_the_autoscaler_works_inside_the_window(world):
    put(world, WORKDAY, utc(2026, 3, 2, 7, 30))
    now = utc(2026, 3, 2, 7, 31)
    with session_scope() as s:  # a busy pool: 600 claims in 5 minutes, 10 s to refill
        p = s.get(Pool, world.pool_id)
        p.refill_seconds = 10.0
        s.add_all([Lease(organization_id=world.org_id, pool_id=p.id, instance_id=f"i{n}", state="returned",
                         created_at=now - timedelta(seconds=n % 290)) for n in range(600)])
    with session_scope() as s:
        reconciler.reconcile(world.pool_id, session=s, now=now)
    assert pool(world).desired_size == 8  # wants 4 + 30: capped at the window's max
    with session_scope() as s:
        s.query(Lease).delete()
    evening = utc(2026, 3, 2, 18, 0, 2)
    assert beat(evening) == [world.pool_id]
    assert pool(world).desired_size == 3  # the new max clamps the target at once
    for minutes in (1, 2, 3, 4):
        with session_scope() as s:
            reconciler.reconcile(world.pool_id, session=s, now=evening + timedelta(minutes=minutes))
    assert pool(world).desired_size == 1  # idle: one step down per cooldown, to the window's min, not below


def test_desired_size_sets_the_running_target_at_the_firing(world):
    put(world, [Entry("0 8 * * *", "UTC", max_size=10, desired_size=7)], utc(2026, 3, 2, 8, 0))
    p = pool(world)
    assert (p.min_size, p.max_size, p.desired_size) == (1, 10, 7)
    with session_scope() as s:  # the cooldown counts from the firing: the target holds for a while
        reconciler.reconcile(world.pool_id, session=s, now=utc(2026, 3, 2, 8, 0, 30))
    assert pool(world).desired_size == 7


def test_a_refused_firing_is_recorded_and_the_pool_keeps_its_sizes(world):
    put(world, WORKDAY, utc(2026, 3, 2, 6, 0))
    with session_scope() as s:
        quotas.set_quota(world.org_id, session=s, max_pool_size=5)  # the 08:00 entry's max 8 is now too big
    assert beat(utc(2026, 3, 2, 7, 0, 1)) == [world.pool_id]  # its firing is consumed, not retried every pass
    with session_scope() as s:
        row = s.get(PoolSchedule, world.pool_id)
        assert "max_pool_size" in row.last_error and "entries[0]" in row.last_error
        assert row.next_fire_at == utc(2026, 3, 2, 18, 0)
    assert sizes(world) == (1, 3)
    assert beat(utc(2026, 3, 2, 18, 0, 1)) == [world.pool_id]
    with session_scope() as s:
        assert s.get(PoolSchedule, world.pool_id).last_error == ""


def test_a_deleted_pools_schedule_goes_with_it(world):
    put(world, WORKDAY, utc(2026, 3, 2, 6, 0))
    from app.domain import pools

    with session_scope() as s:
        pools.delete_pool(world.org_id, world.pool_id, session=s)
    assert beat(utc(2026, 3, 2, 7, 0, 1)) == []
    with session_scope() as s:
        assert s.get(PoolSchedule, world.pool_id) is None


def test_a_pool_across_both_berlin_dst_transitions(world):
    """02:30 every night, 02:45 every night: spring forward skips both wall times (each fires once, at the
    jump); fall back passes both twice (each fires once, the first time)."""
    entries = [Entry("30 2 * * *", BERLIN, min_size=2, max_size=5), Entry("45 2 * * *", BERLIN, min_size=3, max_size=6),
               Entry("0 12 * * *", BERLIN, min_size=1, max_size=3)]
    put(world, entries, utc(2026, 3, 28, 12, 0))
    seen: list[tuple[datetime, tuple[int, int]]] = []
    for start, end in ((utc(2026, 3, 28, 12), utc(2026, 3, 29, 12)), (utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))):
        now = start
        while now <= end:  # beat every minute of both nights
            if beat(now):
                seen.append((now, sizes(world)))
            now += timedelta(minutes=1)
    assert seen == [
        (utc(2026, 3, 29, 1, 0), (3, 6)),    # 02:30 and 02:45 both skipped: both fire at 03:00 CEST, the later entry wins
        (utc(2026, 3, 29, 10, 0), (1, 3)),   # noon CEST
        (utc(2026, 10, 24, 12, 0), (1, 3)),  # beat back after months: only the latest firing (noon) is applied
        (utc(2026, 10, 25, 0, 30), (2, 5)),  # 02:30 CEST, the first pass
        (utc(2026, 10, 25, 0, 45), (3, 6)),  # 02:45 CEST; the second 02:30 and 02:45 (CET) change nothing
        (utc(2026, 10, 25, 11, 0), (1, 3)),  # noon CET
    ]


def test_racing_beat_passes_apply_a_firing_once(world):
    """Two beat passes (a duplicate delivery, or two beats during a failover) racing on one due firing: the
    pool's row lock (BEGIN IMMEDIATE on SQLite) serializes them, and the second sees it already applied.
    Checked in the database: one spec version more, not two."""
    import threading

    put(world, WORKDAY, utc(2026, 3, 2, 6, 0))
    now = utc(2026, 3, 2, 7, 0, 1)
    version = pool(world).spec_version
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def one_pass() -> None:
        try:
            barrier.wait(5)
            with session_scope() as s:
                results.append(schedules.apply_due(world.pool_id, session=s, now=now))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_pass) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(results) == [False, False, False, True]
    assert sizes(world) == (4, 8) and pool(world).spec_version == version + 1
