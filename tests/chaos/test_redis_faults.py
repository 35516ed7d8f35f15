"""Redis faults under load, with real processes: FLUSHALL while pools fill and leases are active, and
redis-server SIGKILLed and restarted under a busy worker. After each, within 10 s: the pool at its target,
0 orphans at the fake provider, 0 ghosts, 0 active leases on lost instances, 0 instances leased twice."""
from __future__ import annotations

import time

import redis

from tests.chaos.conftest import ITERATIONS, LEASE_ERRORS, assert_converges, lease, make_world, report, resize


def test_flushall_while_pools_fill_and_leases_are_active(stack, own_redis):
    world = make_world(4)
    assert_converges(stack, own_redis.url, world, 4, time.monotonic(), "the pool to fill first")
    client = redis.Redis.from_url(own_redis.url)
    times = []
    for i in range(ITERATIONS):
        target = 4 if i % 2 else 6
        resize(world, target)  # filling: creates in flight when the flush comes
        leased = [lease(stack, world) for _ in range(2)]
        assert any(leased), f"no lease granted before the fault: {LEASE_ERRORS[-2:]}\n{stack.log('api')}"
        client.flushall()
        ended = time.monotonic()
        times.append(assert_converges(stack, own_redis.url, world, target, ended, f"convergence after FLUSHALL #{i}"))
        for name in ("events", "worker", "beat", "api", "observe"):
            assert stack.alive(name), f"{name} died after FLUSHALL #{i}:\n{stack.log(name)}"
    report("FLUSHALL", times)


def test_redis_killed_and_restarted_under_a_busy_worker(stack, own_redis):
    world = make_world(4)
    assert_converges(stack, own_redis.url, world, 4, time.monotonic(), "the pool to fill first")
    times = []
    for i in range(ITERATIONS):
        target = 8 if i % 2 == 0 else 4
        resize(world, target)  # the worker is busy creating (or deleting) when Redis dies
        lease(stack, world)
        own_redis.kill9()
        own_redis.start()  # same port, empty: a restart without persistence
        ended = time.monotonic()
        times.append(assert_converges(stack, own_redis.url, world, target, ended, f"convergence after restart #{i}"))
        for name in ("events", "worker", "beat", "api", "observe"):
            assert stack.alive(name), f"{name} died after redis restart #{i}:\n{stack.log(name)}"
    report("redis kill -9 + restart", times)
