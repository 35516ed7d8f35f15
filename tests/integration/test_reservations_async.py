"""The async Lease paths beyond a named pool's ready instance (app.domain.reservations_async) answer as the
sync rules do (app.domain.leases, app.domain.reservations), checked side by side on the same PostgreSQL
rows: the pool a pool-less Lease picks, the empty-pool refusal and automatic reservation, and what a
waiting call learns of its reservation."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app import adb
from app.db import session_scope
from app.domain import leases, reservations, reservations_async as ra
from app.domain.errors import DomainError, Unavailable
from app.domain.leases_async import Unit
from app.models import Instance, Pool, Reservation, utcnow
from tests.leasing import add_ready, make_pool, reservation

pytestmark = [pytest.mark.postgres]


def run_async(fn: Any, *, keep: bool = False) -> Any:
    """`await fn(conn)` in one transaction of the async driver, rolled back unless `keep`."""
    async def main() -> Any:
        try:
            if keep:
                return await adb.transaction(fn)
            p = await adb.pool()
            conn = await p.take()
            try:
                async with conn.rolled_back():
                    return await fn(conn)
            finally:
                p.give(conn, clean=True)
        finally:
            await adb.close()

    return asyncio.run(main())


def answer(call: Any) -> Any:
    """What a call answered: its value, or its error's class, message and retry hint."""
    try:
        return call()
    except DomainError as exc:
        return type(exc).__name__, str(exc), getattr(exc, "retry_after", None)


def sync(fn: Any, *args: Any, **kw: Any) -> Any:
    with session_scope() as s:
        return fn(*args, session=s, **kw)


# ---- a pool-less Lease picks the pool choose_pool picks -------------------------------------------

def chosen_async(org_id: str) -> Any:
    async def fn(conn: Any) -> Any:
        got, pool_id = await ra.lease_any(org_id, conn=conn, unit=Unit(), service_tag="t", wished_expiry=None,
                                          now=utcnow())
        return pool_id, got is not None
    return answer(lambda: run_async(fn))


def chosen_sync(org_id: str) -> Any:
    def fn() -> Any:
        with session_scope() as s:
            row = leases.choose_pool(org_id, session=s)
            return row.id, s.execute(sa.select(sa.func.count()).select_from(Instance).where(
                Instance.pool_id == row.id, leases.READY)).scalar_one() > 0
    return answer(fn)


def test_a_pool_less_lease_picks_the_pool_the_sync_rules_pick(org) -> None:
    assert chosen_async(org.org_id) == chosen_sync(org.org_id)  # no pool: NotFound, same words
    assert chosen_async(org.org_id)[0] == "NotFound"
    a = make_pool(org.org_id, "b-older")
    b = make_pool(org.org_id, "a-newer")
    assert chosen_async(org.org_id) == chosen_sync(org.org_id) == (a.id, False)  # all empty: the oldest
    add_ready(b, 1)
    assert chosen_async(org.org_id) == chosen_sync(org.org_id) == (b.id, True)
    add_ready(a, 1)
    assert chosen_async(org.org_id) == chosen_sync(org.org_id) == (a.id, True)  # a tie: the oldest
    add_ready(b, 2, stale=True)  # stale instances are ready too (served after fresh ones)
    assert chosen_async(org.org_id) == chosen_sync(org.org_id) == (b.id, True)
    with session_scope() as s:  # a pool being deleted is never chosen
        s.execute(sa.update(Pool).where(Pool.id == b.id).values(deleted_at=utcnow()))
    assert chosen_async(org.org_id) == chosen_sync(org.org_id) == (a.id, True)


def test_a_pool_less_lease_leases_from_the_chosen_pool(org) -> None:
    make_pool(org.org_id, "empty")
    full = make_pool(org.org_id, "full")
    [older, _] = add_ready(full, 2)

    async def fn(conn: Any) -> Any:
        unit = Unit()
        got, pool_id = await ra.lease_any(org.org_id, conn=conn, unit=unit, service_tag="svc", wished_expiry=None,
                                          now=utcnow())
        return got, pool_id, unit.info

    got, pool_id, info = run_async(fn, keep=True)
    assert pool_id == full.id and got.pool_name == "full" and got.instance_id == older  # longest ready first
    assert info, "the leased event and the backfill go out after commit"
    with session_scope() as s:
        inst = s.get(Instance, older)
        assert inst.lease_id == got.lease_id
        assert leases.get_lease(org.org_id, older, session=s).service_tag == "svc"


