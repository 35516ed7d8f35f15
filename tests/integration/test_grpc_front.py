"""The gRPC port's own HTTP/2 front (app/api/grpc_front.py), driven by the official grpcio client: the
lease service's unary calls answered by the front itself (many at once on one connection, compressed,
non-ASCII details, unknown methods), health and reflection relayed to grpc.aio, a call past its deadline,
and a graceful stop that lets a call in flight finish. The HPACK decoder against the hpack package's encoder."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import hpack
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app.api import h2
from app.api.vmpool import LeaseService
from app.api.vmpool_grpc import GrpcServer
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2_grpc
from tests.conftest import World, make_org
from tests.leasing import add_ready, make_pool

SERVICE = "intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"


@pytest.fixture
def world(db, effects_log) -> World:
    return make_org()


@pytest.fixture
def served(world) -> Iterator[tuple[GrpcServer, grpc.Channel]]:
    server = GrpcServer("127.0.0.1", 0, service=LeaseService(), grace=5.0)
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield server, channel
    finally:
        server.stop()


def md(world: World) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {world.token}")]


def test_many_leases_at_once_on_one_connection(served, world):
    _, channel = served
    pool = make_pool(world.org_id, "many")
    ready = set(add_ready(pool, 40))
    stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    with ThreadPoolExecutor(20) as pool_:
        leased = list(pool_.map(lambda _: stub.Lease(pb.LeaseRequest(pool="many", service_tag="t"), metadata=md(world),
                                                     timeout=20).lease.instance, range(40)))
    assert sorted(leased) == sorted(ready)  # each instance once, all answered over one HTTP/2 connection


def test_compressed_requests_are_inflated(served, world):
    _, channel = served
    add_ready(make_pool(world.org_id, "gz2"), 1)
    stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    assert stub.Ping(empty_pb2.Empty(), compression=grpc.Compression.Gzip, timeout=10).msg == "pong"
    got = stub.Lease(pb.LeaseRequest(pool="gz2", service_tag="t"), metadata=md(world), compression=grpc.Compression.Deflate,
                     timeout=10)
    assert got.lease.pool == "gz2"


def test_refusals_keep_their_code_and_non_ascii_details(served, world):
    _, channel = served
    stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Lease(pb.LeaseRequest(pool="pööl ✓ 100%", service_tag="t"), metadata=md(world), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "pööl ✓ 100%" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Lease(pb.LeaseRequest(pool="x"), metadata=[("authorization", "Bearer nope")], timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(f"/{SERVICE}/Nope")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # relayed: grpc.aio's own answer


def test_health_and_reflection_are_relayed(served):
    _, channel = served
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]), timeout=10))
    assert SERVICE in {s.name for s in answers[0].list_services_response.service}
    assert answers[1].file_descriptor_response.file_descriptor_proto  # a few KB, across flow control


def test_a_waiting_call_answers_before_its_deadline_and_a_stop_drains(served, world):
    server, channel = served
    make_pool(world.org_id, "slow", empty_policy="reserve")
    stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Lease(pb.LeaseRequest(pool="slow", service_tag="t"), metadata=md(world), timeout=1.0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()  # the server's, not the deadline
    assert time.monotonic() - started < 1.0
    # A call waiting in the server when it stops is answered (not cut off), then new calls are refused.
    outcome: dict[str, object] = {}

    def wait() -> None:
        try:
            stub.Lease(pb.LeaseRequest(pool="slow", service_tag="t"), metadata=md(world), timeout=3.0)
        except grpc.RpcError as err:
            outcome.update(code=err.code(), details=err.details())

    caller = threading.Thread(target=wait)
    caller.start()
    time.sleep(0.5)  # let the call reach the server (its answer is due at ~2.5 s, inside the 5 s grace)
    server.stop()
    caller.join(10)
    # The service's own answer, not a connection cut under the call (also UNAVAILABLE, other details).
    assert outcome.get("code") == grpc.StatusCode.UNAVAILABLE and "became ready" in str(outcome["details"]), outcome


def test_the_decoder_reads_what_hpack_encodes():
    encoder, decoder = hpack.Encoder(), h2.Decoder()
    headers = [(":method", "POST"), (":path", f"/{SERVICE}/Lease"), ("authorization", "Bearer wp_" + "x" * 40),
               ("grpc-timeout", "999m"), ("x-custom", "välue")]
    for huffman in (True, False, True):
        block = encoder.encode(headers, huffman=huffman)
        assert [(n.decode(), v.decode()) for n, v in decoder.decode(block)] == headers
    encoder.header_table_size = 256  # a dynamic table size update, then entries evicted
    block = encoder.encode(headers + [("x-long", "y" * 300)])
    assert [n.decode() for n, _ in decoder.decode(block)][-1] == "x-long"
    with pytest.raises(h2.H2Error):
        h2.Decoder().decode(b"\xff\x7f")  # an index far past both tables


def test_a_unary_call_takes_one_message_of_any_allowed_size(served, world):
    _, channel = served
    stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:  # 300 KB: many DATA frames, past HTTP/2's default window
        stub.Lease(pb.LeaseRequest(pool="p" * 300_000, service_tag="t"), metadata=md(world), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most" in info.value.details()
    two = channel.stream_unary(f"/{SERVICE}/Ping", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        two(iter([b"", b""]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL, info.value.details()
    assert stub.Ping(empty_pb2.Empty(), timeout=10).msg == "pong"  # the connection still serves
