"""The state machines are enforced: a move goes through one compare-and-set on the sources its table
allows, stamps the change time, refuses what the table forbids, and reports a lost race as 0 rows."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, SQLModel

from app.db import make_engine
from app.domain import transitions as t
from app.domain.states import (
    INSTANCE_TRANSITIONS, LEASE_TRANSITIONS, POOL_TRANSITIONS, PREBUILD_TRANSITIONS, RESERVATION_TRANSITIONS,
    InstanceState as S, LeaseState, PoolPhase, ReservationState as R,
)
from app.models import Instance, Lease, Organization, Pool, Reservation, utcnow


@pytest.fixture
def session(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as s:
        yield s
    engine.dispose()


@pytest.fixture
def pool(session):
    org = Organization(name="o")
    session.add(org)
    session.flush()
    pool = Pool(organization_id=org.id, name="p", kind="named")
    session.add(pool)
    session.flush()
    return pool


def test_every_machine_covers_its_states():
    for machine, table in ((t.INSTANCE, INSTANCE_TRANSITIONS), (t.POOL, POOL_TRANSITIONS), (t.LEASE, LEASE_TRANSITIONS),
                           (t.RESERVATION, RESERVATION_TRANSITIONS), (t.PREBUILD, PREBUILD_TRANSITIONS)):
        assert machine.table is table and set(table) == set(machine.states)


def test_a_move_is_a_compare_and_set_that_stamps_its_time(session, pool):
    lease = Lease(organization_id=pool.organization_id, pool_id=pool.id, instance_id="i", state="active",
                  expires_at=utcnow())
    session.add(lease)
    session.flush()
    now = utcnow() + timedelta(seconds=5)
    assert t.LEASE.move(session, lease, LeaseState.RETURNED, now=now, end_reason="returned") == 1
    assert (lease.state, lease.ended_at, lease.end_reason) == ("returned", now, "returned")
    session.expire_all()
    assert session.get(Lease, lease.id).state == "returned"
    # The second writer of a race gets 0 rows, and the row keeps the first outcome.
    assert t.LEASE.move(session, lease.id, LeaseState.EXPIRED) == 0
    assert session.get(Lease, lease.id).state == "returned"
    with pytest.raises(t.InvalidTransition, match="returned -> expired"):
        t.LEASE.move(session, lease.id, LeaseState.EXPIRED, strict=True)


def test_moves_the_table_forbids_raise_before_touching_the_database(session, pool):
    with pytest.raises(t.InvalidTransition):
        t.LEASE.move(session, "x", LeaseState.ACTIVE)  # nothing moves back to active
    with pytest.raises(t.InvalidTransition):
        t.RESERVATION.move(session, "x", R.EXPIRED, expect=[R.FULFILLED])
    with pytest.raises(t.InvalidTransition):
        t.POOL.move(session, pool, PoolPhase.READY, expect=[PoolPhase.DELETED])
    assert t.POOL.move(session, pool, PoolPhase.DELETING) == 1
    assert t.POOL.move(session, pool, PoolPhase.READY) == 0  # deleting never goes back
    assert pool.phase == "deleting"


def test_instances_may_skip_steps_but_never_go_back(session, pool):
    inst = Instance(pool_id=pool.id, organization_id=pool.organization_id)
    session.add(inst)
    session.flush()
    assert t.INSTANCE.move(session, inst, S.RUNNING) == 1  # requested -> running: provisioning happened
    assert t.INSTANCE.move(session, inst, S.PROVISIONING) == 0
    assert t.INSTANCE.move(session, inst, S.FAILED) == 1
    assert t.INSTANCE.move(session, inst, S.RUNNING) == 0
    assert inst.state == "failed"


def test_a_list_of_ids_moves_together(session, pool):
    now = utcnow()
    rows = [Reservation(organization_id=pool.organization_id, client_id=f"c{i}", pool_id=pool.id, expires_at=now)
            for i in range(3)]
    session.add_all(rows)
    session.flush()
    assert t.RESERVATION.move(session, [rows[0].id], R.CANCELLED) == 1
    assert t.RESERVATION.move(session, [r.id for r in rows], R.EXPIRED, expect=[R.WAITING]) == 2


def test_many_moves_each_compare_with_their_own_state_and_columns(session, pool):
    rows = [Instance(pool_id=pool.id, organization_id=pool.organization_id, state=st, event_seq=5)
            for st in ("requested", "provisioning", "running")]
    session.add_all(rows)
    session.flush()
    a, b, c = (r.id for r in rows)
    moved = t.INSTANCE.move_many(session, [
        t.Move(a, expect=S.REQUESTED, to=S.RUNNING, where={"event_seq": 5}, values={"event_seq": 6}),
        t.Move(b, expect=S.PROVISIONING, to=S.RUNNING, where={"event_seq": 4}),  # its sequence moved on: lost
        t.Move(c, expect=S.RUNNING, where={"event_seq": 5}, values={"address": "10.0.0.1"}),  # no state change
    ], returning=[Instance.state, Instance.lease_id])
    assert set(moved) == {a, c} and moved[a].state == "running" and moved[a].lease_id is None
    session.expire_all()
    got = {i.id: (i.state, i.event_seq, i.address) for i in session.query(Instance)}
    assert got == {a: ("running", 6, ""), b: ("provisioning", 5, ""), c: ("running", 5, "10.0.0.1")}
    with pytest.raises(t.InvalidTransition):  # running -> requested: refused before anything is written
        t.INSTANCE.move_many(session, [t.Move(b, expect=S.PROVISIONING, to=S.STOPPED),
                                       t.Move(c, expect=S.RUNNING, to=S.REQUESTED)])
    session.expire_all()
    assert session.get(Instance, b).state == "provisioning"
