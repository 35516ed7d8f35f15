"""The fake cloud on fakeredis: idempotent, tagged, deterministic failures under a seed, shared config."""
from __future__ import annotations

import json
import threading
import time

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
    assert (a.instance_id, a.pool_id, a.owner, a.state) == ("inst-1", "pool-1", "warmpool", "provisioning")
    assert p.get(a.ref).state == "running"  # 0 ms boot: due at once, moved by the next look
    assert p.list(owner_tag="someone-else") == []


def test_lifecycle_stop_start_delete(client):
    p = FakeProvider(FAST, client=client)
    ref = p.create(spec(), start=False).ref
    assert p.get(ref).state == "stopped"
    assert p.start(ref).state == "starting" and p.get(ref).state == "running"
    assert p.stop(ref).state == "stopping" and p.get(ref).state == "stopped"
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
    assert a.create(spec(), start=True).state == "provisioning"


def test_snapshot_and_leak(client):
    p = FakeProvider(FAST, client=client)
    ref = p.create(spec(), start=True).ref
    assert p.snapshot(ref, "x").startswith("fake-snap-")
    leaked = FakeCloud(client).leak("ghost", "pool-1", "warmpool")
    assert {o.ref for o in p.list("warmpool")} == {ref, leaked}


def test_calls_return_at_once_and_the_cloud_boots_after_boot_ms(client):
    p = FakeProvider({**FAST, "boot_ms": 300, "start_ms": 300, "stop_ms": 300}, client=client)
    before = time.time()
    obs = p.create(spec(), start=True)
    assert obs.state == "provisioning"  # no boot inside the call: it returns before the boot, whatever the load
    assert p.get(obs.ref).state == "provisioning"
    due = FakeCloud(client).next_due() / 1000
    assert due >= before + 0.299  # boot_ms after the call (the cloud's clock has millisecond steps)
    while time.time() < due + 2 and p.get(obs.ref).state != "running":
        time.sleep(0.02)
    running = p.get(obs.ref)
    assert running.state == "running" and running.address and time.time() >= due and running.boot_ms == 300
    assert p.start(obs.ref).state == "running"  # starting a running one changes nothing
    assert p.stop(obs.ref).state == "stopping"
    assert p.stop(obs.ref).state == "stopping"  # idempotent while on its way


def test_a_due_move_is_made_once_whoever_looks(client):
    p = FakeProvider(FAST, client=client)
    p.create(spec(), start=True)
    cloud = FakeCloud(client)
    assert cloud.advance() + cloud.advance() == 1
    states = [json.loads(f[b"record"])["state"] for _, f in client.xrange(cloud.changes) if f[b"record"]]
    assert states == ["provisioning", "running"]


def test_observe_follows_the_change_feed(client):
    p = FakeProvider({**FAST, "boot_ms": 100}, client=client)
    stop = threading.Event()
    before = p.create(spec("old"), start=True).ref
    stream = p.observe("warmpool", stop)
    first = next(stream)
    assert first.full and {o.ref for o in first.observed} == {before}
    ref = p.create(spec("new"), start=True).ref
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (ref, "running") not in seen:
        seen += [(o.ref, o.state) for o in next(stream).observed]
    assert (ref, "provisioning") in seen and (ref, "running") in seen
    p.delete(ref)
    while time.monotonic() < deadline and (ref, "deleted") not in seen:
        seen += [(o.ref, o.state) for o in next(stream).observed]
    assert (ref, "deleted") in seen
    stop.set()


def test_a_move_falling_due_never_brings_back_a_deleted_resource(client):
    # The race tests/integration/test_delete_inflight.py once lost: `advance` has read a booting record when a
    # delete drops it; the move to `running` must not store it again.
    p = FakeProvider(FAST, client=client)
    cloud = p.cloud
    ref = p.create(spec(), start=True).ref
    assert cloud.load(ref)["next"]["state"] == "running"
    read = cloud.r.hmget

    def read_then_deleted(*args, **kwargs):  # advance's read of the due records, then the delete lands
        found = read(*args, **kwargs)
        p.delete(ref)
        return found

    cloud.r.hmget = read_then_deleted
    assert cloud.advance() == 1  # the move was made, on a record that is gone
    cloud.r.hmget = read
    assert cloud.load(ref) is None and cloud.all() == {} and p.list() == []
    assert cloud.next_due() is None
    # A record still there is moved as before, with its feed entry.
    other = p.create(spec("inst-2"), start=True).ref
    assert p.get(other).state == "running"
