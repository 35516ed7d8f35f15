"""Group commit for named-pool Leases (app.api.claim_batch, leases_async.lease_named_many) on PostgreSQL:
calls that queue behind a claim share the next statement, and each still gets what lease_named would
give it. Checked in the database: one lease per instance, each lease on the instance it names, the
expiry each call asked for, nothing written for a call that gave up before its turn."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app import adb
from app.api import claim_batch
from app.db import session_scope
from app.domain import epochs, leases_async
from app.domain import events as ev
from app.domain import instances as inst_domain
from app.domain.errors import Aborted, NotFound, Unavailable
from app.domain.leases_async import Want
from app.models import Instance, Lease, utcnow
from tests.conftest import make_catalog, make_org
from tests.leasing import add_ready, add_ready_bulk, make_pool

pytestmark = [pytest.mark.postgres]


def run(main: Any) -> Any:
    async def wrapped() -> Any:
        try:
            return await main()
        finally:
            await adb.close()

    return asyncio.run(wrapped())


def db_state(pool_id: str) -> tuple[list[Any], dict[str, str | None]]:
    """The pool's leases, and each of its instances' lease_id."""
    with session_scope() as s:
        rows = s.execute(sa.select(Lease.id, Lease.instance_id, Lease.state, Lease.service_tag, Lease.expires_at,
                                   Lease.created_at).where(Lease.pool_id == pool_id)).all()
        held = dict(s.execute(sa.select(Instance.id, Instance.lease_id).where(Instance.pool_id == pool_id)).all())
    return list(rows), held


def consistent(pool_id: str) -> list[Any]:
    """The invariants, read from the tables: each active lease's instance names it back, no instance twice."""
    rows, held = db_state(pool_id)
    active = [r for r in rows if r.state == "active"]
    assert len({r.instance_id for r in active}) == len(active), "an instance leased twice"
    assert all(held[r.instance_id] == r.id for r in active), "an instance does not name its lease"
    assert {i for i, lid in held.items() if lid} == {r.instance_id for r in active}
    return active


def test_one_statement_pairs_each_want_with_its_own_instance_and_expiry(org) -> None:
    pool = make_pool(org.org_id, "p", lease_default_seconds=600, lease_max_seconds=3600)
    ready = add_ready(pool, 3)
    now = utcnow()
    wants = [Want("a", None), Want("b", now + timedelta(seconds=120)), Want("c", now + timedelta(days=2)),
             Want("d", now - timedelta(seconds=5)), Want("e", None)]

    got = run(lambda: adb.one_statement(
        lambda conn: leases_async.lease_named_many(org.org_id, "p", wants, conn=conn, now=now)))

    views = got[:3]
    assert got[3:] == [None, None]  # three ready instances for five calls: the last two get none
    assert sorted(v.instance_id for v in views) == sorted(ready)
    assert [v.lease_id for v in views] == [w.lease_id for w in wants[:3]]
    assert [v.service_tag for v in views] == ["a", "b", "c"]
    active = {r.id: r for r in consistent(pool.id)}
    assert set(active) == {w.lease_id for w in wants[:3]}
    granted = {tag: active[w.lease_id].expires_at - now for tag, w in zip("abc", wants)}
    assert granted == {"a": timedelta(seconds=600), "b": timedelta(seconds=120), "c": timedelta(seconds=3600)}
    assert all(v.expires_at == active[v.lease_id].expires_at for v in views)
    # Each lease's effects went to its own call's unit: its event and its pool's reconcile.
    for want, view in zip(wants, views):
        names = [name for name, _ in want.unit.info["effects"]]
        assert names == ["publish_event", "reconcile_pool"]
        assert want.unit.info["effects"][0][1]["instance_id"] == view.instance_id
    assert "effects" not in wants[3].unit.info


