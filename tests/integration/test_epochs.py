"""An instance that the engine has not seen running since the last Redis loss or re-list is never handed out
(app.domain.epochs), checked through the wire: the Lease RPC over Connect, on both backends, with the
database (not the answers) as the judge. A new epoch is begun the way the applier begins it after losing
the event stream; instances come back with the events the observer's re-list publishes."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app import events as ev
from app.db import session_scope
from app.domain import epochs, instances
from app.models import Instance, Lease
from tests.conftest import World, make_catalog
from tests.leasing import add_ready, make_pool

LEASE = "/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Lease"


@pytest.fixture
def lease_client(any_org: World) -> Iterator[tuple[TestClient, World]]:
    from app.main import create_app

    world = make_catalog(any_org)
    with TestClient(create_app(dispatcher=False), raise_server_exceptions=False) as client:
        yield client, world


def lease(client: TestClient, world: World, pool: str) -> tuple[int, dict]:
    r = client.post(LEASE, json={"pool": pool, "serviceTag": "svc"},
                    headers={"authorization": f"Bearer {world.token}", "connect-timeout-ms": "5000"})
    return r.status_code, r.json()


def active_on(instance_ids: list[str]) -> set[str]:
    with session_scope() as s:
        return set(s.execute(sa.select(Lease.instance_id).where(Lease.instance_id.in_(instance_ids),
                                                                Lease.state == "active")).scalars())


def new_epoch() -> None:
    """What the applier does when it finds the event stream lost (workers.events.Applier.new_epochs)."""
    with session_scope() as s:
        epochs.bump_all(session=s)


def apply(event: ev.InstanceEvent) -> bool:
    with session_scope() as s:
        return instances.apply_event(event, session=s)


def current_epoch(runner_id: str) -> int:
    with session_scope() as s:
        return epochs.current(runner_id, session=s)


def test_after_a_loss_only_instances_seen_running_again_are_leased(lease_client):
    client, world = lease_client
    pool = make_pool(world.org_id, "epochs", runner_id=world.runner_id, empty_policy="reject")
    a, b, c = add_ready(pool, 3)

    status, body = lease(client, world, "epochs")
    assert status == 200 and body["lease"]["instance"] == a  # before any loss: running is enough

    new_epoch()  # Redis lost the event stream: b and c may have crashed with nobody told
    status, body = lease(client, world, "epochs")
    assert status == 429 and body["code"] == "resource_exhausted", body
    assert active_on([b, c]) == set()

    epoch = current_epoch(world.runner_id)
    stale = ev.InstanceEvent(instance_id=b, pool_id=pool.id, kind=ev.KIND_SEEN, epoch=epoch - 1)
    assert not apply(stale)  # seen before the loss: not good enough
    assert lease(client, world, "epochs")[0] == 429

    assert apply(ev.InstanceEvent(instance_id=c, pool_id=pool.id, kind=ev.KIND_SEEN, epoch=epoch))
    status, body = lease(client, world, "epochs")
    assert status == 200 and body["lease"]["instance"] == c
    assert lease(client, world, "epochs")[0] == 429  # b was never seen again
    assert active_on([a, b, c]) == {a, c}


def test_an_instance_becoming_running_carries_the_epoch_it_was_observed_in(lease_client):
    client, world = lease_client
    pool = make_pool(world.org_id, "booting", runner_id=world.runner_id, empty_policy="reject")
    with session_scope() as s:
        rows = [Instance(pool_id=pool.id, organization_id=pool.organization_id, provider="fake",
                         state="provisioning", provider_ref=f"fake-{n}") for n in range(3)]
        s.add_all(rows)
        s.flush()
        old, fresh, by_task = [r.id for r in rows]
    new_epoch()
    epoch = current_epoch(world.runner_id)

    def running(instance_id: str, seq: int, epoch: int | None) -> ev.InstanceEvent:
        return ev.InstanceEvent(instance_id=instance_id, pool_id=pool.id, state="running", seq=seq, epoch=epoch)

    assert apply(running(old, 5, epoch - 1))  # an observer stream from before the loss: running, not claimable
    assert lease(client, world, "booting")[0] == 429
    assert apply(running(fresh, 5, epoch))  # the re-listing stream's observation
    assert apply(running(by_task, 5, None))  # a provider task's own answer, just now: the current epoch
    got = {lease(client, world, "booting")[1]["lease"]["instance"] for _ in range(2)}
    assert got == {fresh, by_task}
    assert lease(client, world, "booting")[0] == 429
    # Seen running again by the re-listing stream: no state change, yet it may be handed out now.
    assert not apply(running(old, 6, epoch))
    assert lease(client, world, "booting")[1]["lease"]["instance"] == old
    assert active_on([old, fresh, by_task]) == {old, fresh, by_task}


def test_a_pool_without_a_runner_is_not_held_back(lease_client):
    client, world = lease_client
    pool = make_pool(world.org_id, "loose", empty_policy="reject")
    (only,) = add_ready(pool, 1)
    new_epoch()
    status, body = lease(client, world, "loose")
    assert status == 200 and body["lease"]["instance"] == only, body


@pytest.mark.redis
def test_the_applier_begins_a_new_epoch_when_it_finds_the_stream_lost(db, redis_client, effects_log):
    from tests.conftest import make_org
    from workers.events import Applier

    world = make_catalog(make_org())
    before = current_epoch(world.runner_id)
    applier = Applier(consumer="epochs").start()
    try:
        redis_client.flushdb()  # under its blocked read: UNBLOCKED, or NOGROUP on the next one
        deadline = time.monotonic() + 10
        while current_epoch(world.runner_id) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert current_epoch(world.runner_id) == before + 1
        assert applier._thread.is_alive()
    finally:
        applier.stop()
