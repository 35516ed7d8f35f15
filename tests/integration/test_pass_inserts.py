"""A reconcile pass that makes thousands of instances writes them in multi-row INSERTs (a thousand rows each),
not one INSERT per row; every row gets its own id and the pool's defaults. On both backends."""
from __future__ import annotations

import sqlalchemy as sa

from app.db import get_engine, session_scope
from app.domain import pools, quotas, reconciler
from app.domain.states import PoolKind
from app.models import Instance


def test_a_pass_writes_its_new_instances_a_thousand_to_an_insert(any_org):
    size = 2500
    with session_scope() as s:
        quotas.set_quota(any_org.org_id, max_creating=size, max_instances=size, max_pool_size=size, session=s)
        pool = pools.insert_pool(pools.new_pool(any_org.org_id, kind=PoolKind.NAMED, name="big", min_size=size,
                                                max_size=size, stopped_size=0), session=s, conflict="exists")
        pool_id = pool.id
    inserts: list[str] = []  # per INSERT sent, how: EXECUTEMANY is the driver running it once per row

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO INSTANCES"):
            inserts.append(context.execute_style.name)

    sa.event.listen(get_engine(), "before_cursor_execute", count)
    try:
        with session_scope() as s:
            plan = reconciler.reconcile(pool_id, session=s)
    finally:
        sa.event.remove(get_engine(), "before_cursor_execute", count)
    assert plan is not None and plan.create_running == size
    assert inserts == ["INSERTMANYVALUES"] * 3, inserts  # pages of 1,000 rows, not one statement per row
    with session_scope() as s:
        rows = s.execute(sa.select(Instance.id, Instance.state, Instance.desired_state, Instance.organization_id)
                         .where(Instance.pool_id == pool_id)).all()
    assert len(rows) == len({r.id for r in rows}) == size
    assert {(r.state, r.desired_state, r.organization_id) for r in rows} == {("requested", "running", any_org.org_id)}
