"""Bad input over plain HTTP against `warmpool api`: each gets the right Connect code and HTTP status in
Connect's JSON error format, never a 500, and the stored data is unchanged afterwards."""
from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.db import get_engine, session_scope
from app.domain import catalog, pools
from tests.conftest import World, make_catalog, make_org

pytestmark = pytest.mark.e2e
PREBUILD = "/api/gitpod.v1.PrebuildService/"
PROJECT = "/api/gitpod.v1.ProjectService/"
RUNNER_CONFIG = "/api/gitpod.v1.RunnerConfigurationService/"
STATUS = {"invalid_argument": 400, "failed_precondition": 400, "unauthenticated": 401, "not_found": 404,
          "already_exists": 409}


@pytest.fixture
def world(api) -> World:
    w = make_catalog(make_org())
    with session_scope() as s:
        w.pool_id = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=1, max_size=3, session=s).id
    return w


@pytest.fixture
def http(api) -> httpx.Client:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


def stored() -> dict[str, list]:
    """Everything a bad request could have changed."""
    with get_engine().connect() as conn:
        return {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))]
                for t in ("pools", "projects", "environment_classes", "prebuilds", "organizations", "runners")}


def post(http: httpx.Client, path: str, body: Any, token: str | None, *, ctype: str | None = "application/json",
         params: dict | None = None) -> httpx.Response:
    headers = {}
    if ctype:
        headers["Content-Type"] = ctype
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=content, headers=headers, params=params)