# ---- an empty pool: the policy, in the claim's transaction -----------------------------------------

def test_an_empty_reject_pool_refuses_with_the_sync_words_and_hint(org) -> None:
    now = utcnow()
    pool = make_pool(org.org_id, "r", empty_policy="reject")
    with session_scope() as s:
        s.execute(sa.update(Pool).where(Pool.id == pool.id).values(refill_seconds=7.2,
                                                                   next_attempt_at=now + timedelta(seconds=20)))

    async def fn(conn: Any) -> Any:
        return await ra.empty_pool(org.org_id, conn=conn, pool_name="r", service_tag="", wished_expiry=None,
                                   now=now, wait_until=None)

    refused = answer(lambda: run_async(fn))
    assert refused == answer(lambda: sync(leases.lease, org.org_id, "r", now=now))
    assert refused[0] == "ResourceExhausted" and refused[2] == 28  # one refill plus the back-off left


def test_an_empty_cold_pool_is_left_to_the_sync_path(org) -> None:
    make_pool(org.org_id, "c", empty_policy="cold")

    async def fn(conn: Any) -> Any:
        return await ra.empty_pool(org.org_id, conn=conn, pool_name="c", service_tag="", wished_expiry=None,
                                   now=utcnow(), wait_until=None)

    assert run_async(fn) is None


def test_an_empty_reserve_pool_queues_an_automatic_reservation_as_the_sync_path(org) -> None:
    now = utcnow()
    pool = make_pool(org.org_id, "q", empty_policy="reserve", reservation_ttl_seconds=60)
    named = sync(leases.lease, org.org_id, "q", reservation_id="named-first",
                 now=now - timedelta(seconds=1))  # ahead in the queue
    wished = now + timedelta(minutes=3)
    for wait_until in (now + timedelta(seconds=5), None):  # the caller's deadline first, then the TTL
        via_sync = sync(leases.lease, org.org_id, "q", service_tag="s", wished_expiry=wished, now=now,
                        wait_until=wait_until)

        async def fn(conn: Any, wait_until: Any = wait_until) -> Any:
            return await ra.empty_pool(org.org_id, conn=conn, pool_name="q", service_tag="s", wished_expiry=wished,
                                       now=now, wait_until=wait_until)

        via_async = run_async(fn, keep=True)
        assert isinstance(via_async, leases.Queued) and via_async.automatic
        assert via_async.client_id.startswith(reservations.AUTOMATIC_PREFIX)
        for field in ("pool_name", "expires_at", "automatic"):
            assert getattr(via_async, field) == getattr(via_sync, field), field
        rows = [reservation(org.org_id, q.client_id) for q in (via_sync, via_async)]
        columns = ("pool_id", "service_tag", "state", "requested_expires_at", "created_at", "expires_at",
                   "lease_id", "instance_id")
        assert [getattr(rows[0], c) for c in columns] == [getattr(rows[1], c) for c in columns]
        assert rows[1].id == via_async.reservation_id
    # FIFO: the named reservation queued first is served first, then the automatic ones in order.
    with session_scope() as s:
        queue = [r.client_id for r in reservations.list_waiting(pool.id, session=s)]
    assert queue[0] == named.client_id and len(queue) == 5


# ---- what a waiting call learns ---------------------------------------------------------------------

def outcomes(org_id: str, reservation_id: str, now: Any) -> tuple[Any, Any]:
    via_sync = answer(lambda: sync(reservations.outcome, org_id, reservation_id, now=now))
    via_async = answer(lambda: run_async(lambda conn: ra.outcome(org_id, reservation_id, conn=conn, now=now)))
    return via_sync, via_async


