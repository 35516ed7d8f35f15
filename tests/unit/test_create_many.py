"""Provider.create_many: the default runs creates concurrently (never one blocking call after another) and
returns each create's result or error in order; the fake cloud's batch endpoint makes a batch in one call,
idempotent per instance id like `create`."""
from __future__ import annotations

import threading
import time
from typing import Any

import fakeredis

from workers.providers.base import InstanceSpec, Observed, Provider, ProviderPermanent, ProviderTransient
from workers.providers.fake import FakeCloud, FakeProvider

FAST = {"boot_ms": 0, "start_ms": 0, "stop_ms": 0, "delete_ms": 0, "snapshot_ms": 0}


def spec(i: int) -> InstanceSpec:
    return InstanceSpec(instance_id=f"i{i}", pool_id="p", owner="warmpool")


class SlowCloud(Provider):
    """A provider whose create blocks 50 ms (a platform's round trip) and counts the calls in flight."""

    name = "slow"

    def __init__(self) -> None:
        super().__init__({})
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0

    def create(self, spec: InstanceSpec, start: bool) -> Observed:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(0.05)
            if spec.instance_id == "i3":
                raise ProviderTransient("rate limited", retry_after=1.0)
            if spec.instance_id == "i4":
                raise ProviderPermanent("no such image")
            return Observed(ref=f"r-{spec.instance_id}", state="provisioning", instance_id=spec.instance_id)
        finally:
            with self.lock:
                self.in_flight -= 1

    def start(self, ref: str) -> Observed: raise NotImplementedError
    def stop(self, ref: str) -> Observed: raise NotImplementedError
    def delete(self, ref: str) -> None: raise NotImplementedError
    def get(self, ref: str) -> Observed | None: return None
    def list(self, owner_tag: str | None = None) -> list[Any]: return []
    def logs(self, ref: str, lines: int = 100) -> str: return ""


def test_the_default_create_many_has_its_creates_in_flight_together_and_keeps_their_order():
    p = SlowCloud()
    results = p.create_many([spec(i) for i in range(32)], start=True)
    assert p.peak == p.create_concurrency  # 16 creates in flight at once, not one after another
    assert [getattr(r, "instance_id", None) for r in results] == [f"i{i}" if i not in (3, 4) else None for i in range(32)]
    assert isinstance(results[3], ProviderTransient) and isinstance(results[4], ProviderPermanent)


def test_the_fake_clouds_batch_endpoint_is_one_call_and_idempotent_per_instance():
    client = fakeredis.FakeRedis()
    p = FakeProvider(FAST, client=client)
    cloud = FakeCloud(client)
    first = p.create_many([spec(i) for i in range(50)] + [spec(7)], start=True)  # i7 twice: one resource
    assert cloud.batches("create") == [51]
    assert len(cloud.all()) == 50 and first[7].ref == first[50].ref
    assert {o.state for o in first} == {"provisioning"}
    again = p.create_many([spec(i) for i in range(60)], start=True)  # a retried batch, ten new
    assert len(cloud.all()) == 60 and [o.ref for o in again[:50]] == [o.ref for o in first[:50]]
    assert {p.get(o.ref).state for o in again} == {"running"}  # 0 ms boots: due at once
