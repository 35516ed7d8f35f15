"""A worker SIGKILLed while it provisions: a new worker takes over and the pool converges within seconds
(the dead worker's unacknowledged tasks come back after the short broker visibility timeout), with 0
orphans at the fake provider, 0 ghosts, and no instance made twice (a redelivered create finds its resource
made: the instance id is the cloud's idempotency key). With two replicas the other worker keeps working."""
from __future__ import annotations

import signal
import time

import sqlalchemy as sa

from tests.chaos.conftest import ITERATIONS, Work, assert_converges, make_world, report, resize, wait_for


def provisioning(pool_id: str) -> int:
    from app.db import session_scope
    from app.models import Instance

    with session_scope() as s:
        return s.execute(sa.select(sa.func.count()).where(
            Instance.pool_id == pool_id, Instance.state.in_(("requested", "provisioning")))).scalar_one()


def test_worker_sigkill_during_provisioning(stack, own_redis):
    world = make_world(2, boot_ms=600)
    assert_converges(stack, own_redis.url, world, 2, time.monotonic(), "the pool to fill first")
    times, work = [], Work()
    for i in range(ITERATIONS):
        target = 5 if i % 2 == 0 else 2
        resize(world, target)
        if target == 5:
            wait_for(lambda: provisioning(world.pool_id) >= 2, 10, "creates in flight")
        stack.kill("worker", signal.SIGKILL)
        stack.start_worker("worker")
        ended = time.monotonic()
        times.append(assert_converges(stack, own_redis.url, world, target, ended, f"convergence after SIGKILL #{i}"))
    work.take(own_redis.url, world)
    report("worker SIGKILL", stack, times, work)
