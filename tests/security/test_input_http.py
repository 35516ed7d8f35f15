"""Issue 9's input attacks replayed on the HTTP façades (native /v1, openYuanrong pod pools, Gitpod
Connect in JSON and binary proto, the lease service over Connect): each is refused in the façade's own
error format, and the database shows nothing was stored. A control request beside each family proves
the refusal comes from the attack, not from a request that was wrong anyway."""
from __future__ import annotations

import json

import pytest

from proto.gitpod.v1 import messages_pb2 as gp
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as lp
from tests.security.conftest import BODY_LIMIT, auth, rows

SURROGATE = "\\ud800"  # a lone surrogate, as JSON text writes it
NUL = "\\u0000"
HUGE = "99999999999999999999"
RES = {"requests": {"cpu": "100m", "memory": "64Mi"}}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def post_json(client, path: str, text: str, world, **headers):
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json", **auth(world), **headers})


def chunks(data: bytes, size: int = 8192):
    for start in range(0, len(data), size):
        yield data[start:start + size]


# ---- native admin REST /v1 ---------------------------------------------------------------------

RUNNER = '{"name": %s, "provider": "fake", "settings": %s}'
# Runner settings are the fake provider's typed model (unknown keys are refused on their own), so each
# attack sits in a real setting: what refuses it is the attack, not an unknown key.
RUNNER_ATTACKS = {
    "surrogate in settings": RUNNER % ('"r1"', '{"namespace": "%s"}' % SURROGATE),
    "surrogate in a settings key": RUNNER % ('"r1"', '{"%s": 1}' % SURROGATE),
    "NUL in settings": RUNNER % ('"r1"', '{"namespace": "x%sy"}' % NUL),
    "NUL in name": RUNNER % ('"r%s1"' % NUL, "{}"),
    "integer beyond int64": RUNNER % ('"r1"', '{"seed": %s}' % HUGE),
    "NaN": RUNNER % ('"r1"', '{"boot_ms": NaN}'),
    "nested 40 deep": RUNNER % ('"r1"', '{"namespace": %s}' % deep(40)),
    "nested 30000 deep": RUNNER % ('"r1"', '{"namespace": %s}' % deep(30_000)),
}


def native_error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    return body["message"]


def test_native_control_runner_is_created(client, world):
    r = post_json(client, "/v1/runners", RUNNER % ('"r1"', '{"namespace": "fine", "seed": 7, "boot_ms": 10}'), world)
    assert r.status_code == 201, r.text
    assert rows("runners", world.org_id) == 2


@pytest.mark.parametrize("attack", RUNNER_ATTACKS)
def test_native_runner_attack_is_refused_and_nothing_stored(client, world, attack):
    message = native_error(post_json(client, "/v1/runners", RUNNER_ATTACKS[attack], world), 400, "invalid_argument")
    assert any(word in message for word in ("settings", "name", "body"))
    assert rows("runners", world.org_id) == 1  # only the fixture's own runner


@pytest.mark.parametrize("path", ["/v1/pools/a%00b", "/v1/runners/%00", "/v1/instances/x%00/logs",
                                  "/v1/pools?page_token=%00", "/v1/pools/00000000-0000-0000-0000-000000000000/instances?page_token=a%00"])
def test_native_nul_in_path_or_query_is_invalid_argument(client, world, path):
    assert "NUL" in native_error(client.get(path, headers=auth(world)), 400, "invalid_argument")


@pytest.mark.parametrize("query", [f"page_size={HUGE}", f"page_size=-{HUGE}"])
def test_native_huge_integer_query_is_invalid_argument(client, world, query):
    native_error(client.get(f"/v1/pools?{query}", headers=auth(world)), 422, "invalid_argument")


def test_native_oversize_body_is_413_by_length_and_while_streaming(client, world):
    body = (RUNNER % ('"big"', '{"a": "%s"}' % ("x" * BODY_LIMIT))).encode()
    r = client.post("/v1/runners", content=body, headers={"Content-Type": "application/json", **auth(world)})
    assert "limit" in native_error(r, 413, "too_large")
    r = client.post("/v1/runners", content=chunks(body), headers={"Content-Type": "application/json", **auth(world)})
    assert "limit" in native_error(r, 413, "too_large")
    assert rows("runners", world.org_id) == 1


