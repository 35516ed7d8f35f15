"""A delete never loses an in-flight create: scale 0→10→0 while the instances boot, with a real worker and
applier and no beat (so no orphan sweep), and nothing is left at the fake provider."""
from __future__ import annotations

import sqlalchemy as sa

from app.db import session_scope
from app.domain import pools
from app.models import Instance
from tests.integration.test_engine_processes import create, engine, wait_for, world  # noqa: F401 - fixture
from workers.providers.fake import FakeCloud

TRIALS = 3


def live_rows(pool_id: str) -> int:
    with session_scope() as s:
        return s.execute(sa.select(sa.func.count()).where(Instance.pool_id == pool_id,
                                                          Instance.state != "deleted")).scalar_one()


def test_scale_up_and_down_while_booting_leaves_nothing_at_the_provider(engine, redis_client):
    w, ns = world(boot_ms=600)
    cloud = FakeCloud(redis_client, ns)
    pool_id = create(w, 0)
    for trial in range(TRIALS):
        with session_scope() as s:
            pools.resize_pool(w.org_id, pool_id, min_size=10, max_size=10, session=s)

        def booting() -> bool:  # the creates are in flight: rows exist, most have no resource yet
            with session_scope() as s:
                n = s.execute(sa.select(sa.func.count()).where(
                    Instance.pool_id == pool_id, Instance.state.in_(("requested", "provisioning")))).scalar_one()
            return n >= 5

        wait_for(booting, what=f"instances booting (trial {trial})")
        with session_scope() as s:
            pools.resize_pool(w.org_id, pool_id, min_size=0, max_size=0, session=s)
        try:
            wait_for(lambda: live_rows(pool_id) == 0 and not cloud.all(), timeout=15, what="no rows, no resources")
        except AssertionError as exc:
            raise AssertionError(f"trial {trial}: {live_rows(pool_id)} rows and resources {sorted(cloud.all())} "
                                 f"left\n{engine.log('worker')}") from exc
    # and nothing comes back late: once every provision task has ended, the provider is still empty
    wait_for(lambda: not redis_client.keys("warmpool:inflight:provision_instance:*"), timeout=15,
             what="every provision task ended")
    with session_scope() as s:
        total = s.execute(sa.select(sa.func.count()).where(Instance.pool_id == pool_id)).scalar_one()
    assert total >= 10 * TRIALS
    assert not cloud.all()
