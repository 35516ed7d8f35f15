"""Factories for the lease tests: a named pool with its lease policy, and running instances put straight
into the table (the engine's provider round-trip is not what these tests are about)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from app.db import session_scope
from app.domain import pools
from app.domain.states import PoolKind
from app.models import Instance, Lease, Pool, Reservation, utcnow


def make_pool(org_id: str, name: str = "pool-a", *, runner_id: str | None = None, kind: PoolKind = PoolKind.NAMED,
              max_size: int = 10, **fields: Any) -> Pool:
    """A named pool (instances are added directly, so `max_size` is only what quotas count)."""
    with session_scope() as s:
        pool = pools.new_pool(org_id, kind=kind, name=name, min_size=0, max_size=max_size, runner_id=runner_id, **fields)
        return pools.insert_pool(pool, session=s, conflict=f"pool {name} exists")


def add_ready(pool: Pool, count: int = 1, *, stale: bool = False, ready_at: datetime | None = None,
              zone: str = "zone-a", snapshot_id: str | None = None) -> list[str]:
    """`count` running, free instances of the pool; returns their ids (oldest ready first)."""
    base = ready_at or utcnow() - timedelta(minutes=5)
    rows = [Instance(pool_id=pool.id, organization_id=pool.organization_id, provider="fake", state="running",
                     desired_state="running", stale=stale, zone=zone, snapshot_id=snapshot_id, ready_at=base + timedelta(milliseconds=i),
                     idle_since=base) for i in range(count)]
    with session_scope() as s:
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def add_ready_bulk(pool_id: str, org_id: str, count: int, *, zone: str = "zone-a") -> None:
    """Many ready instances in one statement (benchmarks, big concurrency runs)."""
    with session_scope() as s:
        s.execute(sa.text(
            "INSERT INTO instances (id, pool_id, organization_id, provider, state, desired_state, event_seq, "
            "state_changed_at, stale, draining, address, zone, failure_count, last_error, requested_at, "
            "ready_at, idle_since, missing_seen) "
            "SELECT gen_random_uuid()::text, :pool, :org, 'fake', 'running', 'running', 0, now(), false, false, "
            "'', :zone, 0, '', now(), now() - make_interval(secs => g / 1000.0), now(), 0 "
            "FROM generate_series(1, :n) AS g"
        ), {"pool": pool_id, "org": org_id, "zone": zone, "n": count})


def get(model: Any, row_id: str) -> Any:
    with session_scope() as s:
        return s.get(model, row_id)


def leases_of(pool_id: str) -> list[Lease]:
    with session_scope() as s:
        return list(s.query(Lease).filter(Lease.pool_id == pool_id).order_by(Lease.created_at).all())


def reservation(org_id: str, client_id: str) -> Reservation | None:
    with session_scope() as s:
        return s.query(Reservation).filter_by(organization_id=org_id, client_id=client_id).first()
