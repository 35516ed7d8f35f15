"""Issue 9's input attacks on the lease service over gRPC: NUL bytes and invalid UTF-8 are
INVALID_ARGUMENT, a message over the limit is RESOURCE_EXHAUSTED, and nothing is stored."""
from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from app.api.vmpool import LeaseService
from app.api.vmpool_grpc import GrpcServer
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
from tests.conftest import World
from tests.security.conftest import BODY_LIMIT, rows

LEASE = "/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Lease"


@pytest.fixture
def channel(small_bodies, db, effects_log) -> Iterator[grpc.Channel]:
    server = GrpcServer("127.0.0.1", 0, service=LeaseService())
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 4 * BODY_LIMIT)]) as ch:
            yield ch
    finally:
        server.stop()


def lease_raw(channel: grpc.Channel, world: World, payload: bytes) -> grpc.RpcError:
    call = channel.unary_unary(LEASE, request_serializer=lambda b: b, response_deserializer=pb.LeaseResponse.FromString)
    with pytest.raises(grpc.RpcError) as info:
        call(payload, metadata=[("authorization", f"Bearer {world.token}")], timeout=10)
    return info.value


def test_control_an_unknown_pool_is_not_found(channel, world):
    err = lease_raw(channel, world, pb.LeaseRequest(pool="nope", service_tag="t").SerializeToString())
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()


@pytest.mark.parametrize("request_", [
    pb.LeaseRequest(pool="a\x00b", service_tag="t"),
    pb.LeaseRequest(pool="a", service_tag="t\x00"),
    pb.LeaseRequest(pool="a", service_tag="t", reservation_id="r\x00"),
    pb.ReturnRequest(instance="i\x00", service_tag="t"),
], ids=["pool", "service_tag", "reservation_id", "a Return request's instance (parsed as a Lease)"])
def test_nul_is_invalid_argument_and_nothing_stored(channel, world, request_):
    err = lease_raw(channel, world, request_.SerializeToString())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "NUL" in err.details()
    assert (rows("leases", world.org_id), rows("reservations", world.org_id)) == (0, 0)


def test_surrogate_bytes_are_invalid_argument(channel, world):
    payload = pb.LeaseRequest(pool="pAq", service_tag="t").SerializeToString().replace(b"pAq", b"\xed\xa0\x80")
    err = lease_raw(channel, world, payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()


def test_oversize_message_is_resource_exhausted(channel, world):
    err = lease_raw(channel, world, pb.LeaseRequest(pool="x" * (BODY_LIMIT + 1), service_tag="t").SerializeToString())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert (rows("leases", world.org_id), rows("reservations", world.org_id)) == (0, 0)