def test_an_unknown_pool_refuses_every_call_of_the_batch_and_writes_nothing(org) -> None:
    pool = make_pool(org.org_id, "p")
    add_ready(pool, 2)
    wants = [Want("a", None), Want("b", None)]
    got = run(lambda: adb.one_statement(
        lambda conn: leases_async.lease_named_many(org.org_id, "nope", wants, conn=conn, now=utcnow())))
    assert [type(g) for g in got] == [NotFound, NotFound]
    assert db_state(pool.id)[0] == []


def test_another_organizations_pool_of_the_same_name_is_not_found(org) -> None:
    other_org = make_org("globex")
    theirs = make_pool(other_org.org_id, "p")
    add_ready(theirs, 2)
    got = run(lambda: adb.one_statement(lambda conn: leases_async.lease_named_many(
        org.org_id, "p", [Want("a", None), Want("b", None)], conn=conn, now=utcnow())))
    assert [type(g) for g in got] == [NotFound, NotFound]
    assert db_state(theirs.id)[0] == []


def test_concurrent_calls_share_statements_and_no_instance_is_leased_twice(org) -> None:
    pool = make_pool(org.org_id, "p", max_size=100)
    add_ready_bulk(pool.id, org.org_id, 60)

    async def main() -> tuple[list[Any], claim_batch.ClaimBatcher]:
        batcher = claim_batch.ClaimBatcher()
        # Two batchers side by side (two api processes' loops) on one pool, 80 calls for 60 instances.
        other = claim_batch.ClaimBatcher()
        calls = [(batcher if i % 2 else other).lease(org.org_id, "p", f"t{i}", None) for i in range(80)]
        return await asyncio.gather(*calls), batcher

    results, batcher = run(main)
    leased = [view for view, _ in results if view is not None]
    assert len(leased) == 60 and sum(view is None for view, _ in results) == 20
    assert batcher.batches < batcher.calls == 40, "calls queued behind a claim share the next statement"
    active = consistent(pool.id)
    assert sorted(r.id for r in active) == sorted(v.lease_id for v in leased)
    assert {r.id: r.service_tag for r in active} == {v.lease_id: v.service_tag for v in leased}
    assert all(effects for view, effects in results if view is not None)


def test_a_call_alone_is_claimed_alone_without_waiting(org) -> None:
    pool = make_pool(org.org_id, "p")
    [iid] = add_ready(pool, 1)

    async def main() -> Any:
        batcher = claim_batch.ClaimBatcher()
        view, _ = await batcher.lease(org.org_id, "p", "solo", None)
        return view, batcher

    view, batcher = run(main)
    assert view.instance_id == iid and (batcher.batches, batcher.calls) == (1, 1)
    consistent(pool.id)


def test_a_failed_statement_fails_its_batch_only(org, monkeypatch) -> None:
    pool = make_pool(org.org_id, "p")
    add_ready(pool, 4)
    real = leases_async.lease_named_many
    failures = iter([True])

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if next(failures, False):
            raise Unavailable("the database went away")
        return await real(*args, **kwargs)

    monkeypatch.setattr(leases_async, "lease_named_many", flaky)

    async def main() -> list[Any]:
        batcher = claim_batch.ClaimBatcher(lanes=1)
        first = [asyncio.ensure_future(batcher.lease(org.org_id, "p", f"a{i}", None)) for i in range(2)]
        await asyncio.sleep(0)
        blocked = asyncio.ensure_future(batcher.lease(org.org_id, "p", "head", None))  # a batch of 3: fails
        out = await asyncio.gather(*first, blocked, return_exceptions=True)
        again = await asyncio.gather(*(batcher.lease(org.org_id, "p", f"b{i}", None) for i in range(2)))
        return [*out, *again]

    out = run(main)
    assert [type(o) for o in out[:3]] == [Unavailable] * 3
    assert all(view is not None for view, _ in out[3:])
    assert len(consistent(pool.id)) == 2


