"""Token scopes at every façade: each scope is allowed where it should be and refused elsewhere, in the
façade's own format (Connect 403 permission_denied, gRPC PERMISSION_DENIED, openYuanrong 403/121049,
native 403 permission_denied), with a message naming the scope needed; a refused write stores nothing."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.models import Pool, Runner
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
from tests.conftest import World, make_org, token_for
from tests.security.scoped_clients import bearer, grpc_stub, http  # noqa: F401 - fixtures

LEASE_SERVICE = "/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"


@dataclass
class Answer:
    allowed: bool
    message: str = ""


def connect(r: Any) -> Answer:
    if r.status_code == 200:
        return Answer(True)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "permission_denied", r.text
    return Answer(False, r.json()["message"])


def native(r: Any) -> Answer:
    if r.status_code in (200, 201):
        return Answer(True)
    assert r.status_code == 403, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == "permission_denied", body
    return Answer(False, body["message"])


def podpools(r: Any) -> Answer:
    if r.status_code == 200:
        assert r.json()["code"] == 0, r.text
        return Answer(True)
    assert (r.status_code, r.json()["code"]) == (403, 121049), r.text
    return Answer(False, r.json()["message"])


def gitpod_list(http, stub, token) -> Answer:
    return connect(http.post("/api/gitpod.v1.PrebuildService/ListWarmPools", json={}, headers=bearer(token)))


def gitpod_runner_config(http, stub, token) -> Answer:
    return connect(http.post("/api/gitpod.v1.RunnerConfigurationService/ListEnvironmentClasses", json={},
                             headers=bearer(token)))


def lease_connect(http, stub, token) -> Answer:
    return connect(http.post(f"{LEASE_SERVICE}/Pools", json={}, headers=bearer(token)))


def lease_grpc(http, stub, token) -> Answer:
    try:
        stub.Pools(pb.PoolsRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
        return Answer(False, exc.details())
    return Answer(True)


def podpool_query(http, stub, token) -> Answer:
    return podpools(http.get("/serverless/v1/podpools", headers=bearer(token)))


def native_pools(http, stub, token) -> Answer:
    return native(http.get("/v1/pools", headers=bearer(token)))


def native_runners(http, stub, token) -> Answer:
    return native(http.get("/v1/runners", headers=bearer(token)))


def native_tokens(http, stub, token) -> Answer:
    return native(http.get("/v1/tokens", headers=bearer(token)))


def metrics(http, stub, token) -> Answer:
    r = http.get("/metrics", headers=bearer(token))
    if r.status_code == 200:
        return Answer(True)
    assert (r.status_code, r.json()["code"]) == (403, "permission_denied"), r.text
    return Answer(False, r.json()["message"])


# probe -> (the scopes it admits, the scope its refusal must name)
TABLE: dict[Callable[..., Answer], tuple[set[str], str]] = {
    gitpod_list: ({"admin", "member"}, "member"),
    gitpod_runner_config: ({"admin", "member"}, "member"),
    lease_connect: ({"admin", "member", "lease"}, "lease"),
    lease_grpc: ({"admin", "member", "lease"}, "lease"),
    podpool_query: ({"admin", "member"}, "member"),
    native_pools: ({"admin", "member"}, "member"),
    native_runners: ({"admin"}, "admin"),
    native_tokens: ({"admin"}, "admin"),
    metrics: ({"admin", "member", "metrics"}, "member"),
}
SCOPES = ["admin", "member", "lease", "metrics"]


@pytest.mark.parametrize("probe", TABLE, ids=lambda p: p.__name__)
def test_each_scope_is_allowed_or_refused_at_each_facade(http, grpc_stub, probe):
    admits, needed = TABLE[probe]
    world = make_org()
    for scope in SCOPES:
        answer = probe(http, grpc_stub, token_for(world, scope))
        assert answer.allowed == (scope in admits), (probe.__name__, scope, answer)
        if not answer.allowed:
            assert f"'{needed}'" in answer.message and f"'{scope}'" in answer.message, answer.message


def test_a_refused_write_stores_nothing(http):
    world = make_org()
    member, lease = token_for(world, "member"), token_for(world, "lease")
    r = http.post("/v1/runners", json={"name": "r", "provider": "fake"}, headers=bearer(member))
    assert native(r).allowed is False
    r = http.post("/serverless/v1/podpools", json={"pools": [{"id": "p1", "image": "alpine", "size": 1}]},
                  headers=bearer(lease))
    assert podpools(r).allowed is False
    r = http.post("/api/gitpod.v1.ProjectService/CreateProject", json={"name": "x"}, headers=bearer(lease))
    assert connect(r).allowed is False
    with session_scope() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Runner)).scalar_one() == 0
        assert s.execute(sa.select(sa.func.count()).select_from(Pool)).scalar_one() == 0


def test_connect_refuses_the_scope_before_reading_the_body(http):
    """Like a missing token, a too-small scope is answered before the body is decoded."""
    lease = token_for(make_org(), "lease")
    r = http.post("/api/gitpod.v1.PrebuildService/CreateWarmPool", content=b"{not json",
                  headers={**bearer(lease), "Content-Type": "application/json"})
    assert connect(r).allowed is False
    r = http.post("/api/gitpod.v1.PrebuildService/CreateWarmPool", content=b"{not json",
                  headers={**bearer(lease), "Content-Type": "text/plain"})
    assert connect(r).allowed is False


def test_a_native_body_error_with_a_too_small_scope_is_403_not_422(http):
    member = token_for(make_org(), "member")
    r = http.post("/v1/runners", content=b"{nope", headers={**bearer(member), "Content-Type": "application/json"})
    assert native(r).allowed is False


def test_a_lease_token_can_lease(http, grpc_stub):
    """The lease scope is enough for the whole lease flow, over both transports."""
    from tests.leasing import add_ready, make_pool

    world: World = make_org()
    pool = make_pool(world.org_id, "pool-a")
    add_ready(pool, 2)
    lease = token_for(world, "lease")
    got = grpc_stub.Lease(pb.LeaseRequest(pool="pool-a", service_tag="t"),
                          metadata=[("authorization", f"Bearer {lease}")], timeout=10)
    assert got.lease.pool == "pool-a"
    r = http.post(f"{LEASE_SERVICE}/Lease", json={"pool": "pool-a", "serviceTag": "t"}, headers=bearer(lease))
    assert r.status_code == 200 and r.json()["lease"]["pool"] == "pool-a", r.text