def assert_connect_error(resp: httpx.Response, code: str, status: int | None = None, match: str = "") -> dict:
    assert resp.status_code == (status or STATUS[code]), (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert body["code"] == code, body
    assert body.get("message"), body
    assert match.lower() in body["message"].lower(), body
    assert "Traceback" not in resp.text
    return body


def check(http: httpx.Client, path: str, body: Any, token: str | None, code: str, *, status: int | None = None,
          match: str = "", **kw: Any) -> None:
    before = stored()
    resp = post(http, path, body, token, **kw)
    assert_connect_error(resp, code, status, match)
    assert stored() == before, f"{path} {body!r} changed stored data"


def test_malformed_and_non_object_json(http, world):
    pid = world.pool_id
    for raw in (b'{"warmPoolId": ', b"{'warmPoolId': 1}", b"[1, 2]", b'"a string"', b"42", b"null", b"\xff\xfe",
                b'{"warmPoolId": "' + pid.encode() + b'", "maxSize": 4,}'):
        check(http, PREBUILD + "UpdateWarmPool", raw, world.token, "invalid_argument")


def test_wrong_content_type(http, world):
    body = {"warmPoolId": world.pool_id, "maxSize": 4}
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/grpc", "application/xml", None):
        check(http, PREBUILD + "UpdateWarmPool", body, world.token, "invalid_argument", status=415, ctype=ctype,
              match="content type")
    resp = post(http, PREBUILD + "GetWarmPool", {"warmPoolId": world.pool_id}, world.token,
                ctype="application/json; charset=utf-8")
    assert resp.status_code == 200 and resp.json()["warmPool"]["id"] == world.pool_id


def test_unknown_fields_are_refused(http, world):
    check(http, PREBUILD + "UpdateWarmPool", {"warmPoolId": world.pool_id, "maxSize": 4, "bogus": 1}, world.token,
          "invalid_argument", match="bogus")
    check(http, PREBUILD + "CreateWarmPool", {"projectId": world.project_id, "environmentClassId": world.env_class_id,
                                              "minSize": 0, "maxSize": 1, "size": 3}, world.token, "invalid_argument")
    check(http, PREBUILD + "ListWarmPools", {"filter": {"projectIds": [], "unknownField": True}}, world.token,
          "invalid_argument")


@pytest.mark.parametrize("sizes, match", [
    ({"minSize": 21}, "min_size must be between 0 and 20"),
    ({"minSize": -1}, "min_size must be between 0 and 20"),
    ({"maxSize": 0}, "max_size must be between 1 and 20"),
    ({"maxSize": 21}, "max_size must be between 1 and 20"),
    ({"minSize": 3, "maxSize": 2}, "min_size must be <= max_size"),
    ({"minSize": 4}, "min_size must be <= max_size"),           # above the stored max of 3
    ({"desiredSize": 0}, "desired_size must be between 1 and 20"),
    ({"desiredSize": 21}, "desired_size must be between 1 and 20"),
    ({"desiredSize": 2, "minSize": 2}, "cannot be combined"),
    ({"minSize": "many"}, ""),
    ({"minSize": 1.5}, ""),
    ({"minSize": 4294967297}, ""),
    ({"minSize": True}, ""),
    ({"maxSize": [3]}, ""),
])
def test_out_of_range_and_mistyped_sizes(http, world, sizes, match):
    check(http, PREBUILD + "UpdateWarmPool", {"warmPoolId": world.pool_id, **sizes}, world.token, "invalid_argument",
          match=match)


@pytest.mark.parametrize("sizes", [{"minSize": 21, "maxSize": 21}, {"maxSize": 0}, {"desiredSize": 30}, {},
                                   {"minSize": 2, "maxSize": 1}])
def test_create_with_bad_sizes_stores_nothing(http, world, sizes):
    # A class that would get a pool if the sizes were good.
    with session_scope() as s:
        ec = catalog.create_environment_class(world.org_id, world.runner_id, "free", "", [], session=s).id
        catalog.update_project(world.org_id, world.project_id, {"prebuildConfiguration": {
            "enabled": True, "environmentClassIds": [world.env_class_id, ec]}}, session=s)
    check(http, PREBUILD + "CreateWarmPool", {"projectId": world.project_id, "environmentClassId": ec, **sizes},
          world.token, "invalid_argument")


@pytest.mark.parametrize("path, body, match", [
    (PREBUILD + "GetWarmPool", {"warmPoolId": "abc"}, "warm_pool_id must be a UUID"),
    (PREBUILD + "GetWarmPool", {}, "warm_pool_id is required"),
    (PREBUILD + "DeleteWarmPool", {"warmPoolId": "../../etc/passwd"}, "UUID"),
    (PREBUILD + "UpdateWarmPool", {"warmPoolId": "12345", "maxSize": 2}, "UUID"),
    (PREBUILD + "GetWarmPool", {"warmPoolId": 12345}, ""),
    (PREBUILD + "CreateWarmPool", {"projectId": "p", "environmentClassId": str(uuid.uuid4()), "maxSize": 1}, "project_id"),
    (PREBUILD + "CreateWarmPool", {"projectId": str(uuid.uuid4()), "environmentClassId": "", "maxSize": 1}, "environment_class_id"),
    (PREBUILD + "ListWarmPools", {"filter": {"projectIds": ["nope"]}}, "UUID"),
    (PREBUILD + "ListWarmPools", {"filter": {"environmentClassIds": ["1"]}}, "UUID"),
    (PREBUILD + "GetPrebuild", {"prebuildId": "x"}, "UUID"),
    (PROJECT + "GetProject", {"projectId": "x"}, "UUID"),
    (PROJECT + "UpdateProject", {"projectId": "$project", "prebuildConfiguration": {"enabled": True,
                                                                                "environmentClassIds": ["x"]}}, "UUID"),
    (RUNNER_CONFIG + "GetEnvironmentClass", {"environmentClassId": "x"}, "UUID"),
    (RUNNER_CONFIG + "CreateEnvironmentClass", {"runnerId": "x", "displayName": "abc"}, "UUID"),
])
def test_non_uuid_ids(http, world, path, body, match):
    body = {k: world.project_id if v == "$project" else v for k, v in body.items()}
    check(http, path, body, world.token, "invalid_argument", match=match)


def test_unknown_and_foreign_ids_are_not_found(http, world):
    other = make_catalog(make_org("other"))
    for path, body in [
        (PREBUILD + "GetWarmPool", {"warmPoolId": str(uuid.uuid4())}),
        (PREBUILD + "DeleteWarmPool", {"warmPoolId": str(uuid.uuid4())}),
        (PREBUILD + "CreateWarmPool", {"projectId": other.project_id, "environmentClassId": other.env_class_id, "maxSize": 1}),
        (PROJECT + "GetProject", {"projectId": other.project_id}),
        (RUNNER_CONFIG + "GetEnvironmentClass", {"environmentClassId": other.env_class_id}),
    ]:
        check(http, path, body, world.token, "not_found")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic dXNlcjpwYXNz", "wp_token-without-scheme",
                                    "Bearer wp_not-a-token"])
