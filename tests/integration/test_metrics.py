"""Metrics on real PostgreSQL and Redis: the per-pool gauges computed at scrape time, the lease histograms
and counters moving by exactly the calls made (by transport and outcome), and the applier's lag."""
from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app import events
from app.api.vmpool import LeaseService, ReservationWaiter
from app.api.vmpool_grpc import GrpcServer
from app.db import session_scope
from app.domain import effects, leases, reservations
from app.domain.errors import DomainError
from app.metrics_collector import PoolCollector, applier_lag
from app.models import Pool, utcnow
from config.settings import get_settings
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2_grpc as pb_grpc
from tests.conftest import make_catalog, make_org, token_for
from tests.leasing import add_ready, make_pool

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def series(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.MULTILINE)}


@pytest.fixture
def client(db, redis_client, effects_log):
    from app.main import create_app

    with TestClient(create_app(dispatcher=False), raise_server_exceptions=False) as c:
        yield c


def scrape(client: TestClient, token: str) -> dict[str, float]:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return series(r.text)


# ---- pool gauges ----------------------------------------------------------------------------------

def test_pool_gauges_come_from_the_database_at_scrape_time(client):
    acme, globex = make_org("acme"), make_org("globex")
    pool = make_pool(acme.org_id, "web")
    with session_scope() as s:  # a reservation queued 40 s ago, while the pool was empty
        leases.lease(acme.org_id, "web", reservation_id="r-old", session=s, now=utcnow() - timedelta(seconds=40))
    add_ready(pool, 2)
    with session_scope() as s:  # the applier's counters and the autoscaler's target
        s.execute(sa.update(Pool).where(Pool.id == pool.id).values(
            leased_instances=3, stopped_instances=4, desired_size=5, phase="degraded"))
    other = make_pool(globex.org_id, "other")
    add_ready(other, 1)
    everything = token_for(acme, "metrics")
    got = scrape(client, everything)
    web = '{organization="acme",pool="web"}'
    assert got["warmpool_pool_ready_instances" + web] == 2
    assert got["warmpool_pool_leased_instances" + web] == 3
    assert got["warmpool_pool_stopped_instances" + web] == 4
    assert got["warmpool_pool_desired_instances" + web] == 5
    assert got["warmpool_pool_waiting_reservations" + web] == 1
    assert 40 <= got["warmpool_pool_oldest_reservation_age_seconds" + web] < 600
    assert got['warmpool_pool_phase{organization="acme",phase="degraded",pool="web"}'] == 1
    assert not [k for k in got if k.startswith("warmpool_pool_phase") and 'pool="web"' in k and "degraded" not in k]
    assert got['warmpool_pool_ready_instances{organization="globex",pool="other"}'] == 1
    assert got['warmpool_pool_phase{organization="globex",phase="pending",pool="other"}'] == 1
    assert got['warmpool_pool_oldest_reservation_age_seconds{organization="globex",pool="other"}'] == 0
    assert got['warmpool_collector_up{collector="pools"}'] == 1
    assert got['warmpool_collector_up{collector="events"}'] == 1

    # A lease is seen by the next scrape, with nothing cleared or re-set in between.
    with session_scope() as s:
        leases.lease(acme.org_id, "web", session=s)
    assert scrape(client, everything)["warmpool_pool_ready_instances" + web] == 1

    # A tenant sees its own pools only, and none of the operator's series.
    mine = scrape(client, acme.token)
    assert mine["warmpool_pool_ready_instances" + web] == 1
    assert not [k for k in mine if "globex" in k or k.startswith("warmpool_events_") or "_bucket" in k]


def test_pool_gauges_on_both_backends(any_org):
    pool = make_pool(any_org.org_id, "web")
    with session_scope() as s:
        leases.lease(any_org.org_id, "web", reservation_id="r-old", session=s, now=utcnow() - timedelta(seconds=40))
    add_ready(pool, 2)
    got = series(PoolCollector(any_org.org_id).render())
    web = '{organization="acme",pool="web"}'
    assert (got["warmpool_pool_ready_instances" + web], got["warmpool_pool_waiting_reservations" + web]) == (2, 1)
    assert 40 <= got["warmpool_pool_oldest_reservation_age_seconds" + web] < 600
    assert got['warmpool_pools{organization="acme",phase="pending"}'] == 1


def test_label_values_are_escaped_in_the_text_format(client):
    acme = make_org('ac"me\\')
    make_pool(acme.org_id, 'we"b\\x')
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token_for(acme, 'metrics')}"})
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    [sample] = families["warmpool_pool_ready_instances"].samples
    assert sample.labels == {"organization": 'ac"me\\', "pool": 'we"b\\x'}


