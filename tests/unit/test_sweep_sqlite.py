"""The reconcile sweep's choice on SQLite (`warmpool dev`): bounded, flagged pools first, then the least
recently reconciled, at most `per_org` of one organization. PostgreSQL's run: tests/security/test_fairness.py."""
from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, SQLModel

from app.db import make_engine
from app.domain import pools
from app.domain.states import PoolKind
from app.models import Organization, utcnow


def test_sweep_takes_a_bounded_fair_share_of_each_organization_on_sqlite(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'dev.sqlite3'}")
    SQLModel.metadata.create_all(engine)
    now = utcnow()
    with Session(engine) as s:
        hog, small = Organization(name="hog"), Organization(name="small")
        s.add_all([hog, small])
        s.flush()
        rows = []
        for i in range(10):  # the hog's: reconciled long ago, oldest first by i; one flagged
            p = pools.new_pool(hog.id, kind=PoolKind.NAMED, name=f"h{i}", min_size=0, max_size=1)
            p.needs_reconcile, p.reconciled_at = i == 7, now - timedelta(hours=10 - i)
            rows.append(p)
        for i in range(2):  # the small org's: reconciled recently
            p = pools.new_pool(small.id, kind=PoolKind.NAMED, name=f"s{i}", min_size=0, max_size=1)
            p.needs_reconcile, p.reconciled_at = False, now - timedelta(minutes=1)
            rows.append(p)
        s.add_all(rows)
        s.commit()
        by_name = {p.id: p.name for p in rows}
        chosen = [by_name[i] for i in pools.pools_to_sweep(100, per_org=3, session=s)]
        assert chosen == ["h7", "h0", "h1", "s0", "s1"] or chosen == ["h7", "h0", "h1", "s1", "s0"]
        assert len(pools.pools_to_sweep(4, per_org=3, session=s)) == 4  # the batch bound holds too
        assert len(pools.pools_to_sweep(100, session=s)) == 12  # without a share: every live pool
    engine.dispose()
