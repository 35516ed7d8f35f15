"""One active lease per instance, kept by the database on PostgreSQL and on SQLite (`warmpool dev`):
racing claims, a second active lease row refused, Return racing ExtendTo and expiry racing Return with
one outcome each, a lost instance ending its lease, and fresh instances first after a rotation."""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app import events as ev
from app.api.hygiene import domain_error_of
from app.db import session_scope
from app.domain import instances, leases, pools
from app.domain.errors import Aborted, FailedPrecondition, ResourceExhausted
from app.models import Instance, Lease, Pool, new_id, utcnow
from tests.leasing import add_ready, make_pool

CLIENTS = 24
ROUNDS = 5


def race(calls: list[Callable[[], object]]) -> list[object]:
    """Run every call in its own thread, released together; each result is a value or the exception."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a racing call never finished"
    return results


def in_session(fn: Callable, *args, **kwargs) -> Callable[[], object]:
    def call() -> object:
        with session_scope() as s:
            return fn(*args, session=s, **kwargs)
    return call


def assert_invariant(pool_id: str) -> None:
    """From the database: no instance has two active leases, and every active lease and the instance
    it names point at each other (nothing leased to a lease that ended, no lease without its instance)."""
    with session_scope() as s:
        doubles = s.execute(
            sa.select(Lease.instance_id).where(Lease.state == "active", Lease.pool_id == pool_id)
            .group_by(Lease.instance_id).having(sa.func.count() > 1)
        ).all()
        assert doubles == []
        active = dict(s.execute(sa.select(Lease.id, Lease.instance_id)
                                .where(Lease.state == "active", Lease.pool_id == pool_id)).all())
        held = dict(s.execute(sa.select(Instance.lease_id, Instance.id)
                              .where(Instance.pool_id == pool_id, Instance.lease_id.is_not(None))).all())
        assert active == held


def test_racing_claims_never_lease_an_instance_twice(any_org, backend):
    for rnd in range(ROUNDS):
        n = rnd * 2 + 1  # 1, 3, 5, 7, 9 ready instances for 24 clients
        policy = ("reject", "reserve")[rnd % 2]
        pool = make_pool(any_org.org_id, f"race-{rnd}", empty_policy=policy)
        ready = set(add_ready(pool, n))
        results = race([in_session(leases.lease, any_org.org_id, pool.name, service_tag=f"c{i}")
                        for i in range(CLIENTS)])
        granted = [r for r in results if isinstance(r, leases.LeaseView)]
        others = Counter(type(r).__name__ for r in results if not isinstance(r, leases.LeaseView))
        assert len(granted) == n, (backend, rnd, others, [r for r in results if isinstance(r, Exception)][:1])
        assert {g.instance_id for g in granted} == ready
        assert others == {("ResourceExhausted" if policy == "reject" else "Queued"): CLIENTS - n}, (rnd, others)
        assert_invariant(pool.id)
        with session_scope() as s:
            leased = s.execute(sa.select(sa.func.count()).select_from(Lease).where(Lease.pool_id == pool.id)).scalar()
            assert leased == n


def test_the_database_refuses_a_second_active_lease(any_org):
    pool = make_pool(any_org.org_id)
    [inst] = add_ready(pool)
    with session_scope() as s:
        first = leases.lease(any_org.org_id, pool.name, session=s)
    row = dict(organization_id=any_org.org_id, pool_id=pool.id, instance_id=inst, state="active",
               expires_at=utcnow() + timedelta(hours=1))
    with pytest.raises(IntegrityError) as refused, session_scope() as s:
        s.execute(sa.insert(Lease).values(id=new_id(), **row))
    # Every façade answers the backstop as a lost race (aborted: retry), not as bad input.
    assert isinstance(domain_error_of(refused.value), Aborted)
    # An ended lease does not count: history may hold any number of them.
    with session_scope() as s:
        s.execute(sa.insert(Lease).values(id=new_id(), **{**row, "state": "returned"}))
    # The code path refuses too: an instance's lease_id is set only from NULL.
    with pytest.raises(Aborted), session_scope() as s:
        p = s.get(Pool, pool.id)
        leases.bind(p, inst, "", service_tag="x", expires_at=utcnow() + timedelta(hours=1), session=s, now=utcnow())
    with session_scope() as s:
        assert s.get(Instance, inst).lease_id == first.lease_id
    assert_invariant(pool.id)


def test_return_racing_extend_to_ends_with_one_outcome(any_org, effects_log):
    pool = make_pool(any_org.org_id, lease_max_seconds=7200)
    ids = add_ready(pool, 8)
    granted = [in_session(leases.lease, any_org.org_id, pool.name, service_tag="t")() for _ in ids]
    to = utcnow() + timedelta(hours=1)
    calls = []
    for g in granted:
        calls.append(in_session(leases.return_lease, any_org.org_id, g.instance_id, service_tag="t"))
        calls.append(in_session(leases.extend_to, any_org.org_id, g.instance_id, to, service_tag="t"))
    results = race(calls)
    for g, returned, extended in zip(granted, results[0::2], results[1::2], strict=True):
        assert isinstance(returned, leases.LeaseView) and returned.state == "returned", returned
        assert isinstance(extended, (leases.LeaseView, FailedPrecondition)), extended
        with session_scope() as s:
            row = s.get(Lease, g.lease_id)
            inst = s.get(Instance, g.instance_id)
        assert row.state == "returned" and inst.lease_id is None and inst.desired_state == "deleted"
        # The expiry the database kept is the one the ExtendTo caller was told, or the original.
        assert row.expires_at == (to if isinstance(extended, leases.LeaseView) else g.expires_at)
    deletes = Counter(p["instance_id"] for name, p in effects_log if name == "delete_instance")
    assert deletes == {i: 1 for i in ids}
    assert_invariant(pool.id)


def test_expiry_racing_return_ends_each_lease_once(any_org, effects_log):
    pool = make_pool(any_org.org_id)
    ids = add_ready(pool, 8)
    now = utcnow()
    granted = [in_session(leases.lease, any_org.org_id, pool.name, service_tag="t",
                          wished_expiry=now + timedelta(seconds=30), now=now)() for _ in ids]
    before, after = now + timedelta(seconds=10), now + timedelta(seconds=60)
    calls = [in_session(leases.expire_due, after, 100)]
    calls += [in_session(leases.return_lease, any_org.org_id, g.instance_id, service_tag="t", now=before)
              for g in granted]
    swept, *returns = race(calls)
    with session_scope() as s:
        states = {g.lease_id: s.get(Lease, g.lease_id).state for g in granted}
    for g, answer in zip(granted, returns, strict=True):
        if isinstance(answer, leases.LeaseView):
            assert states[g.lease_id] == "returned"
        else:
            assert isinstance(answer, FailedPrecondition), answer
            assert states[g.lease_id] == "expired"
    assert swept == Counter(states.values())["expired"]
    deletes = Counter(p["instance_id"] for name, p in effects_log if name == "delete_instance")
    assert deletes == {i: 1 for i in ids}
    assert_invariant(pool.id)


def test_a_lost_instance_ends_its_lease(any_org):
    pool = make_pool(any_org.org_id)
    [inst] = add_ready(pool)
    with session_scope() as s:
        granted = leases.lease(any_org.org_id, pool.name, session=s)
    with session_scope() as s:
        instances.apply_event(ev.InstanceEvent(instance_id=inst, pool_id=pool.id, state="failed", message="gone"),
                              session=s)
    with session_scope() as s:
        row = s.get(Lease, granted.lease_id)
        assert (row.state, row.end_reason) == ("expired", "instance_lost")
        assert s.get(Instance, inst).lease_id is None
    assert_invariant(pool.id)


def test_after_a_rotation_every_lease_gets_a_fresh_instance(any_org):
    pool = make_pool(any_org.org_id, snapshot_id="snap-1")
    old = add_ready(pool, 4, snapshot_id="snap-1", ready_at=utcnow() - timedelta(hours=1))
    with session_scope() as s:
        assert pools.set_snapshot(s.get(Pool, pool.id), "snap-2", session=s)
    fresh = set(add_ready(pool, 3, snapshot_id="snap-2"))  # what the reconcile brought up on the new snapshot
    with session_scope() as s:
        stale = dict(s.execute(sa.select(Instance.id, Instance.stale).where(Instance.pool_id == pool.id)).all())
    assert stale == {**{i: True for i in old}, **{i: False for i in fresh}}

    results = race([in_session(leases.lease, any_org.org_id, pool.name) for _ in fresh])
    assert {r.instance_id for r in results} == fresh, results
    with session_scope() as s:
        nxt = leases.lease(any_org.org_id, pool.name, session=s)
    assert nxt.instance_id == old[0]  # then the longest-ready of the stale ones
    with session_scope() as s:  # a rollback makes the old snapshot's instances fresh again
        pools.set_snapshot(s.get(Pool, pool.id), "snap-1", session=s)
        rows = dict(s.execute(sa.select(Instance.id, Instance.stale).where(Instance.pool_id == pool.id)).all())
    assert {i for i, st in rows.items() if not st} == set(old)
    assert_invariant(pool.id)


def test_the_migration_ends_duplicate_active_leases_an_old_sqlite_file_holds(tmp_path):
    """A `warmpool dev` database written before the index existed may hold doubles: upgrading keeps the
    newest active lease of each instance and expires the others, instead of failing to build the index;
    and rebuilding tables (SQLite's batch mode) keeps every row."""
    from app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, "0001")
    engine = sa.create_engine(url)
    t0 = utcnow()
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO organizations (id, name, created_at) VALUES ('o', 'o', :t)"), {"t": t0})
        pool_cols = {col["name"]: col for col in sa.inspect(c).get_columns("pools")}
        values = {name: 0 for name, col in pool_cols.items() if not col["nullable"]}
        values.update(id="p", organization_id="o", kind="named", name="p", group_name="g", labels="{}", tenant_id="",
                      desired_phase="ready", template="{}", empty_policy="reject", autoscale="{}", extra="{}",
                      phase="ready", failure_message="", created_at=t0, updated_at=t0)
        c.execute(sa.text(f"INSERT INTO pools ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})"), values)
        for i, lid in enumerate(["l1", "l2", "l3"]):
            c.execute(sa.text("INSERT INTO leases (id, organization_id, pool_id, instance_id, service_tag, state, "
                              "created_at, expires_at, end_reason) VALUES (:id, 'o', 'p', 'i', '', 'active', :c, :e, '')"),
                      {"id": lid, "c": t0 + timedelta(seconds=i), "e": t0 + timedelta(hours=1)})
    engine.dispose()
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as c:
        states = dict(c.execute(sa.text("SELECT id, state FROM leases")).all())
        with pytest.raises(IntegrityError):
            c.execute(sa.text("UPDATE leases SET state = 'active' WHERE id = 'l1'"))
    engine.dispose()
    assert states == {"l1": "expired", "l2": "expired", "l3": "active"}


