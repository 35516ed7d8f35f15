"""A worker SIGKILLed while it provisions: a new worker takes over and the pool converges within seconds
(the dead worker's unacknowledged tasks come back after the short broker visibility timeout), with 0
orphans at the fake provider, 0 ghosts, and no instance made twice (a redelivered create finds its resource
made: the instance id is the cloud's idempotency key). With two replicas the other worker keeps working."""
from __future__ import annotations

import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor

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
    times, work, boots, since_kill = [], Work(), [], []
    for i in range(ITERATIONS):
        target = 5 if i % 2 == 0 else 2
        resize(world, target)
        if target == 5:
            wait_for(lambda: provisioning(world.pool_id) >= 2, 10, "creates in flight")
        stack.kill("worker", signal.SIGKILL)
        stack.start_worker("worker")
        ended = time.monotonic()
        up = replacement_up(stack, "worker")
        # With two replicas the other worker recovers what the dead one held: timed from the kill. With one,
        # nothing can run until the replacement is up (its start took 2 s on a quiet machine, over 10 s on
        # a loaded one): timed from its first ping, and the time from the kill is reported beside it.
        ends = None if stack.replicas > 1 else (lambda: up.result(timeout=60))
        times.append(assert_converges(stack, own_redis.url, world, target, ended, f"convergence after SIGKILL #{i}",
                                      ends=ends))
        since_kill.append(time.monotonic() - ended)
        boots.append(up.result(timeout=60) - ended)
    work.take(own_redis.url, world)
    report("worker SIGKILL", stack, times, work)
    print(f"chaos worker SIGKILL replicas={stack.replicas}: converged {max(since_kill):.2f}s worst after the kill; "
          f"the replacement worker answered a ping {min(boots):.2f}-{max(boots):.2f}s after it was started "
          f"(timed {'from the kill' if stack.replicas > 1 else 'from that ping'})")


def replacement_up(stack, name: str) -> Future:
    """When the replacement worker first answers a ping (monotonic seconds), polled in the background."""
    from workers.celery_app import celery_app

    hostname = stack.hostnames[name]

    def poll() -> float:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if celery_app.control.ping(destination=[hostname], timeout=0.2):
                return time.monotonic()
        raise AssertionError(f"{hostname} never answered a ping")

    return ThreadPoolExecutor(1).submit(poll)
