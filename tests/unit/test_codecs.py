"""The wire codecs the server uses: proto-JSON (uint64 strings, RFC 3339, enum names, null = absent,
unknown fields refused) and binary proto (field numbers as upstream, presence of optional ints)."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf.json_format import ParseError

from app.api import gitpod
from app.api.connect_common import PaginationQueryMerge
from app.main import CONNECT_CODECS
from app.models import Pool, Prebuild
from proto.gitpod.v1 import messages_pb2 as pb

BINARY = next(c for c in CONNECT_CODECS if c.name() == "proto")
JSON = next(c for c in CONNECT_CODECS if c.name() == "json")
P, E = "b0e12f6c-4c67-429d-a4a6-d9838b5da047", "d2c94c27-3b76-4a42-b88c-95a85e392c68"


def pool(**fields) -> Pool:
    values = dict(
        id=str(uuid.uuid4()), organization_id=str(uuid.uuid4()), name="n", project_id=P, environment_class_id=E,
        runner_id=str(uuid.uuid4()), min_size=0, max_size=3, spec_version=12345678901, status_version=7,
        phase="ready", desired_phase="ready", ready_instances=2, stopped_instances=1, desired_size=2,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        updated_at=datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC),
    )
    values.update(fields)
    return Pool(**values)


def encoded(msg) -> dict:
    return json.loads(JSON.encode(msg))


# ---- JSON out ------------------------------------------------------------------------------------

def test_warm_pool_json_uses_strings_for_uint64_and_names_for_enums():
    p = pool(snapshot_id="snap-1")
    doc = encoded(pb.GetWarmPoolResponse(warm_pool=gitpod.warm_pool_message(p)))["warmPool"]
    assert doc["id"] == p.id
    assert doc["spec"]["specVersion"] == "12345678901"
    assert doc["status"]["statusVersion"] == "7"
    assert doc["spec"]["desiredPhase"] == "WARM_POOL_PHASE_READY"
    assert doc["status"]["phase"] == "WARM_POOL_PHASE_READY"
    assert doc["spec"]["snapshotId"] == "snap-1"
    assert doc["metadata"]["projectId"] == P and doc["metadata"]["environmentClassId"] == E
    assert doc["status"]["runningInstances"] == 2 and doc["status"]["stoppedInstances"] == 1


def test_warm_pool_json_times_are_rfc3339_utc():
    doc = encoded(gitpod.warm_pool_message(pool()))
    assert doc["metadata"]["createdAt"] == "2026-01-02T03:04:05Z"
    assert doc["metadata"]["updatedAt"] == "2026-01-02T03:04:05.250Z"
    parsed = datetime.fromisoformat(doc["metadata"]["updatedAt"].replace("Z", "+00:00"))
    assert parsed == datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)


def test_warm_pool_json_keeps_min_size_zero_and_omits_missing_snapshot():
    msg = gitpod.warm_pool_message(pool(min_size=0, max_size=2, snapshot_id=None))
    assert msg.spec.HasField("min_size") and not msg.spec.HasField("snapshot_id")
    doc = encoded(msg)
    assert doc["spec"]["minSize"] == 0 and doc["spec"]["maxSize"] == 2
    assert "snapshotId" not in doc["spec"]


def test_desired_size_is_echoed_only_when_min_equals_max():
    assert gitpod.warm_pool_message(pool(min_size=3, max_size=3)).spec.desired_size == 3
    assert gitpod.warm_pool_message(pool(min_size=1, max_size=3)).spec.desired_size == 0


@pytest.mark.parametrize("phase, name", [("pending", "WARM_POOL_PHASE_PENDING"), ("degraded", "WARM_POOL_PHASE_DEGRADED"),
                                         ("deleting", "WARM_POOL_PHASE_DELETING"), ("deleted", "WARM_POOL_PHASE_DELETED")])
def test_every_pool_phase_has_its_gitpod_name(phase, name):
    assert encoded(gitpod.warm_pool_message(pool(phase=phase)))["status"]["phase"] == name


def test_prebuild_json_int64_and_enum_names():
    p = Prebuild(id=str(uuid.uuid4()), organization_id=str(uuid.uuid4()), project_id=P, environment_class_id=E,
                 phase="completed", snapshot_id="s", snapshot_size_bytes=123456789012, timeout_seconds=3600,
                 triggered_by="scheduled", completion_time=datetime(2026, 2, 1, tzinfo=UTC),
                 created_at=datetime(2026, 1, 1, tzinfo=UTC), updated_at=datetime(2026, 1, 1, tzinfo=UTC))
    doc = encoded(gitpod.prebuild_message(p))
    assert doc["status"]["phase"] == "PREBUILD_PHASE_COMPLETED"
    assert doc["status"]["snapshotSizeBytes"] == "123456789012"
    assert doc["status"]["completionTime"] == "2026-02-01T00:00:00Z"
    assert doc["spec"]["timeout"] == "3600s"
    assert doc["metadata"]["triggeredBy"] == "PREBUILD_TRIGGER_SCHEDULED"


# ---- JSON in ---------------------------------------------------------------------------------------

def test_json_null_is_absent():
    req = JSON.decode(b'{"warmPoolId": "x", "minSize": null, "maxSize": 5, "desiredSize": null}', pb.UpdateWarmPoolRequest)
    assert not req.HasField("min_size") and not req.HasField("desired_size")
    assert gitpod._sizes(req, creating=False) == (None, 5)


def test_json_zero_is_present():
    req = JSON.decode(b'{"projectId": "p", "environmentClassId": "e", "minSize": 0, "maxSize": 1}', pb.CreateWarmPoolRequest)
    assert req.HasField("min_size") and req.min_size == 0
    assert gitpod._sizes(req, creating=True) == (0, 1)


def test_json_accepts_uint64_as_string_or_number_and_snake_case():
    a = JSON.decode(b'{"spec": {"specVersion": "9"}}', pb.WarmPool)
    b = JSON.decode(b'{"spec": {"spec_version": 9}}', pb.WarmPool)
    assert a.spec.spec_version == b.spec.spec_version == 9


@pytest.mark.parametrize("body", [b'{"unknownField": 1}', b'{"warmPoolId": "x", "minsize": 1}',
                                  b'{"minSize": "many"}', b'{"minSize": 3000000000}', b'{"minSize": 1.5}', b'{"warmPoolId": '])
def test_json_refuses_unknown_fields_and_bad_values(body):
    with pytest.raises(ParseError):
        JSON.decode(body, pb.UpdateWarmPoolRequest)


def test_json_enum_names_parse():
    req = JSON.decode(b'{"filter": {"phases": ["PREBUILD_PHASE_COMPLETED"], "triggeredBy": ["PREBUILD_TRIGGER_MANUAL"]}}',
                      pb.ListPrebuildsRequest)
    assert list(req.filter.phases) == [pb.PREBUILD_PHASE_COMPLETED]


# ---- binary ----------------------------------------------------------------------------------------

def test_binary_create_request_keeps_min_size_zero():
    wire = BINARY.encode(pb.CreateWarmPoolRequest(project_id=P, environment_class_id=E, min_size=0, max_size=3))
    assert b"\x20\x00" in wire  # field 4 (min_size), varint 0: present on the wire
    back = BINARY.decode(wire, pb.CreateWarmPoolRequest)
    assert back.HasField("min_size") and back.min_size == 0
    assert gitpod._sizes(back, creating=True) == (0, 3)
    absent = BINARY.decode(BINARY.encode(pb.CreateWarmPoolRequest(project_id=P, environment_class_id=E, max_size=3)),
                           pb.CreateWarmPoolRequest)
    assert not absent.HasField("min_size")


def test_binary_matches_the_bytes_gitpod_sdk_1_2_sends():
    # Captured from gitpod-sdk 1.2.0 (wire page §1.9): tags 1, 2, 4 (min 1), 5 (max 3).
    captured = b"\x0a\x24" + P.encode() + b"\x12\x24" + E.encode() + b"\x20\x01\x28\x03"
    req = BINARY.decode(captured, pb.CreateWarmPoolRequest)
    assert (req.project_id, req.environment_class_id, req.min_size, req.max_size) == (P, E, 1, 3)
    assert BINARY.encode(req) == captured
    page2 = BINARY.decode(bytes.fromhex("0a0e0801120a746f6b2d706167652d32"), pb.ListWarmPoolsRequest)
    assert (page2.pagination.page_size, page2.pagination.token) == (1, "tok-page-2")


def test_binary_round_trip_of_a_warm_pool():
    msg = gitpod.warm_pool_message(pool(snapshot_id="snap"))
    back = BINARY.decode(BINARY.encode(msg), pb.WarmPool)
    assert back == msg and back.spec.spec_version == 12345678901


# ---- the Stainless pagination query merge ----------------------------------------------------------

def run_merge(query: bytes, body: bytes, ctype: bytes = b"application/json",
              path: str = "/api/gitpod.v1.PrebuildService/ListWarmPools") -> bytes:
    seen: dict = {}

    async def app(scope, receive, send):
        seen["body"] = (await receive())["body"]
        seen["length"] = dict(scope["headers"]).get(b"content-length")

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": path, "query_string": query, "headers": [(b"content-type", ctype)]}
    asyncio.run(PaginationQueryMerge(app)(scope, receive, None))
    if seen["length"] is not None:  # a rewritten body must carry its new length
        assert int(seen["length"]) == len(seen["body"])
    return seen["body"]


def test_query_token_and_page_size_override_the_body():
    out = json.loads(run_merge(b"token=abc&pageSize=2", b'{"filter": {}, "pagination": {"pageSize": 5, "token": "old"}}'))
    assert out == {"filter": {}, "pagination": {"pageSize": 2, "token": "abc"}}


def test_query_merge_leaves_other_requests_alone():
    assert run_merge(b"token=abc", b"\x0a\x00", ctype=b"application/proto") == b"\x0a\x00"
    assert run_merge(b"other=1", b'{"a": 1}') == b'{"a": 1}'
    assert run_merge(b"token=abc", b'{"broken') == b'{"broken'
    # Only List* requests have `pagination`: a stray ?token= elsewhere must not add an unknown field.
    get = b'{"warmPoolId": "x"}'
    assert run_merge(b"token=abc", get, path="/api/gitpod.v1.PrebuildService/GetWarmPool") == get


def test_query_page_size_replaces_a_snake_case_twin():
    out = json.loads(run_merge(b"pageSize=2", b'{"pagination": {"page_size": 5}}'))
    assert out == {"pagination": {"pageSize": 2}}