def test_native_bad_input_without_a_token_is_401_first(client, world):
    r = client.post("/v1/runners", content=RUNNER_ATTACKS["NUL in settings"].encode(),
                    headers={"Content-Type": "application/json"})
    native_error(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"] == "Bearer"


# ---- openYuanrong pod pools --------------------------------------------------------------------

PODPOOLS = "/serverless/v1/podpools"


def pod_pool(**fields) -> dict:
    return {"id": "p1", "group": "g1", "size": 0, "max_size": 1, "resources": RES, **fields}


def raw_pools(*pools: str) -> str:
    return '{"pools": [%s]}' % ", ".join(pools)


POD_POOL_ATTACKS = {
    "surrogate in image": raw_pools('{"id": "p1", "image": "%s", "resources": {}}' % SURROGATE),
    "surrogate in a label": raw_pools('{"id": "p1", "labels": {"a": "%s"}, "resources": {}}' % SURROGATE),
    "NUL in id": raw_pools('{"id": "p%s1", "resources": {}}' % NUL),
    "NUL in group": raw_pools('{"id": "p1", "group": "g%s", "resources": {}}' % NUL),
    "NUL in an environment value": raw_pools('{"id": "p1", "environment": {"A": "%s"}, "resources": {}}' % NUL),
    "size beyond int64": raw_pools('{"id": "p1", "size": %s, "resources": {}}' % HUGE),
    "size beyond int32": raw_pools('{"id": "p1", "size": %d, "resources": {}}' % 2**40),
    "nested 40 deep": '{"pools": %s}' % deep(40),
    "nested 30000 deep": '{"pools": %s}' % deep(30_000),
}


def podpool_error(r, status: int, code: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    return body["message"]


def test_podpool_control_is_created(client, world):
    r = client.post(PODPOOLS, json={"pools": [pod_pool(image="registry.example/rt:1")]}, headers=auth(world))
    assert r.status_code == 200 and r.json()["code"] == 0, r.text
    assert rows("pools", world.org_id) == 1


@pytest.mark.parametrize("attack", POD_POOL_ATTACKS)
def test_podpool_attack_is_refused_and_nothing_stored(client, world, attack):
    podpool_error(post_json(client, PODPOOLS, POD_POOL_ATTACKS[attack], world), 500, 130600)
    assert rows("pools", world.org_id) == 0


@pytest.mark.parametrize("method,path", [
    ("GET", f"{PODPOOLS}?id=a%00b"), ("GET", f"{PODPOOLS}?group=%00"), ("DELETE", f"{PODPOOLS}?id=%00"),
    ("DELETE", f"{PODPOOLS}?group=g%00"), ("PUT", f"{PODPOOLS}/a%00b"),
    ("GET", f"{PODPOOLS}?limit={HUGE}"), ("GET", f"{PODPOOLS}?offset={HUGE}"), ("GET", f"{PODPOOLS}?limit=-{HUGE}"),
])
def test_podpool_bad_parameter_is_4104(client, world, method, path):
    client.post(PODPOOLS, json={"pools": [pod_pool()]}, headers=auth(world))
    r = client.request(method, path, headers=auth(world), json={"size": 1} if method == "PUT" else None)
    podpool_error(r, 500, 4104)
    assert rows("pools", world.org_id) == 1
    assert client.get(f"{PODPOOLS}?id=p1", headers=auth(world)).json()["result"]["pools"][0]["size"] == 0


def test_podpool_oversize_body_is_refused_by_length_and_while_streaming(client, world):
    body = json.dumps({"pools": [pod_pool(image="x" * BODY_LIMIT)]}).encode()
    for content in (body, chunks(body)):
        r = client.post(PODPOOLS, content=content, headers={"Content-Type": "application/json", **auth(world)})
        assert "limit" in podpool_error(r, 413, 4104)
    assert rows("pools", world.org_id) == 0


def test_podpool_bad_input_without_a_token_is_121049(client, world):
    r = client.post(PODPOOLS, content=POD_POOL_ATTACKS["NUL in id"].encode(), headers={"Content-Type": "application/json"})
    podpool_error(r, 401, 121049)


# ---- Gitpod over Connect (JSON and binary proto) -----------------------------------------------

PROJECTS = "/api/gitpod.v1.ProjectService/CreateProject"
CLASSES = "/api/gitpod.v1.RunnerConfigurationService/CreateEnvironmentClass"
WARM_POOLS = "/api/gitpod.v1.PrebuildService/CreateWarmPool"


def connect(client, path: str, world, body: bytes | str, proto: bool = False):
    headers = {"Content-Type": "application/proto" if proto else "application/json", "Connect-Protocol-Version": "1",
               **auth(world)}
    return client.post(path, content=body.encode() if isinstance(body, str) else body, headers=headers)


def connect_error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    return body.get("message", "")


def test_connect_control_project_and_class_are_created(client, world):
    assert connect(client, PROJECTS, world, '{"name": "proj"}').status_code == 200
    ok = gp.CreateEnvironmentClassRequest(runner_id=world.runner_id, display_name="small",
                                          configuration=[gp.FieldValue(key="image", value="alpine")])
    assert connect(client, CLASSES, world, ok.SerializeToString(), proto=True).status_code == 200
    assert (rows("projects", world.org_id), rows("environment_classes", world.org_id)) == (1, 1)


GITPOD_JSON_ATTACKS = {
    "surrogate in a project name": (PROJECTS, '{"name": "%s"}' % SURROGATE),
    "NUL in a project name": (PROJECTS, '{"name": "p%sq"}' % NUL),
    "NUL in a class's configuration": (CLASSES, '{"runnerId": "%%s", "displayName": "small", '
                                                 '"configuration": [{"key": "image", "value": "a%sb"}]}' % NUL),
    "integer beyond int64": (WARM_POOLS, '{"minSize": %s}' % HUGE),
    "integer beyond int32": (WARM_POOLS, '{"minSize": %d}' % 2**40),
    "nested 30000 deep": (PROJECTS, '{"name": %s}' % deep(30_000)),
}


@pytest.mark.parametrize("attack", GITPOD_JSON_ATTACKS)
def test_gitpod_json_attack_is_invalid_argument_and_nothing_stored(client, world, attack):
    path, body = GITPOD_JSON_ATTACKS[attack]
    connect_error(connect(client, path, world, body.replace("%s", world.runner_id)), 400, "invalid_argument")
    assert (rows("projects", world.org_id), rows("environment_classes", world.org_id), rows("pools", world.org_id)) == (0, 0, 0)


@pytest.mark.parametrize("message,path", [
    (gp.CreateProjectRequest(name="p\x00q"), PROJECTS),
    (gp.CreateEnvironmentClassRequest(display_name="sm\x00all", configuration=[gp.FieldValue(key="image", value="a")]), CLASSES),
    (gp.CreateEnvironmentClassRequest(display_name="small", configuration=[gp.FieldValue(key="im\x00age", value="a")]), CLASSES),
])
def test_gitpod_binary_proto_nul_is_invalid_argument_and_nothing_stored(client, world, message, path):
    if path == CLASSES:
        message.runner_id = world.runner_id
    assert "NUL" in connect_error(connect(client, path, world, message.SerializeToString(), proto=True), 400, "invalid_argument")
    assert (rows("projects", world.org_id), rows("environment_classes", world.org_id)) == (0, 0)


def test_gitpod_binary_proto_surrogate_bytes_are_invalid_argument(client, world):
    good = gp.CreateProjectRequest(name="pAq").SerializeToString()
    bad = good.replace(b"pAq", b"p\xed\xa0\x80"[:3])  # UTF-8 bytes of U+D800, which proto forbids
    connect_error(connect(client, PROJECTS, world, bad, proto=True), 400, "invalid_argument")
    assert rows("projects", world.org_id) == 0


def test_connect_oversize_body_is_resource_exhausted(client, world):
    body = json.dumps({"name": "x" * BODY_LIMIT})
    connect_error(connect(client, PROJECTS, world, body), 429, "resource_exhausted")
    r = client.post(PROJECTS, content=chunks(body.encode()), headers={
        "Content-Type": "application/json", "Connect-Protocol-Version": "1", **auth(world)})
    connect_error(r, 429, "resource_exhausted")
    r = client.post("/api/gitpod.v1.PrebuildService/ListWarmPools?token=abc", content=chunks(body.encode()), headers={
        "Content-Type": "application/json", "Connect-Protocol-Version": "1", **auth(world)})
    connect_error(r, 429, "resource_exhausted")
    assert rows("projects", world.org_id) == 0


def test_connect_bad_input_without_a_token_is_unauthenticated(client, world):
    r = client.post(PROJECTS, content=b'{"name": "p\\u0000q"}', headers={"Content-Type": "application/json"})
    connect_error(r, 401, "unauthenticated")


# ---- the lease service over Connect ------------------------------------------------------------

LEASE = "/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Lease"
LEASE_ATTACKS = {
    "NUL in pool": '{"pool": "a%sb", "serviceTag": "t"}' % NUL,
    "NUL in service tag": '{"pool": "a", "serviceTag": "t%s"}' % NUL,
    "surrogate in pool": '{"pool": "%s", "serviceTag": "t"}' % SURROGATE,
    "NUL in reservation id": '{"pool": "a", "serviceTag": "t", "reservationId": "r%s"}' % NUL,
    "nested 30000 deep": '{"pool": %s}' % deep(30_000),
}


@pytest.mark.parametrize("attack", LEASE_ATTACKS)
def test_lease_over_connect_attack_is_invalid_argument_and_nothing_stored(client, world, attack):
    connect_error(connect(client, LEASE, world, LEASE_ATTACKS[attack]), 400, "invalid_argument")
    assert (rows("leases", world.org_id), rows("reservations", world.org_id)) == (0, 0)


def test_lease_over_connect_binary_nul_is_invalid_argument(client, world):
    body = lp.LeaseRequest(pool="a\x00b", service_tag="t").SerializeToString()
    assert "NUL" in connect_error(connect(client, LEASE, world, body, proto=True), 400, "invalid_argument")
