"""The gRPC port's own HTTP/2 front (app/api/grpc_front.py), driven by the official grpcio client: the
lease service's unary calls answered by the front itself (many at once on one connection, compressed,
non-ASCII details, unknown methods), health and reflection relayed to grpc.aio, a call past its deadline,
a graceful stop that lets a call in flight finish, and the receive window a raw client cannot outrun. The
HPACK decoder against the hpack package's encoder."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
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
    # Unknown methods, of the lease service or of a relayed one, get grpc.aio's own answer from the front
    # itself, every time (relayed, grpc.aio's client could turn it into INTERNAL: grpc/grpc#36066).
    for path in [f"/{SERVICE}/Nope", "/grpc.health.v1.Health/Nope", "/nope.Nope/Nope"] * 20:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(path)(b"\x08\x01", timeout=10)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNIMPLEMENTED, "Method not found!"), path
    with pytest.raises(grpc.RpcError) as info:
        list(channel.stream_stream("/nope.Nope/Nope")(iter([b"x"] * 50), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


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
    with pytest.raises(grpc.RpcError) as info:
        stub.Lease(pb.LeaseRequest(pool="slow", service_tag="t"), metadata=md(world), timeout=1.0)
    # The server's answer before the deadline: one after it would reach the client as DEADLINE_EXCEEDED.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
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


def _frames(sock: socket.socket, until: Callable[[int, int, int, bytes], bool]) -> list[tuple[int, int, int, bytes]]:
    """Frames the server sends, up to and including the first for which `until` holds (10 s at most)."""
    got, buf = [], b""
    sock.settimeout(10)
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            item = (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n])
            buf = buf[9 + n:]
            got.append(item)
            if until(*item):
                return got
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {got}"
        buf += chunk


def test_a_client_cannot_make_the_server_hold_more_than_the_connection_window(served):
    """Requests begun but never ended hold their bytes: the connection's window reopens only as requests are
    consumed, not as bytes arrive (a hostile client could otherwise pile up any amount in memory)."""
    server, _ = served
    sock = socket.create_connection(("127.0.0.1", server.port))
    encoder = hpack.Encoder()
    size, streams = 1_000_000, 16  # 16 MB: just inside the connection window the server grants
    try:
        sock.sendall(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0))
        for sid in range(1, 2 * streams, 2):
            block = encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Lease"),
                                    (":authority", "x"), ("content-type", "application/grpc")])
            body = b"\x00" + size.to_bytes(4, "big") + b"\x00" * size
            sock.sendall(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block) + b"".join(
                h2.frame(h2.DATA, 0, sid, body[i:i + h2.MAX_FRAME]) for i in range(0, len(body), h2.MAX_FRAME)))
        sock.sendall(h2.frame(h2.PING, 0, 0, b"12345678"))
        seen = _frames(sock, lambda kind, flags, sid, payload: kind == h2.PING and flags & h2.ACK)
        reopened = [int.from_bytes(p, "big") for k, _, s, p in seen if k == h2.WINDOW_UPDATE and s == 0]
        assert reopened == [h2.CONN_WINDOW - 65535], reopened  # only the initial grant: nothing consumed yet
        for sid in range(1, 2 * streams, 2):  # the requests end: consumed (and refused, not valid messages)
            sock.sendall(h2.frame(h2.DATA, h2.END_STREAM, sid))
        seen = _frames(sock, lambda kind, flags, sid, payload: kind == h2.WINDOW_UPDATE and sid == 0)
        assert int.from_bytes(seen[-1][3], "big") > h2.CONN_WINDOW // 2  # what the consumed requests held
    finally:
        sock.close()


def _raw(server: GrpcServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0))
    return sock


def _told_to_go(sock: socket.socket) -> int:
    """The error code of the GOAWAY the server sends."""
    seen = _frames(sock, lambda kind, flags, sid, payload: kind == h2.GOAWAY)
    return int.from_bytes(seen[-1][3][4:8], "big")


LEASE_HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Lease"), (":authority", "x"),
                 ("content-type", "application/grpc")]


def test_a_client_that_ignores_the_connection_window_is_told_to_go(served):
    server, _ = served
    sock, encoder = _raw(served[0]), hpack.Encoder()
    size = 1_000_000
    body = b"\x00" + size.to_bytes(4, "big") + b"\x00" * size
    try:
        for sid in range(1, 2 * 17, 2):  # 17 MB, past the 16 MB the server granted
            sock.sendall(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, encoder.encode(LEASE_HEADERS)) + b"".join(
                h2.frame(h2.DATA, 0, sid, body[i:i + h2.MAX_FRAME]) for i in range(0, len(body), h2.MAX_FRAME)))
        assert _told_to_go(sock) == h2.FLOW_CONTROL_ERROR
    finally:
        sock.close()


def test_a_header_block_that_indexes_a_big_entry_many_times_is_refused(served):
    """HPACK bomb: 4 KB entered in the table once, then indexed with one byte each, would decode to
    megabytes from a block of a few KB."""
    server, channel = served
    sock = _raw(server)
    entry = b"\x40" + h2._hint(5, 7) + b"x-big" + h2._hint(4000, 7) + b"b" * 4000
    block = hpack.Encoder().encode(LEASE_HEADERS) + entry + b"\xbe" * 100  # index 62: the newest dynamic entry
    try:
        sock.sendall(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, block))
        assert _told_to_go(sock) == h2.ENHANCE_YOUR_CALM
    finally:
        sock.close()
    stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    assert stub.Ping(empty_pb2.Empty(), timeout=10).msg == "pong"  # other connections are served


def test_a_compressed_request_is_inflated_no_further_than_the_size_limit(served, world):
    _, channel = served
    stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:  # ~2 KB on the wire, 4 MB inflated
        stub.Lease(pb.LeaseRequest(pool="p" * 4_000_000, service_tag="t"), metadata=md(world),
                   compression=grpc.Compression.Gzip, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()


def test_a_client_that_opens_and_resets_streams_without_end_is_told_to_go(served):
    """Rapid reset (CVE-2023-44487): reset streams leave MAX_STREAMS, so they are counted on their own."""
    server, _ = served
    sock, encoder = _raw(server), hpack.Encoder()
    try:
        frames = b""
        for sid in range(1, 2 * (h2.MAX_RESETS_PER_SECOND + 50), 2):
            frames += h2.frame(h2.HEADERS, h2.END_HEADERS, sid, encoder.encode(LEASE_HEADERS))
            frames += h2.frame(h2.RST_STREAM, 0, sid, h2.CANCEL.to_bytes(4, "big"))
        sock.sendall(frames)
        assert _told_to_go(sock) == h2.ENHANCE_YOUR_CALM
    finally:
        sock.close()
