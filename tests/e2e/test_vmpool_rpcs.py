"""`warmpool api` as a real process, driven over gRPC by a stub generated from our .proto and over
Connect JSON by httpx: every RPC, the status of every bad request, the push wake-up of a waiting Lease."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import empty_pb2
from google.protobuf.json_format import MessageToDict, Parse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app import events
from app.db import session_scope
from app.domain import effects, reservations
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb, lease_api_pb2_grpc
from tests.e2e.conftest import ROOT, Server, free_port, stop, wait_healthy
from tests.leasing import add_ready, make_pool, reservation

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

SERVICE = "intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"
RESPONSES = {"Ping": pb.PingResponse, "Lease": pb.LeaseResponse, "Return": pb.ReturnResponse,
             "ExtendTo": pb.ExtendToResponse, "Pools": pb.PoolsResponse, "GetLease": pb.GetLeaseResponse}


class Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class LeaseServer(Server):
    grpc_port: int


@pytest.fixture(scope="module")
def lease_server(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeaseServer]:
    """`warmpool api` with HTTP and gRPC on known free ports, started the way a user starts it."""
    port, grpc_port = free_port(), free_port()
    tmp = tmp_path_factory.mktemp("lease-api")
    log = tmp / "api.log"
    env = dict(os.environ, WARMPOOL_ENV="test", WARMPOOL_DATABASE_URL=database_url, WARMPOOL_REDIS_URL=redis_url,
               WARMPOOL_DATA_DIR=str(tmp / "data"), WARMPOOL_GRPC_PORT=str(grpc_port), WARMPOOL_LOG_LEVEL="WARNING",
               WARMPOOL_AUTH_CACHE_SECONDS="0")
    exe = Path(sys.executable).with_name("warmpool")
    cmd = [str(exe if exe.exists() else ROOT / ".venv/bin/warmpool"), "api", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = LeaseServer(url=f"http://127.0.0.1:{port}", log=log)
    server.grpc_port = grpc_port
    try:
        wait_healthy(proc, server, timeout=30)
        yield server
    finally:
        stop(proc)
    # uvicorn re-raises SIGTERM after its graceful shutdown (which drains gRPC too): -15 is a clean stop.
    assert proc.returncode in (0, -signal.SIGTERM), f"warmpool api did not stop cleanly ({proc.returncode})"
    assert "Traceback" not in log.read_text(errors="replace"), server.log_tail()


class GrpcClient:
    def __init__(self, server: LeaseServer, token: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        self.stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(self.channel)
        self.token = token

    def call(self, rpc: str, req, *, token: str | None = "default", timeout: float = 10.0):
        token = self.token if token == "default" else token
        metadata = [("authorization", f"Bearer {token}")] if token else []
        try:
            return getattr(self.stub, rpc)(req, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise Failure(exc.code().name.lower(), exc.details() or "") from None


class ConnectJsonClient:
    def __init__(self, server: LeaseServer, token: str) -> None:
        self.http = httpx.Client(base_url=f"{server.api}/{SERVICE}", timeout=15)
        self.token = token

    def call(self, rpc: str, req, *, token: str | None = "default", timeout: float = 10.0):
        token = self.token if token == "default" else token
        body = req if isinstance(req, (bytes, str)) else json.dumps(MessageToDict(req))
        return self.post(rpc, body, token=token, timeout=timeout)

    def post(self, rpc: str, body, *, token: str | None = None, timeout: float = 10.0,
             content_type: str = "application/json"):
        headers = {"content-type": content_type, "connect-timeout-ms": str(int(timeout * 1000))}
        if token:
            headers["authorization"] = f"Bearer {token}"
        r = self.http.post(f"/{rpc}", content=body, headers=headers)
        if r.status_code != 200:
            err = r.json()
            raise Failure(err["code"], err.get("message", ""))
        return Parse(r.text, RESPONSES[rpc]())


@pytest.fixture(params=["grpc", "connect"])
def client(request, lease_server, org):
    return (GrpcClient if request.param == "grpc" else ConnectJsonClient)(lease_server, org.token)


def ts(dt: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromDatetime(dt)
    return t


def expect(code: str, fn, *args, **kw) -> Failure:
    with pytest.raises(Failure) as info:
        fn(*args, **kw)
    assert info.value.code == code, info.value
    return info.value


def test_every_rpc_round_trips(client, org):
    pool = make_pool(org.org_id, "vm-pool", labels={"tier": "gpu"}, lease_default_seconds=600, lease_max_seconds=3600)
    make_pool(org.org_id, "other-pool")
    [iid, _] = add_ready(pool, 2, zone="eu-west-1a")

    # Ping is open over both transports, like a health check.
    assert isinstance(client.call("Ping", empty_pb2.Empty(), token=None), pb.PingResponse)
    pools = client.call("Pools", pb.PoolsRequest())
    assert [(p.name, [(lb.key, lb.value) for lb in p.labels]) for p in pools.pools] == [
        ("other-pool", [("kind", "named")]), ("vm-pool", [("tier", "gpu"), ("kind", "named")])]

    before = datetime.now(UTC)
    got = client.call("Lease", pb.LeaseRequest(pool="vm-pool", service_tag="inctl",
                                               expires=ts(before + timedelta(days=2)))).lease
    assert (got.instance, got.pool, got.zone) == (iid, "vm-pool", "eu-west-1a")
    granted = got.expires.ToDatetime(tzinfo=UTC)
    assert before + timedelta(seconds=3590) < granted <= datetime.now(UTC) + timedelta(hours=1)  # clamped to max

    assert client.call("GetLease", pb.GetLeaseRequest(instance=iid)).lease == got
    short = client.call("ExtendTo", pb.ExtendToRequest(instance=iid, service_tag="inctl", to=ts(before + timedelta(minutes=5)),
                                                       extend_only=True)).lease
    assert short.expires == got.expires  # extend_only never shortens
    cut = client.call("ExtendTo", pb.ExtendToRequest(instance=iid, service_tag="inctl",
                                                     to=ts(before + timedelta(minutes=5)))).lease
    assert cut.expires.ToDatetime(tzinfo=UTC) == before + timedelta(minutes=5)
    expect("permission_denied", client.call, "Return", pb.ReturnRequest(instance=iid, service_tag="someone-else"))
    assert client.call("Return", pb.ReturnRequest(instance=iid, service_tag="inctl")) == pb.ReturnResponse()
    e = expect("failed_precondition", client.call, "Return", pb.ReturnRequest(instance=iid, service_tag="inctl"))
    assert "already ended" in e.message
    expect("failed_precondition", client.call, "GetLease", pb.GetLeaseRequest(instance=iid))

    # An unset expiry gets the pool's default; a zero one (inctl's "no duration") too.
    for expires in (None, ts(datetime(1, 1, 1, tzinfo=UTC))):
        req = pb.LeaseRequest(pool="vm-pool", service_tag="inctl", reservation_id="b0a3e3c8-2d5b-4b6a-9f57-3b1f0a1c2d3e")
        if expires is not None:
            req.expires.CopyFrom(expires)
        dflt = client.call("Lease", req).lease
        left = dflt.expires.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
        assert timedelta(seconds=590) < left <= timedelta(seconds=600)
    # The second call named the same (served) reservation: the same lease came back.
    assert client.call("GetLease", pb.GetLeaseRequest(instance=dflt.instance)).lease == dflt


def test_bad_requests_get_the_right_status(client, org):
    pool = make_pool(org.org_id, "vm-pool")
    make_pool(org.org_id, "strict", empty_policy="reject")
    [iid] = add_ready(pool)
    expect("unauthenticated", client.call, "Pools", pb.PoolsRequest(), token=None)
    expect("unauthenticated", client.call, "Lease", pb.LeaseRequest(), token="wp_not-a-token")
    expect("not_found", client.call, "Lease", pb.LeaseRequest(pool="no-such-pool"))
    expect("not_found", client.call, "GetLease", pb.GetLeaseRequest(instance="00000000-0000-0000-0000-000000000000"))
    expect("invalid_argument", client.call, "GetLease", pb.GetLeaseRequest())
    expect("invalid_argument", client.call, "Return", pb.ReturnRequest(service_tag="x"))
    expect("invalid_argument", client.call, "Lease", pb.LeaseRequest(pool="vm-pool", reservation_id=""))
    expect("invalid_argument", client.call, "Lease", pb.LeaseRequest(pool="p" * 201))
    expect("invalid_argument", client.call, "Lease", pb.LeaseRequest(pool="vm-pool", reservation_id="r" * 65))
    e = expect("resource_exhausted", client.call, "Lease", pb.LeaseRequest(pool="strict"))
    assert "reject" in e.message
    client.call("Lease", pb.LeaseRequest(pool="vm-pool", service_tag="svc"))
    expect("invalid_argument", client.call, "ExtendTo", pb.ExtendToRequest(instance=iid, service_tag="svc"))
    expect("invalid_argument", client.call, "ExtendTo", pb.ExtendToRequest(
        instance=iid, service_tag="svc", to=ts(datetime.now(UTC) - timedelta(minutes=1))))
    expect("permission_denied", client.call, "ExtendTo", pb.ExtendToRequest(
        instance=iid, service_tag="other", to=ts(datetime.now(UTC) + timedelta(minutes=1))))
    # Pool empty now: a reservation waits until the call's deadline, then UNAVAILABLE (the server's own answer,
    # sent a margin before the deadline, not the client's DEADLINE_EXCEEDED); it keeps its place. A 2 s deadline
    # leaves the answer 0.5 s to travel back on a loaded machine.
    e = expect("unavailable", client.call, "Lease",
               pb.LeaseRequest(pool="vm-pool", reservation_id="c1d7a2a4-5e2f-4a43-8d8e-0c1f9a9b7e61"), timeout=2.0)
    assert "same reservation_id" in e.message
    assert reservation(org.org_id, "c1d7a2a4-5e2f-4a43-8d8e-0c1f9a9b7e61").state == "waiting"


def test_grpc_malformed_bytes_health_and_reflection(lease_server, org):
    channel = grpc.insecure_channel(f"127.0.0.1:{lease_server.grpc_port}")
    raw = channel.unary_unary(f"/{SERVICE}/Lease", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff", metadata=[("authorization", f"Bearer {org.token}")], timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_connect_json_bad_bodies_are_invalid_argument(lease_server, org):
    c = ConnectJsonClient(lease_server, org.token)
    # The curl line, verbatim in spirit: an empty JSON object lists the pools.
    assert c.post("Pools", "{}", token=org.token) == pb.PoolsResponse()
    for body in ("{not json", '{"pool": 7}', '{"unknownField": 1}', '{"expires": "yesterday"}',
                 '{"reservationId": ["a"]}'):
        expect("invalid_argument", c.post, "Lease", body, token=org.token)
    r = c.http.post("/Lease", content="pool=a", headers={"content-type": "text/plain",
                                                          "authorization": f"Bearer {org.token}"})
    assert r.status_code == 415 and r.json()["code"] == "invalid_argument"


@pytest.fixture
def pushed(org, redis_client):
    def dispatch(name: str, payload: dict) -> None:
        if name == "notify":
            events.notify(payload["channel"], payload.get("message", ""))

    previous = effects.set_dispatcher(dispatch)
    yield
    effects.set_dispatcher(previous)


def test_a_waiting_lease_is_woken_by_a_push_when_its_instance_becomes_ready(client, org, pushed):
    pool = make_pool(org.org_id, "vm-pool")
    # Warm-up: the server's first wait subscribes to the wake-up channel (an automatic reservation,
    # cancelled when the call gives up, so it does not hold a place in the queue).
    expect("unavailable", client.call, "Lease", pb.LeaseRequest(pool="vm-pool"), timeout=0.5)
    for attempt in range(3):
        rid = f"wake-{attempt}"
        out: dict = {}

        def call(rid=rid, out=out) -> None:
            try:
                out["lease"] = client.call("Lease", pb.LeaseRequest(pool="vm-pool", reservation_id=rid), timeout=30).lease
            except Failure as exc:
                out["error"] = exc
            out["at"] = time.perf_counter()

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 5
        while reservation(org.org_id, rid) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        assert "at" not in out, out
        started = time.perf_counter()
        [iid] = add_ready(pool)
        with session_scope() as s:
            assert reservations.assign_ready_instance(iid, session=s)
        t.join(20)
        assert out.get("lease") is not None, out
        assert out["lease"].instance == iid
        # A healthy waiter sleeps until the 30 s deadline unless pushed: an answer in the first half can only
        # come from the push (the margin absorbs a loaded machine). How fast the push is, is a benchmark's
        # figure, not a timed test's.
        assert out["at"] - started < 15.0, f"answered after {(out['at'] - started) * 1000:.0f} ms: no push woke it"


def test_a_lease_follows_its_lost_instance(client, org):
    """The instance fails under its lease (the applier ends the lease, reason instance_lost): GetLease and
    ExtendTo say so with the reason; Return succeeds, and again, and changes nothing."""
    from sqlmodel import select

    from app.domain import instances
    from app.models import Lease

    pool = make_pool(org.org_id, "lossy")
    [iid] = add_ready(pool)
    got = client.call("Lease", pb.LeaseRequest(pool="lossy", service_tag="svc")).lease
    assert got.instance == iid
    with session_scope() as s:
        instances.apply_event(events.InstanceEvent(instance_id=iid, pool_id=pool.id, state="failed",
                                                   message="vanished at the provider"), session=s)
    e = expect("failed_precondition", client.call, "GetLease", pb.GetLeaseRequest(instance=iid))
    assert "instance_lost" in e.message, e.message
    e = expect("failed_precondition", client.call, "ExtendTo", pb.ExtendToRequest(
        instance=iid, service_tag="svc", to=ts(datetime.now(UTC) + timedelta(minutes=5))))
    assert "instance_lost" in e.message, e.message
    expect("permission_denied", client.call, "Return", pb.ReturnRequest(instance=iid, service_tag="someone-else"))
    for _ in range(2):
        assert client.call("Return", pb.ReturnRequest(instance=iid, service_tag="svc")) == pb.ReturnResponse()
    with session_scope() as s:
        rows = s.exec(select(Lease).where(Lease.instance_id == iid)).all()
    assert [(r.state, r.end_reason) for r in rows] == [("expired", "instance_lost")]