def test_a_collector_that_fails_costs_its_own_series_only(client, monkeypatch):
    acme = make_org("acme")
    add_ready(make_pool(acme.org_id, "web"), 1)
    monkeypatch.setenv("WARMPOOL_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    get_settings.cache_clear()
    got = scrape(client, token_for(acme, "metrics"))
    assert got['warmpool_collector_up{collector="events"}'] == 0
    assert not [k for k in got if k.startswith("warmpool_events_")]
    assert got['warmpool_pool_ready_instances{organization="acme",pool="web"}'] == 1


# ---- lease histograms and counters ----------------------------------------------------------------

def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


WATCHED = [
    ("warmpool_leases_total", {"transport": t, "how": h}) for t in ("connect", "grpc") for h in ("warm", "cold", "reserved")
] + [
    ("warmpool_lease_seconds_count", {"transport": t, "outcome": o})
    for t in ("connect", "grpc") for o in ("warm", "cold", "reserved", "rejected", "unavailable", "error")
] + [
    ("warmpool_pool_exhausted_total", {"transport": t}) for t in ("connect", "grpc")
] + [
    ("warmpool_reservation_wait_seconds_count", {"transport": "connect", "served": s}) for s in ("true", "false")
]


def snapshot() -> dict[tuple[str, tuple], float]:
    return {(name, tuple(sorted(labels.items()))): sample(name, **labels) for name, labels in WATCHED}


def moved(before: dict) -> dict[str, float]:
    """Every watched series that changed, as 'name{k=v,...}': delta."""
    out = {}
    for key, value in snapshot().items():
        if value != before[key]:
            name, labels = key
            out[name + "{" + ",".join(f"{k}={v}" for k, v in labels) + "}"] = value - before[key]
    return out


@pytest.fixture
def pushed(redis_client):
    """Effects after commit: `notify` goes to the real Redis (it wakes waiting calls); the rest is dropped."""
    def dispatch(name: str, payload: dict) -> None:
        if name == "notify":
            events.notify(payload["channel"], payload.get("message", ""))

    previous = effects.set_dispatcher(dispatch)
    yield
    effects.set_dispatcher(previous)


@pytest.fixture
def service(db, pushed):
    svc = LeaseService(waiter=ReservationWaiter())
    assert svc.waiter.wait_ready(5), "the reservation listener did not subscribe"
    yield svc
    svc.waiter.close()
    svc.executor.shutdown(wait=False)


def call(svc: LeaseService, token: str, remaining: float = 10.0, **fields) -> pb.LeaseResponse | DomainError:
    try:
        return asyncio.run(svc.lease(f"Bearer {token}", pb.LeaseRequest(**fields), remaining))
    except DomainError as exc:
        return exc


def test_each_lease_call_is_counted_once_by_outcome(service):
    world = make_catalog(make_org("acme"))
    add_ready(make_pool(world.org_id, "warm"), 2)
    make_pool(world.org_id, "full", empty_policy="reject")
    make_pool(world.org_id, "cold", empty_policy="cold", runner_id=world.runner_id, max_size=5)
    queue = make_pool(world.org_id, "queue")

    before = snapshot()
    assert isinstance(call(service, world.token, pool="warm"), pb.LeaseResponse)
    assert isinstance(call(service, world.token, pool="warm"), pb.LeaseResponse)
    assert moved(before) == {"warmpool_leases_total{how=warm,transport=connect}": 2,
                             "warmpool_lease_seconds_count{outcome=warm,transport=connect}": 2}

    before = snapshot()
    assert call(service, world.token, pool="full").code == "resource_exhausted"
    assert call(service, world.token, pool="nosuch").code == "not_found"
    assert isinstance(call(service, world.token, pool="cold"), pb.LeaseResponse)
    assert moved(before) == {"warmpool_lease_seconds_count{outcome=rejected,transport=connect}": 1,
                             "warmpool_lease_seconds_count{outcome=error,transport=connect}": 1,
                             "warmpool_leases_total{how=cold,transport=connect}": 1,
                             "warmpool_lease_seconds_count{outcome=cold,transport=connect}": 1,
                             "warmpool_pool_exhausted_total{transport=connect}": 2}

    # A named reservation waits past the call's deadline: unavailable, and its wait was not served.
    before = snapshot()
    assert call(service, world.token, remaining=0.3, pool="queue", reservation_id="r1").code == "unavailable"
    assert moved(before) == {"warmpool_lease_seconds_count{outcome=unavailable,transport=connect}": 1,
                             "warmpool_pool_exhausted_total{transport=connect}": 1,
                             "warmpool_reservation_wait_seconds_count{served=false,transport=connect}": 1}

    # Served while nobody waited: the next call with the same id gets it, through its reservation.
    [iid] = add_ready(queue, 1)
    with session_scope() as s:
        assert reservations.assign_ready_instance(iid, session=s)
    before = snapshot()
    assert call(service, world.token, pool="queue", reservation_id="r1").lease.instance == iid
    assert moved(before) == {"warmpool_leases_total{how=reserved,transport=connect}": 1,
                             "warmpool_lease_seconds_count{outcome=reserved,transport=connect}": 1}


def test_a_call_woken_from_its_reservation_counts_as_reserved_with_its_wait(service):
    world = make_org("acme")
    pool = make_pool(world.org_id, "queue")
    before = snapshot()
    out: dict = {}
    waiting = threading.Thread(target=lambda: out.update(r=call(service, world.token, remaining=30, pool="queue")))
    waiting.start()
    deadline = time.monotonic() + 10
    while not _waiting(pool.id):
        assert time.monotonic() < deadline, "the call never queued"
        time.sleep(0.01)
    [iid] = add_ready(pool, 1)
    with session_scope() as s:
        assert reservations.assign_ready_instance(iid, session=s)
    waiting.join(30)
    assert out["r"].lease.instance == iid
    assert moved(before) == {"warmpool_leases_total{how=reserved,transport=connect}": 1,
                             "warmpool_lease_seconds_count{outcome=reserved,transport=connect}": 1,
                             "warmpool_pool_exhausted_total{transport=connect}": 1,
                             "warmpool_reservation_wait_seconds_count{served=true,transport=connect}": 1}


def _waiting(pool_id: str) -> bool:
    with session_scope() as s:
        return bool(reservations.list_waiting(pool_id, session=s))


def test_grpc_lease_calls_are_counted_under_grpc(db, pushed):
    world = make_org("acme")
    add_ready(make_pool(world.org_id, "warm"), 1)
    make_pool(world.org_id, "full", empty_policy="reject")
    server = GrpcServer("127.0.0.1", 0, service=LeaseService())
    port = server.start()
    before = snapshot()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.VMPoolLeaseServiceStub(channel)
            auth = (("authorization", f"Bearer {world.token}"),)
            assert stub.Lease(pb.LeaseRequest(pool="warm"), metadata=auth, timeout=10).lease.instance
            with pytest.raises(grpc.RpcError) as err:
                stub.Lease(pb.LeaseRequest(pool="full"), metadata=auth, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop()
    assert moved(before) == {"warmpool_leases_total{how=warm,transport=grpc}": 1,
                             "warmpool_lease_seconds_count{outcome=warm,transport=grpc}": 1,
                             "warmpool_lease_seconds_count{outcome=rejected,transport=grpc}": 1,
                             "warmpool_pool_exhausted_total{transport=grpc}": 1}


# ---- applier lag ----------------------------------------------------------------------------------

def test_applier_lag_counts_pending_undelivered_and_dead_letters(settings_env, redis_client):
    e = get_settings().engine
    stream, group = e.events_stream, e.events_group
    assert applier_lag(redis_client) == {"stream_length": 0, "dead_letters": 0, "pending": 0, "undelivered": 0,
                                         "oldest_unacknowledged_age_seconds": 0}
    t0 = int(time.time() * 1000) - 60_000  # entries stamped a minute ago
    for i in range(5):
        redis_client.xadd(stream, {"n": i}, id=f"{t0 + i}-0")
    redis_client.xgroup_create(stream, group, id="0")
    [(_, read)] = redis_client.xreadgroup(group, "applier-1", {stream: ">"}, count=3)
    redis_client.xack(stream, group, read[0][0])  # 1 applied, 2 pending, 2 undelivered
    redis_client.xadd(f"{stream}:dead", {"reason": "poison"})
    lag = applier_lag(redis_client)
    assert {k: lag[k] for k in ("stream_length", "pending", "undelivered", "dead_letters")} == {
        "stream_length": 5, "pending": 2, "undelivered": 2, "dead_letters": 1}
    assert 59 <= lag["oldest_unacknowledged_age_seconds"] < 600  # the oldest pending entry, t0 + 1
    redis_client.xack(stream, group, *[entry_id for entry_id, _ in read])
    [(_, rest)] = redis_client.xreadgroup(group, "applier-1", {stream: ">"})
    redis_client.xack(stream, group, *[entry_id for entry_id, _ in rest])
    lag = applier_lag(redis_client)
    assert (lag["pending"], lag["undelivered"], lag["oldest_unacknowledged_age_seconds"]) == (0, 0, 0)