def test_reuse_pool_returns_racing_new_leases_hand_each_instance_to_one_caller(any_org, backend):
    """On a `reuse` pool a returned instance is free again once its provider has reset it (the applier
    gets `recycled`): returns and resets racing fresh Lease calls still give every instance to one lease
    at a time, and a returned instance is never leased before its reset."""
    pool = make_pool(any_org.org_id, reuse=True, empty_policy="reject")
    ids = add_ready(pool, 6)
    for rnd in range(3):
        with session_scope() as s:
            held = [r.instance_id for r in s.execute(sa.select(Lease.instance_id).where(
                Lease.pool_id == pool.id, Lease.state == "active")).all()]
        for _ in range(len(ids) - len(held)):
            held.append(in_session(leases.lease, any_org.org_id, pool.name, service_tag="t")().instance_id)
        calls = [in_session(leases.return_lease, any_org.org_id, i, service_tag="t") for i in held]
        calls += [in_session(leases.lease, any_org.org_id, pool.name, service_tag="t") for _ in range(12)]
        calls += [in_session(instances.apply_event, ev.InstanceEvent(instance_id=i, pool_id=pool.id,
                                                                     kind=ev.KIND_RECYCLED)) for i in held]
        results = race(calls)
        results = results[: len(held) + 12]
        assert all(isinstance(r, leases.LeaseView) for r in results[: len(held)]), (backend, rnd, results)
        granted = [r for r in results[len(held):] if isinstance(r, leases.LeaseView)]
        assert all(isinstance(r, (leases.LeaseView, ResourceExhausted)) for r in results[len(held):]), results
        assert len({g.instance_id for g in granted}) == len(granted) <= len(ids)
        assert_invariant(pool.id)
        for iid in held:  # a reset that raced ahead of its return is redone (the reconciler's kick)
            in_session(instances.apply_event, ev.InstanceEvent(instance_id=iid, pool_id=pool.id, kind=ev.KIND_RECYCLED))()
