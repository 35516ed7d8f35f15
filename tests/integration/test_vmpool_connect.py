"""The thin Connect JSON handler (app.api.vmpool_connect) answers as the connectrpc stack does: the same
status and error bytes for every refusal, the same response content for every success, on PostgreSQL
(the async path) and on SQLite (the sync one)."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from google.protobuf.json_format import Parse

from app import adb
from app.api import vmpool, vmpool_connect
from app.main import WarmpoolASGI, create_app
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
from tests.conftest import token_for
from tests.leasing import add_ready, make_pool

SERVICE = "/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _both(world, requests: list[tuple[str, dict | bytes, dict]]) -> list[tuple[tuple, tuple]]:
    """Each request through the thin handler and through the regular stack it falls back to."""
    asgi = WarmpoolASGI(create_app(dispatcher=False))
    thin = asgi.connect
    assert isinstance(thin, vmpool_connect.LeaseConnectJSON)
    service = vmpool.LeaseService()
    thin._service = service
    out = []
    try:
        for rpc, body, extra in requests:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers = {"content-type": "application/json", "authorization": f"Bearer {world.token}",
                       "accept-encoding": "identity", **extra}
            answers = []
            for app in (thin, thin.fallback):
                async def asgi_app(scope, receive, send, app=app):
                    scope = dict(scope, root_path="/api")
                    await app(scope, receive, send)

                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi_app), base_url="http://t") as c:
                    r = await c.post(f"{SERVICE}/{rpc}", content=raw, headers=headers)
                answers.append((r.status_code, r.headers.get("content-type"), r.content))
            out.append((answers[0], answers[1]))
    finally:
        service.executor.shutdown(wait=True)
        await adb.close()
    return out


@pytest.mark.postgres
def test_refusals_are_byte_compatible(org) -> None:
    lease_token = token_for(org, "lease")
    org.token = lease_token
    pool = make_pool(org.org_id, "p-one", empty_policy="reject")
    ids = add_ready(pool, 2)
    past = _iso(datetime.now(UTC) - timedelta(hours=1))
    cases = [
        ("Lease", {"pool": "nope", "serviceTag": "t"}, {}),
        ("Lease", {"pool": "ünïcode-pøøl"}, {}),
        ("Lease", {"pool": "bad\u0001name"}, {}),
        ("Lease", {"pool": "p-one", "unknownField": 1}, {}),
        ("Lease", b'{"pool": "p-one", "pool": "p-one"}', {}),
        ("Lease", b"not json", {}),
        ("Lease", {"pool": "p-one"}, {"connect-protocol-version": "2"}),
        ("Lease", {"pool": "p-one"}, {"connect-timeout-ms": "abc"}),
        ("Lease", {"pool": "p-one"}, {"authorization": "Bearer wrong"}),
        ("Return", {"instance": "missing", "serviceTag": "t"}, {}),
        ("Return", {"instance": ids[0], "serviceTag": "t"}, {}),  # never leased
        ("GetLease", {"instance": ""}, {}),
        ("GetLease", {"instance": ids[1]}, {}),
        ("ExtendTo", {"instance": ids[0], "serviceTag": "t"}, {}),
        ("ExtendTo", {"instance": ids[0], "serviceTag": "t", "to": past}, {}),
        ("ExtendTo", {"instance": ids[0], "to": "not a time"}, {}),
    ]
    for (thin, regular), (rpc, body, extra) in zip(asyncio.run(_both(org, cases)), cases):
        assert thin == regular, (rpc, body, extra)
        assert thin[0] != 200, (rpc, body, thin)


@pytest.mark.postgres
def test_leased_then_refused_the_same_way(org) -> None:
    """Success content equal (instance aside), then the errors of a returned lease, on both stacks."""
    org.token = token_for(org, "lease")
    pool = make_pool(org.org_id, "p-two", empty_policy="reject", lease_default_seconds=600, lease_max_seconds=3600)
    add_ready(pool, 3)
    wish = datetime.now(UTC) + timedelta(hours=5)
    first = asyncio.run(_both(org, [("Lease", {"pool": "p-two", "serviceTag": "s", "expires": _iso(wish)}, {})]))
    (thin, regular), = first
    assert thin[0] == regular[0] == 200
    a, b = (Parse(x[2], pb.LeaseResponse()) for x in (thin, regular))
    assert a.lease.instance != b.lease.instance and a.lease.pool == b.lease.pool == "p-two"
    assert abs(a.lease.expires.seconds - b.lease.expires.seconds) <= 2  # clamped to the maximum on both
    assert json.loads(thin[2]).keys() == json.loads(regular[2]).keys()
    steps = [("Return", {"instance": a.lease.instance, "serviceTag": "other"}, {}),
             ("Return", {"instance": a.lease.instance, "serviceTag": "s"}, {})]
    (wrong, wrong_regular), (ok, ok_again) = asyncio.run(_both(org, steps))
    assert wrong == wrong_regular and wrong[0] == 403
    assert ok[0] == 200 and ok[2] == b"{}"
    assert ok_again[0] == 400 and b"failed_precondition" in ok_again[2]  # the regular stack saw it returned
    after = [("Return", {"instance": a.lease.instance, "serviceTag": "s"}, {}),
             ("GetLease", {"instance": a.lease.instance}, {}),
             ("Lease", {"pool": "p-two"}, {}), ("Lease", {"pool": "p-two"}, {})]
    results = asyncio.run(_both(org, after))
    for (thin, regular), step in zip(results[:2], after):
        assert thin == regular, step
    (t3, r3), (t4, r4) = results[2:]
    assert t3[0] == 200 and r3[0] == 429 and t4 == r4  # the last one leased, then the pool is empty on both


def test_timestamps_as_protobuf_writes_them() -> None:
    from google.protobuf.json_format import MessageToDict

    for micros in (0, 1000, 123000, 123456, 1):
        when = datetime(2026, 12, 1, 16, 0, 5, micros, tzinfo=UTC)
        msg = pb.LeaseResponse(lease=pb.Lease(instance="i", pool="p", zone=""))
        msg.lease.expires.FromDatetime(when)
        assert json.loads(vmpool_connect.response_json(msg)) == MessageToDict(msg)
    assert vmpool_connect.response_json(pb.ReturnResponse()) == b"{}"