def test_missing_or_bad_token_is_unauthenticated(http, world, header):
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    for path, body in [(PREBUILD + "GetWarmPool", {"warmPoolId": world.pool_id}),
                       (PREBUILD + "DeleteWarmPool", {"warmPoolId": world.pool_id}),
                       (PREBUILD + "ListWarmPools", {})]:
        before = stored()
        resp = http.post(path, content=json.dumps(body), headers=headers)
        assert_connect_error(resp, "unauthenticated")
        assert stored() == before


def test_without_a_valid_token_nothing_else_is_looked_at(http, world):
    # Authentication comes first: bad bodies, bad ids and bad content types all answer `unauthenticated`.
    for body, ctype in [(b'{"warmPoolId": ', "application/json"), (b'{"warmPoolId": "x"}', "application/json"),
                        (b"{}", "application/json"), (b"\xff\xff", "application/proto"), (b"{}", "text/plain")]:
        for token in (None, "wp_not-a-token"):
            before = stored()
            assert_connect_error(post(http, PREBUILD + "UpdateWarmPool", body, token, ctype=ctype), "unauthenticated")
            assert stored() == before


def test_stray_query_parameters_are_ignored_outside_lists(http, world):
    resp = post(http, PREBUILD + "GetWarmPool", {"warmPoolId": world.pool_id}, world.token,
                params={"token": "abc", "pageSize": "2"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["warmPool"]["id"] == world.pool_id
    resp = post(http, PREBUILD + "ListWarmPools", {"pagination": {"page_size": 50}}, world.token, params={"pageSize": "1"})
    assert resp.status_code == 200 and len(resp.json()["warmPools"]) == 1


def test_unknown_method_paths_are_404_without_a_body_the_clients_misread(http, world):
    for path in (PREBUILD + "NoSuchMethod", "/api/gitpod.v1.NoSuchService/GetWarmPool", "/api/", "/api/gitpod.v1.PrebuildService"):
        before = stored()
        resp = post(http, path, {"warmPoolId": world.pool_id}, world.token)
        assert resp.status_code == 404, (path, resp.status_code, resp.text)
        assert stored() == before


def test_connect_get_is_only_for_reads(http, world):
    before = stored()
    resp = http.get(PREBUILD + "DeleteWarmPool", params={"connect": "v1", "encoding": "json",
                                                         "message": json.dumps({"warmPoolId": world.pool_id})},
                    headers={"Authorization": f"Bearer {world.token}"})
    assert resp.status_code == 405 and resp.headers["allow"] == "POST", (resp.status_code, resp.text)
    assert stored() == before
    resp = http.get(PREBUILD + "GetWarmPool", params={"connect": "v1", "encoding": "json",
                                                      "message": json.dumps({"warmPoolId": world.pool_id})},
                    headers={"Authorization": f"Bearer {world.token}"})
    assert resp.status_code == 200 and resp.json()["warmPool"]["id"] == world.pool_id


def test_bad_pagination(http, world):
    path = PREBUILD + "ListWarmPools"
    check(http, path, {"pagination": {"pageSize": 101}}, world.token, "invalid_argument", match="pageSize")
    check(http, path, {"pagination": {"pageSize": -1}}, world.token, "invalid_argument", match="pageSize")
    check(http, path, {"pagination": {"token": "garbage"}}, world.token, "invalid_argument", match="page token")
    check(http, path, {}, world.token, "invalid_argument", params={"token": "garbage"}, match="page token")
    check(http, path, {}, world.token, "invalid_argument", params={"pageSize": "abc"})
    check(http, path, {}, world.token, "invalid_argument", params={"pageSize": "1000"}, match="pageSize")
    resp = post(http, path, {"pagination": {"pageSize": 100}}, world.token, params={"pageSize": "1"})
    assert resp.status_code == 200 and len(resp.json()["warmPools"]) == 1  # the query wins, as Stainless expects


def test_binary_garbage_is_invalid_argument(http, world):
    for raw in (b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x08"):
        check(http, PREBUILD + "GetWarmPool", raw, world.token, "invalid_argument", ctype="application/proto")


def test_project_and_class_bad_input(http, world):
    check(http, PROJECT + "CreateProject", {"name": "  "}, world.token, "invalid_argument", match="name")
    check(http, PROJECT + "CreateProject", {"name": "x", "prebuildConfiguration": {"enabled": True,
          "environmentClassIds": [str(uuid.uuid4())]}}, world.token, "invalid_argument", match="not found")
    check(http, PROJECT + "UpdateProject", {"projectId": world.project_id, "prebuildConfiguration": {
          "enabled": True, "environmentClassIds": [world.env_class_id], "timeout": "10s"}}, world.token,
          "invalid_argument", match="timeout")
    check(http, RUNNER_CONFIG + "CreateEnvironmentClass", {"runnerId": world.runner_id, "displayName": "ab"},
          world.token, "invalid_argument", match="display_name")
    check(http, RUNNER_CONFIG + "CreateEnvironmentClass", {"runnerId": world.runner_id, "displayName": "abc",
          "configuration": [{"value": "v"}]}, world.token, "invalid_argument", match="key")



@pytest.mark.parametrize("path, body, match", [
    # Upstream's buf.validate limits (read from the gitpod-sdk 1.2.0 descriptors); beyond the column
    # sizes these used to reach the database and come back as `internal`.
    (PROJECT + "CreateProject", {"name": "n" * 81}, "name"),
    (PROJECT + "CreateProject", {"name": "n" * 300}, "name"),
    (PROJECT + "UpdateProject", {"projectId": "$project", "name": ""}, "name"),
    (PROJECT + "UpdateProject", {"projectId": "$project", "name": "n" * 300}, "name"),
    (RUNNER_CONFIG + "CreateEnvironmentClass", {"runnerId": "$runner", "displayName": "abc", "description": "d" * 201}, "description"),
    (RUNNER_CONFIG + "UpdateEnvironmentClass", {"environmentClassId": "$class", "description": "d" * 300}, "description"),
    (RUNNER_CONFIG + "UpdateEnvironmentClass", {"environmentClassId": "$class", "displayName": "d" * 128}, "display_name"),
])
def test_text_longer_than_upstream_allows(http, world, path, body, match):
    refs = {"$project": world.project_id, "$runner": world.runner_id, "$class": world.env_class_id}
    body = {k: refs.get(v, v) for k, v in body.items()}
    check(http, path, body, world.token, "invalid_argument", match=match)


@pytest.mark.parametrize("path, body", [
    (PROJECT + "CreateProject", {"name": "a\u0000b"}),
    (RUNNER_CONFIG + "CreateEnvironmentClass", {"runnerId": "$runner", "displayName": "ab\u0000c"}),
    (RUNNER_CONFIG + "UpdateEnvironmentClass", {"environmentClassId": "$class", "description": "ab\u0000c"}),
    (PREBUILD + "GetWarmPool", {"warmPoolId": "\u0000"}),
])
def test_nul_characters_in_stored_text_are_invalid_argument(http, world, path, body):
    # PostgreSQL text cannot hold NUL; that used to surface as `internal`.
    refs = {"$project": world.project_id, "$runner": world.runner_id, "$class": world.env_class_id}
    body = {k: refs.get(v, v) for k, v in body.items()}
    check(http, path, body, world.token, "invalid_argument")


def test_nul_characters_are_refused_even_in_fields_kept_as_json(http, world):
    # A NUL byte is refused in every string at the edge (issue 9), also where the JSON column could hold it.
    resp = post(http, PROJECT + "UpdateProject", {"projectId": world.project_id, "technicalDescription": "x\u0000y"},
                world.token)
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_argument", resp.text
    assert "NUL" in resp.json()["message"]
    resp = post(http, PROJECT + "GetProject", {"projectId": world.project_id}, world.token)
    assert resp.json()["project"].get("technicalDescription", "") == ""