def test_a_call_that_gave_up_before_its_turn_leases_nothing(org, monkeypatch) -> None:
    pool = make_pool(org.org_id, "p")
    add_ready(pool, 3)
    real = leases_async.lease_named
    entered = asyncio.Event

    async def main() -> Any:
        in_db = entered()

        async def slow(*args: Any, **kwargs: Any) -> Any:
            in_db.set()
            await asyncio.sleep(0.2)  # the first claim is in the database while the others queue
            return await real(*args, **kwargs)

        monkeypatch.setattr(leases_async, "lease_named", slow)
        batcher = claim_batch.ClaimBatcher(lanes=1)  # the others queue behind the first
        first = asyncio.ensure_future(batcher.lease(org.org_id, "p", "first", None))
        await in_db.wait()
        gave_up = asyncio.ensure_future(batcher.lease(org.org_id, "p", "gave-up", None))
        kept = asyncio.ensure_future(batcher.lease(org.org_id, "p", "kept", None))
        await asyncio.sleep(0.01)
        gave_up.cancel()
        return await first, await kept, batcher

    (first, _), (kept, _), batcher = run(main)
    active = consistent(pool.id)
    assert sorted(r.service_tag for r in active) == ["first", "kept"]
    assert (first.service_tag, kept.service_tag) == ("first", "kept")
    assert batcher.calls == 2


def test_aborted_and_not_found_from_a_call_alone_are_its_answer(org, monkeypatch) -> None:
    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise Aborted("instance x was leased concurrently; retry")

    monkeypatch.setattr(leases_async, "lease_named", refused)

    async def main() -> list[Any]:
        batcher = claim_batch.ClaimBatcher()
        return await asyncio.gather(batcher.lease(org.org_id, "p", "a", None), return_exceptions=True)

    [out] = run(main)
    assert isinstance(out, Aborted)


def test_a_batch_takes_only_instances_seen_at_their_runners_epoch(org) -> None:
    world = make_catalog(org)
    pool = make_pool(world.org_id, "p", runner_id=world.runner_id)
    a, b, c = add_ready(pool, 3)
    with session_scope() as s:
        epochs.bump_all(session=s)  # the stream was lost: none of them is known to be running now
        epoch = epochs.current(world.runner_id, session=s)
    with session_scope() as s:
        assert inst_domain.apply_event(ev.InstanceEvent(instance_id=c, pool_id=pool.id, kind=ev.KIND_SEEN,
                                                        epoch=epoch), session=s)
    wants = [Want("x", None), Want("y", None), Want("z", None)]
    got = run(lambda: adb.one_statement(
        lambda conn: leases_async.lease_named_many(world.org_id, "p", wants, conn=conn, now=utcnow())))
    assert [g.instance_id if g else None for g in got] == [c, None, None]
    assert [r.instance_id for r in consistent(pool.id)] == [c]


def test_a_pool_has_at_most_lanes_claims_in_the_database_and_the_rest_queue(org, monkeypatch) -> None:
    pool = make_pool(org.org_id, "p", max_size=100)
    add_ready_bulk(pool.id, org.org_id, 40)
    real_one, real_many = leases_async.lease_named, leases_async.lease_named_many
    inside = {"now": 0, "most": 0}

    def counted(real):  # type: ignore[no-untyped-def]
        async def claim(*args: Any, **kwargs: Any) -> Any:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])
            try:
                await asyncio.sleep(0.02)  # a slow database: the calls that arrive meanwhile queue
                return await real(*args, **kwargs)
            finally:
                inside["now"] -= 1
        return claim

    monkeypatch.setattr(leases_async, "lease_named", counted(real_one))
    monkeypatch.setattr(leases_async, "lease_named_many", counted(real_many))

    async def main() -> Any:
        batcher = claim_batch.ClaimBatcher(lanes=2)
        calls = []
        for i in range(30):  # a call every few ms, while claims are in the database
            calls.append(asyncio.ensure_future(batcher.lease(org.org_id, "p", f"t{i}", None)))
            await asyncio.sleep(0.002)
        return await asyncio.gather(*calls), batcher

    results, batcher = run(main)
    assert inside["most"] == 2, inside
    assert all(view is not None for view, _ in results)
    assert batcher.batches < batcher.calls == 30
    assert len(consistent(pool.id)) == 30