def test_a_waiting_call_learns_what_the_sync_outcome_says(org) -> None:
    from tests.conftest import make_org

    pool = make_pool(org.org_id)
    other = make_org("another")
    now = utcnow()
    queued = {rid: sync(leases.lease, org.org_id, "pool-a", reservation_id=rid) for rid in ("a", "b", "c", "d")}
    ids = {rid: q.reservation_id for rid, q in queued.items()}
    seen = set()

    def check(label: str, rid: str, at: Any) -> None:
        via_sync, via_async = outcomes(org.org_id, rid, at)
        assert via_async == via_sync, label
        seen.add(via_sync[0] if isinstance(via_sync, tuple) else type(via_sync).__name__)
        assert outcomes(other.org_id, rid, at)[1][0] == "NotFound", label  # another organization's

    check("waiting", ids["a"], now)
    check("lapsed before the sweep", ids["a"], now + timedelta(hours=2))
    check("unknown", "nope", now)
    [iid] = add_ready(pool, 1)
    sync(reservations.assign_ready_instance, iid)  # served: "a", the oldest
    check("served", ids["a"], now)
    check("served lease lapsed", ids["a"], now + timedelta(days=2))
    [iid2] = add_ready(pool, 1)
    sync(reservations.assign_ready_instance, iid2)  # served: "b"
    sync(leases.return_lease, org.org_id, iid2)
    check("served lease returned", ids["b"], now)
    sync(reservations.cancel_waiting, org.org_id, ids["c"])
    check("cancelled", ids["c"], now)
    sync(reservations.expire_due, now + timedelta(hours=2), 10)
    check("expired", ids["d"], now)
    assert seen == {"NoneType", "LeaseView", "NotFound", "FailedPrecondition", "Unavailable"}
    with session_scope() as s:
        assert s.get(Reservation, ids["a"]).state == "fulfilled"


# ---- a Lease that names its reservation ------------------------------------------------------------

def _shape(got: Any) -> Any:
    """An answer without its generated ids: what must match between the two paths."""
    if isinstance(got, leases.LeaseView):
        return ("lease", got.pool_name, got.zone, got.service_tag, got.expires_at, got.how)
    if isinstance(got, leases.Queued):
        return ("queued", got.client_id, got.pool_name, got.expires_at, got.automatic)
    return got


def _row(org_id: str, client_id: str) -> Any:
    with session_scope() as s:
        r = s.query(Reservation).filter_by(organization_id=org_id, client_id=client_id).one_or_none()
        if r is None:
            return None
        pool = s.get(Pool, r.pool_id)
        lease_tag = None if r.lease_id is None else leases.get_lease(org_id, r.instance_id, session=s).service_tag
        return (r.state, pool.name, r.service_tag, r.requested_expires_at, r.created_at, r.expires_at,
                r.lease_id is not None, lease_tag)


def test_a_lease_naming_its_reservation_answers_as_the_sync_path(org) -> None:
    from tests.conftest import make_org

    worlds = {"sync": org, "async": make_org("twin")}
    pools_of = {k: {n: make_pool(w.org_id, n, reservation_ttl_seconds=90) for n in ("a", "b")}
                for k, w in worlds.items()}
    t0 = utcnow()

    def both(label: str, pool_name: str, rid: str, *, at: Any, tag: str = "svc", wished: Any = None,
             ready: str = "") -> None:
        answers, rows, woken = {}, {}, {}
        for kind, world in worlds.items():
            if ready:
                add_ready(pools_of[kind][ready], 1)
            if kind == "sync":
                seen: list = []
                with session_scope(after_commit=seen.extend) as s:
                    answers[kind] = answer(lambda: leases.lease(world.org_id, pool_name, session=s, service_tag=tag,
                                                                wished_expiry=wished, reservation_id=rid, now=at))
            else:
                unit = Unit()
                answers[kind] = answer(lambda: run_async(lambda conn: ra.lease_reserved(
                    world.org_id, pool_name, rid, conn=conn, unit=unit, service_tag=tag, wished_expiry=wished,
                    now=at), keep=True))
                seen = list(unit.info.get("effects", []))
            rows[kind] = _row(world.org_id, rid)
            woken[kind] = sorted(name for name, _ in seen if name == "notify")
        assert _shape(answers["async"]) == _shape(answers["sync"]), label
        assert rows["async"] == rows["sync"], label
        assert woken["async"] == woken["sync"], label

    both("new id, a ready instance: leased at once", "a", "r1", at=t0, ready="a")
    both("the same id again: the same lease", "a", "r1", at=t0 + timedelta(seconds=1))
    both("the same id, without the pool name", "", "r1", at=t0 + timedelta(seconds=2))
    both("new id, empty pool: queued", "a", "r2", at=t0 + timedelta(seconds=3), wished=t0 + timedelta(hours=1))
    both("again: expiry deferred, place kept", "a", "r2", at=t0 + timedelta(seconds=30), tag="svc2")
    both("lapsed before the sweep: to the back", "a", "r2", at=t0 + timedelta(seconds=200))
    both("waiting, and an instance is ready: served, waiters woken", "a", "r2", at=t0 + timedelta(seconds=201),
         ready="a")
    both("another pool's reservation", "b", "r2", at=t0 + timedelta(seconds=202))
    both("an unknown pool", "nope", "r3", at=t0 + timedelta(seconds=203))
    both("new id in the other pool", "b", "r3", at=t0 + timedelta(seconds=204))


