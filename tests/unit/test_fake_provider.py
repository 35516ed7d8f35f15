"""The fake cloud on fakeredis: idempotent, tagged, deterministic failures under a seed, shared config."""
from __future__ import annotations

import fakeredis
import pytest

from workers.providers.base import InstanceSpec, ProviderPermanent, ProviderTransient
from workers.providers.fake import FakeCloud, FakeProvider

FAST = {"boot_ms": 0, "start_ms": 0, "stop_ms": 0, "delete_ms": 0, "snapshot_ms": 0}


@pytest.fixture
def client():
    return fakeredis.FakeRedis()


def spec(i: str = "inst-1") -> InstanceSpec:
    return InstanceSpec(instance_id=i, pool_id="pool-1", owner="warmpool", snapshot_id="snap-1")


def test_create_is_idempotent_and_tagged(client):
    p = FakeProvider(FAST, client=client)
    a = p.create(spec(), start=True)
    b = p.create(spec(), start=True)
    assert a.ref == b.ref and len(p.list()) == 1
    assert (a.instance_id, a.pool_id, a.owner, a.state) == ("inst-1", "pool-1", "warmpool", "running")
    assert p.list(owner_tag="someone-else") == []


def test_lifecycle_stop_start_delete(client):
    p = FakeProvider(FAST, client=client)
    ref = p.create(spec(), start=False).ref
    assert p.get(ref).state == "stopped"
    assert p.start(ref).state == "running"
    assert p.stop(ref).state == "stopped"
    p.delete(ref)
    p.delete(ref)  # deleting what is gone succeeds
    assert p.get(ref) is None
    with pytest.raises(ProviderPermanent):
        p.start(ref)


def test_failures_are_deterministic_under_a_seed(client):
    def outcomes(c):
        p = FakeProvider({**FAST, "fail_create": 0.5, "seed": 7}, client=c)
        out = []
        for i in range(20):
            try:
                p.create(spec(f"i{i}"), start=True)
                out.append(True)
            except ProviderTransient:
                out.append(False)
        return out

    first, second = outcomes(fakeredis.FakeRedis()), outcomes(fakeredis.FakeRedis())
    assert first == second and True in first and False in first


def test_live_configuration_reaches_every_adapter_and_can_be_permanent(client):
    a, b = FakeProvider(FAST, client=client), FakeProvider(FAST, client=client)
    FakeCloud(client).configure(fail_create=1, fail_create_permanent="true")
    with pytest.raises(ProviderPermanent):
        b.create(spec(), start=True)
    FakeCloud(client).reset_config()
    assert a.create(spec(), start=True).state == "running"


def test_snapshot_and_leak(client):
    p = FakeProvider(FAST, client=client)
    ref = p.create(spec(), start=True).ref
    assert p.snapshot(ref, "x").startswith("fake-snap-")
    leaked = FakeCloud(client).leak("ghost", "pool-1", "warmpool")
    assert {o.ref for o in p.list("warmpool")} == {ref, leaked}
