"""The claim and reservations on SQLite, the embedded database of `warmpool dev` (no FOR UPDATE, no
data-modifying CTE there: the portable path). PostgreSQL's path is covered by the integration tests."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, SQLModel

from app.db import make_engine
from app.domain import leases, pools, reservations
from app.domain.errors import FailedPrecondition
from app.domain.states import PoolKind
from app.models import Instance, Lease, Organization, utcnow


@pytest.fixture
def session(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'dev.sqlite3'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as s:
        yield s
    engine.dispose()


def test_lease_reserve_assign_extend_return_on_sqlite(session):
    org = Organization(name="dev")
    session.add(org)
    session.flush()
    pool = pools.new_pool(org.id, kind=PoolKind.NAMED, name="p", min_size=0, max_size=5, lease_max_seconds=3600)
    session.add(pool)
    session.flush()  # no ORM relationships: the pool goes first by hand
    now = utcnow()
    ready = [Instance(pool_id=pool.id, organization_id=org.id, state="running", ready_at=now - timedelta(seconds=i))
             for i in range(2)]
    session.add_all(ready)
    session.commit()

    first = leases.lease(org.id, "p", service_tag="t", reservation_id="r-1", session=session, now=now)
    assert first.instance_id == ready[1].id  # the longest ready
    assert leases.lease(org.id, "p", reservation_id="r-1", session=session, now=now).lease_id == first.lease_id
    leases.lease(org.id, "", session=session, now=now)
    queued = leases.lease(org.id, "p", reservation_id="r-2", session=session, now=now)
    assert isinstance(queued, leases.Queued)
    session.commit()

    late = Instance(pool_id=pool.id, organization_id=org.id, state="running", ready_at=now)
    session.add(late)
    session.flush()
    lease_id = reservations.assign_ready_instance(late.id, session=session, now=now)
    assert session.get(Lease, lease_id).instance_id == late.id
    assert reservations.outcome(org.id, queued.reservation_id, session=session, now=now).instance_id == late.id

    longer = leases.extend_to(org.id, first.instance_id, now + timedelta(days=1), service_tag="t", session=session, now=now)
    assert longer.expires_at == now + timedelta(hours=1)
    leases.return_lease(org.id, first.instance_id, service_tag="t", session=session, now=now)
    session.commit()
    with pytest.raises(FailedPrecondition):
        leases.get_lease(org.id, first.instance_id, session=session, now=now)
    assert session.get(Instance, first.instance_id).desired_state == "deleted"
