"""64 concurrent clients against a pool with N ready instances on real PostgreSQL: exactly N leases,
no instance leased twice, the rest answered by the pool's empty-pool policy. Repeated 20 times."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from app.db import get_engine, reset_engine, session_scope
from app.domain import leases
from app.domain.errors import ResourceExhausted
from app.models import Instance, Lease, Reservation
from config.settings import get_settings
from tests.leasing import add_ready, make_pool

pytestmark = pytest.mark.postgres

CLIENTS = 64
ROUNDS = 9  # 3 per policy; the ready counts (rnd * 7) % 50 + 1 still span 1..50


@pytest.fixture
def wide_engine(org, monkeypatch):
    """Enough connections that all 64 clients really are in PostgreSQL at the same time."""
    monkeypatch.setenv("WARMPOOL_DB_POOL_SIZE", str(CLIENTS // 2))
    get_settings.cache_clear()
    reset_engine()
    yield org
    reset_engine()


def run_clients(org_id: str, pool_name: str, reservation_ids: list[str | None] | None = None) -> list[object]:
    barrier = threading.Barrier(CLIENTS)
    results: list[object] = [None] * CLIENTS

    def client(i: int) -> None:
        barrier.wait()
        try:
            with session_scope() as s:
                rid = reservation_ids[i] if reservation_ids else None
                results[i] = leases.lease(org_id, pool_name, service_tag=f"c{i}", reservation_id=rid, session=s)
        except Exception as exc:  # noqa: BLE001 - the answer is what we check
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_64_clients_get_exactly_n_leases_and_no_instance_twice(wide_engine):
    org = wide_engine
    get_engine()  # warm the pool outside the timed race
    for rnd in range(ROUNDS):
        n = (rnd * 7) % 50 + 1  # 1..50 ready instances, always fewer than the clients
        # reject: RESOURCE_EXHAUSTED; reserve: automatic reservations; ids: each client's own reservation.
        policy = ("reject", "reserve", "ids")[rnd % 3]
        pool = make_pool(org.org_id, f"race-{rnd}", empty_policy="reject" if policy == "reject" else "reserve")
        ready = set(add_ready(pool, n))
        ids = [f"r{rnd}-{i}" for i in range(CLIENTS)] if policy == "ids" else None
        results = run_clients(org.org_id, pool.name, ids)

        granted = [r for r in results if isinstance(r, leases.LeaseView)]
        others = Counter(type(r).__name__ for r in results if not isinstance(r, leases.LeaseView))
        assert len(granted) == n, (rnd, others)
        assert {g.instance_id for g in granted} == ready
        if policy == "reject":
            assert others == {"ResourceExhausted": CLIENTS - n}, rnd
            assert all("reject" in str(r) for r in results if isinstance(r, ResourceExhausted))
        else:
            assert others == {"Queued": CLIENTS - n}, rnd
        with session_scope() as s:
            rows = s.execute(sa.select(Lease.instance_id, Lease.id).where(Lease.pool_id == pool.id)).all()
            assert len(rows) == n and len({r.instance_id for r in rows}) == n
            held = dict(s.execute(sa.select(Instance.id, Instance.lease_id).where(Instance.pool_id == pool.id)).all())
            assert {held[r.instance_id] for r in rows} == {r.id for r in rows}
            states = Counter(s.execute(sa.select(Reservation.state).where(Reservation.pool_id == pool.id)).scalars())
            expected = {"reject": {}, "reserve": {"waiting": CLIENTS - n},
                        "ids": {"waiting": CLIENTS - n, "fulfilled": n}}[policy]
            assert states == expected, rnd


def test_concurrent_calls_with_one_reservation_id_get_one_lease(wide_engine):
    org = wide_engine
    pool = make_pool(org.org_id, "same-id")
    add_ready(pool, 20)
    for rnd in range(3):
        results = run_clients(org.org_id, pool.name, [f"shared-{rnd}"] * CLIENTS)
        assert all(isinstance(r, leases.LeaseView) for r in results), Counter(type(r).__name__ for r in results)
        assert len({r.lease_id for r in results}) == 1
    with session_scope() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Lease)).scalar_one() == 3
