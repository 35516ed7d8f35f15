"""Clock-free event order (issue 11): sequence numbers are issued by the database, so publishers whose
clocks disagree by ±10 minutes still have their observations applied in the order they were made, and
the applier never reads a clock to order them. On both backends."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from app import events
from app.db import session_scope
from app.domain import instances, pools
from app.models import Instance
from config.settings import get_settings
from tests.conftest import make_catalog
from workers.events import Applier
from workers.observer import RunnerObserver
from workers.providers.base import Observed, Sighting

TEN_MINUTES = 600.0


@pytest.fixture
def stream(backend, any_org, redis_url, monkeypatch):
    monkeypatch.setenv("WARMPOOL_REDIS_URL", redis_url)
    get_settings.cache_clear()
    client = redis.Redis.from_url(redis_url)
    client.delete(get_settings().engine.events_stream)
    w = make_catalog(any_org)
    with session_scope() as s:
        pool = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=1, max_size=1, session=s)
        ids = []
        for _ in range(2):
            inst = Instance(pool_id=pool.id, organization_id=w.org_id, state="running", provider_ref="r",
                            event_seq=1, op_seq=1)
            s.add(inst)
            ids.append(inst.id)
    yield client, pool.id, ids
    client.close()


class Skewed:
    """A publisher whose clock is `offset` seconds off: time.time and time.time_ns lie while it publishes."""

    def __init__(self, monkeypatch, offset: float, pool_id: str) -> None:
        self.monkeypatch, self.offset, self.sent = monkeypatch, offset, []
        self.observer = RunnerObserver("runner", provider=None, owner="warmpool", publish=self.sent.append)  # type: ignore[arg-type]
        self.pool_id = pool_id

    def saw(self, instance_id: str, state: str) -> events.InstanceEvent:
        real_time, real_ns = time.time, time.time_ns
        self.monkeypatch.setattr(time, "time", lambda: real_time() + self.offset)
        self.monkeypatch.setattr(time, "time_ns", lambda: real_ns() + int(self.offset * 1e9))
        try:
            self.observer.pump(Sighting([Observed(ref=f"ref-{instance_id}", state=state, instance_id=instance_id,
                                                  pool_id=self.pool_id)]))
        finally:
            self.monkeypatch.setattr(time, "time", real_time)
            self.monkeypatch.setattr(time, "time_ns", real_ns)
        return self.sent[-1]


def apply(client, evs: list[events.InstanceEvent], monkeypatch) -> str:
    for ev in evs:
        events.publish(ev, client=client)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 86400)  # the applier's own clock is a day off too
    try:
        Applier(client=client, consumer="a").poll(block_ms=10, count=100)
    finally:
        monkeypatch.setattr(time, "time", real_time)


def state(instance_id: str) -> str:
    with session_scope() as s:
        return s.get(Instance, instance_id).state


def test_publishers_with_skewed_clocks_still_apply_in_order(stream, monkeypatch):
    client, pool_id, (first, second) = stream
    ahead, behind = Skewed(monkeypatch, +TEN_MINUTES, pool_id), Skewed(monkeypatch, -TEN_MINUTES, pool_id)
    # The fast clock sees the stop begin; the slow clock then sees it stopped, then started again.
    seen = [ahead.saw(first, "stopping"), behind.saw(first, "stopped"), behind.saw(first, "starting")]
    assert [e.seq for e in seen] == sorted(e.seq for e in seen) and len({e.seq for e in seen}) == 3
    assert seen[0].observed_at > seen[2].observed_at + 1000  # by their clocks, the first came 20 minutes later
    apply(client, seen, monkeypatch)
    assert state(first) == "starting"  # by wall clock, "stopping" would have won and "starting" been dropped

    # Delivered out of order (several appliers, a redelivery): the newest still wins, the older ones change nothing.
    late = [ahead.saw(second, "stopping"), behind.saw(second, "stopped"), behind.saw(second, "starting")]
    apply(client, [late[2], late[0], late[1]], monkeypatch)
    assert state(second) == "starting"


def test_sequence_numbers_are_distinct_and_increasing_under_concurrency(stream):
    _, _, (instance_id, _) = stream

    def take(_: int) -> list[int]:
        out = []
        for _ in range(20):
            with session_scope() as s:
                out.append(instances.issue_seq(instance_id, session=s))
        return out

    with ThreadPoolExecutor(6) as pool:
        runs = list(pool.map(take, range(6)))
    numbers = [n for run in runs for n in run]
    assert len(set(numbers)) == 120 and all(run == sorted(run) for run in runs)
    with session_scope() as s:
        assert s.get(Instance, instance_id).op_seq == 1 + 120  # checked in the database, not only by the callers