def test_the_rarer_reservation_cases_are_left_to_the_sync_path(org) -> None:
    pool = make_pool(org.org_id)
    now = utcnow()

    def via_async(pool_name: str, rid: str) -> Any:
        return run_async(lambda conn: ra.lease_reserved(org.org_id, pool_name, rid, conn=conn, unit=Unit(),
                                                        service_tag="", wished_expiry=None, now=now))

    assert via_async("", "new") is None  # a pool-less call naming a new reservation chooses a pool: sync
    queued = sync(leases.lease, org.org_id, "pool-a", reservation_id="gone")
    sync(reservations.cancel_waiting, org.org_id, queued.reservation_id)
    assert via_async("pool-a", "gone") is None  # cancelled: the sync path queues it again
    [iid] = add_ready(pool, 1)
    sync(reservations.assign_ready_instance, iid)
    assert reservation(org.org_id, "gone").state == "cancelled"  # a cancelled one is never served


def test_racing_calls_naming_one_new_reservation_get_one_lease(org) -> None:
    """Through the service on the async path: calls racing with one new reservation id all get the same
    instance, and the database holds one lease and one fulfilled reservation."""
    from concurrent.futures import ThreadPoolExecutor

    from app.api.vmpool import LeaseService
    from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
    from tests.conftest import token_for
    from tests.integration.test_lease_leaks import SilentWaiter
    from tests.integration.test_lease_invariant import assert_invariant

    pool = make_pool(org.org_id)
    add_ready(pool, 5)
    token = token_for(org, "lease")
    svc = LeaseService(executor=ThreadPoolExecutor(max_workers=2), waiter=SilentWaiter())
    assert svc.fast

    async def crowd() -> list[Any]:
        try:
            return await asyncio.gather(*[svc.lease(f"Bearer {token}", pb.LeaseRequest(
                pool="pool-a", reservation_id="once", service_tag=f"c{i}"), 10.0) for i in range(12)],
                return_exceptions=True)
        finally:
            await adb.close()

    try:
        got = asyncio.run(crowd())
    finally:
        svc.executor.shutdown(wait=True)
    # A call still queued on the reservation's row lock at its answer time says UNAVAILABLE (retry); every
    # call that answered got the same instance.
    assert all(isinstance(g, Unavailable) for g in got if isinstance(g, BaseException)), got
    answered = [g for g in got if not isinstance(g, BaseException)]
    assert answered and len({g.lease.instance for g in answered}) == 1
    with session_scope() as s:
        [res] = s.query(Reservation).filter_by(organization_id=org.org_id, client_id="once").all()
        assert res.state == "fulfilled"
        n = s.execute(sa.select(sa.func.count()).select_from(leases.Lease).where(leases.Lease.pool_id == pool.id))
        assert n.scalar_one() == 1
    assert_invariant(pool.id)
