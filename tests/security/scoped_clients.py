"""Fixtures of the token tests, in their own module (test modules import them by name): the HTTP app in
process (every façade on one port) and the gRPC lease server on a free port, on the test PostgreSQL and Redis."""
from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from fastapi.testclient import TestClient

from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2_grpc
from scripts.testenv import free_port


@pytest.fixture
def http(db, redis_client, effects_log) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(dispatcher=False), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def grpc_stub(db, redis_client, effects_log) -> Iterator[lease_api_pb2_grpc.VMPoolLeaseServiceStub]:
    from app.api.vmpool import LeaseService
    from app.api.vmpool_grpc import GrpcServer

    server = GrpcServer("127.0.0.1", free_port(), service=LeaseService())
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    finally:
        channel.close()
        server.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
