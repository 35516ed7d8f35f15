"""Backpressure on the lease service, against `warmpool api` as a real process: an exhausted `reject`
pool and an organization over its Lease rate answer Connect 429 with Retry-After and gRPC
RESOURCE_EXHAUSTED with the same hint in trailing metadata."""
from __future__ import annotations

import json

import grpc
import httpx
import pytest

from app.db import session_scope
from app.domain import quotas
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb, lease_api_pb2_grpc
from tests.e2e.test_vmpool_rpcs import SERVICE, lease_server  # noqa: F401 (fixture)
from tests.leasing import add_ready, make_pool

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]


def connect_lease(server, token: str, pool: str) -> httpx.Response:
    return httpx.post(f"{server.api}/{SERVICE}/Lease", content=json.dumps({"pool": pool}), timeout=15,
                      headers={"content-type": "application/json", "authorization": f"Bearer {token}"})


def grpc_lease(server, token: str, pool: str) -> grpc.RpcError | pb.LeaseResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
        try:
            return stub.Lease(pb.LeaseRequest(pool=pool), metadata=[("authorization", f"Bearer {token}")], timeout=10)
        except grpc.RpcError as exc:
            return exc


def test_an_exhausted_reject_pool_says_when_to_come_back(lease_server, org):
    make_pool(org.org_id, "strict", empty_policy="reject")
    r = connect_lease(lease_server, org.token, "strict")
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "resource_exhausted" and "retry in 5 s" in r.json()["message"]
    assert r.headers["retry-after"] == "5", "an unmeasured pool: the default refill estimate"

    err = grpc_lease(lease_server, org.token, "strict")
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(err.trailing_metadata() or ())
    assert trailers["retry-after"] == "5" and trailers["grpc-retry-pushback-ms"] == "5000"


def test_an_organization_over_its_lease_rate_is_told_to_wait(lease_server, org):
    import time

    pool = make_pool(org.org_id, "busy")
    add_ready(pool, 12)
    with session_scope() as s:
        quotas.set_quota(org.org_id, lease_rate=1, lease_burst=2, session=s)
    started, granted, refused = time.monotonic(), 0, None
    for _ in range(10):  # at 1/s with a bucket of 2, a refusal comes within a few quick calls
        r = connect_lease(lease_server, org.token, "busy")
        if r.status_code != 200:
            refused = r
            break
        granted += 1
    elapsed = time.monotonic() - started
    assert refused is not None and refused.status_code == 429, refused and refused.text
    assert "lease rate of 1/s" in refused.json()["message"] and refused.headers["retry-after"] == "1"
    assert 2 <= granted <= 2 + int(elapsed) + 1, (granted, elapsed)

    for _ in range(10):
        err = grpc_lease(lease_server, org.token, "busy")
        if isinstance(err, grpc.RpcError):
            break
        granted += 1
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert dict(err.trailing_metadata() or ())["retry-after"] == "1"
    with session_scope() as s:  # nothing was claimed for the refused calls
        from app.domain import leases

        assert len(leases.list_leases(org.org_id, session=s, pool_name="busy")) == granted
