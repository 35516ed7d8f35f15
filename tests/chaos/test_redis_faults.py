"""Redis faults under load, with real processes: FLUSHALL while pools fill and leases are active, and
redis-server SIGKILLed and restarted under a busy worker. After each, within 10 s: the pool at its target,
0 orphans at the fake provider, 0 ghosts, 0 active leases on lost instances, 0 instances leased twice; and
over the whole test no instance made twice by the fake cloud. Each runs with one and two replicas."""
from __future__ import annotations

import time

import redis

from tests.chaos.conftest import (
    ITERATIONS, LEASE_ERRORS, Work, assert_converges, lease, make_world, provider_work, report, resize, runner_epoch,
    wait_for,
)


def test_flushall_while_pools_fill_and_leases_are_active(stack, own_redis):
    world = make_world(4)
    assert_converges(stack, own_redis.url, world, 4, time.monotonic(), "the pool to fill first")
    client = redis.Redis.from_url(own_redis.url)
    times, work, handed_out_after_loss = [], Work(), 0
    for i in range(ITERATIONS):
        target = 4 if i % 2 else 6
        resize(world, target)  # filling: creates in flight when the flush comes
        leased = [lease(stack, world) for _ in range(2)]
        assert any(leased), f"no lease granted before the fault: {LEASE_ERRORS[-2:]}{stack.logs('api')}"
        work.take(own_redis.url, world)  # the flush loses the cloud and its counts: read them first
        before = runner_epoch(world)
        client.flushall()
        ended = time.monotonic()
        # Once the engine knows of the loss (the applier began a new epoch), Lease hands out only instances
        # seen running since: here, instances the new cloud made, never one the flush took away.
        wait_for(lambda: runner_epoch(world) > before, 5, "the applier to notice the lost stream")
        after = [i for i in (lease(stack, world, timeout_ms=500) for _ in range(2)) if i]
        times.append(assert_converges(stack, own_redis.url, world, target, ended, f"convergence after FLUSHALL #{i}"))
        made_since = provider_work(own_redis.url, world)
        assert set(after) <= set(made_since), f"handed out after the flush, not made since: {set(after) - set(made_since)}"
        handed_out_after_loss += len(after)
        assert not stack.dead(), f"died after FLUSHALL #{i}: {stack.dead()}{stack.logs(*stack.dead())}"
    work.take(own_redis.url, world)
    report("FLUSHALL", stack, times, work)
    print(f"chaos FLUSHALL replicas={stack.replicas}: {handed_out_after_loss} leases granted right after the loss, "
          "each of an instance made since")


def test_redis_killed_and_restarted_under_a_busy_worker(stack, own_redis):
    world = make_world(4)
    assert_converges(stack, own_redis.url, world, 4, time.monotonic(), "the pool to fill first")
    times, work = [], Work()
    for i in range(ITERATIONS):
        target = 8 if i % 2 == 0 else 4
        resize(world, target)  # the worker is busy creating (or deleting) when Redis dies
        lease(stack, world)
        work.take(own_redis.url, world)
        own_redis.kill9()
        own_redis.start()  # same port, empty: a restart without persistence
        ended = time.monotonic()
        times.append(assert_converges(stack, own_redis.url, world, target, ended, f"convergence after restart #{i}"))
        assert not stack.dead(), f"died after redis restart #{i}: {stack.dead()}{stack.logs(*stack.dead())}"
    work.take(own_redis.url, world)
    report("redis kill -9 + restart", stack, times, work)
