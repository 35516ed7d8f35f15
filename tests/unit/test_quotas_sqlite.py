"""The quota's pool count on SQLite, the embedded database of `warmpool dev`: concurrent creates from
separate connections cannot overshoot max_pools (the no-op UPDATE of the organization opens the write
transaction before the count). PostgreSQL's path: tests/security/test_quotas.py."""
from __future__ import annotations

import threading

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from app.db import make_engine
from app.domain import pools, quotas
from app.domain.states import PoolKind
from app.models import Organization, Pool


def test_concurrent_creates_never_overshoot_max_pools_on_sqlite(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'dev.sqlite3'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as s:
        org = Organization(name="dev")
        s.add(org)
        s.flush()
        quotas.set_quota(org.id, max_pools=3, session=s)
        org_id = org.id
        s.commit()
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def create(i: int) -> None:
        barrier.wait()
        with Session(engine) as s:
            try:
                pools.insert_pool(pools.new_pool(org_id, kind=PoolKind.NAMED, name=f"p{i}", min_size=0, max_size=1),
                                  session=s, conflict="exists")
                s.commit()
                outcomes.append("created")
            except quotas.QuotaExceeded:
                s.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 3
    with Session(engine) as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Pool)).scalar_one() == 3
    engine.dispose()
