"""The official Gitpod/Ona clients, unchanged, against `warmpool api`: gitpod-sdk 1.2.0 (Connect, binary
proto) and 0.11.0 (Stainless, JSON, retries, auto-pager). Each scenario runs in one client subprocess."""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from app.db import session_scope
from app.domain import pools
from tests.conftest import make_catalog, make_org
from tests.e2e.conftest import Server, client_dir, run_client

pytestmark = pytest.mark.e2e
VERSIONS = ["1.2.0", "0.11.0"]

# Logical RPC -> (gitpod-sdk 1.2.0 service call, gitpod-sdk 0.11.0 resource method)
OPS = {
    "CreateEnvironmentClass": ("runner_configuration.CreateEnvironmentClass", "runners.configurations.environment_classes.create"),
    "GetEnvironmentClass": ("runner_configuration.GetEnvironmentClass", "runners.configurations.environment_classes.retrieve"),
    "CreateProject": ("project.CreateProject", "projects.create"),
    "UpdateProject": ("project.UpdateProject", "projects.update"),
    "CreateWarmPool": ("prebuild.CreateWarmPool", "prebuilds.create_warm_pool"),
    "GetWarmPool": ("prebuild.GetWarmPool", "prebuilds.retrieve_warm_pool"),
    "UpdateWarmPool": ("prebuild.UpdateWarmPool", "prebuilds.update_warm_pool"),
    "DeleteWarmPool": ("prebuild.DeleteWarmPool", "prebuilds.delete_warm_pool"),
    "ListWarmPools": ("prebuild.ListWarmPools", "prebuilds.list_warm_pools"),
}


def snake_keys(value: Any) -> Any:
    """Stainless takes snake_case kwargs and TypedDict keys; the 1.2.0 script takes proto-JSON."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


def step(version: str, rpc: str, *, save: str | None = None, token: str | None = None, **args: Any) -> dict:
    connect_op, stainless_op = OPS[rpc]
    out: dict[str, Any] = {"op": connect_op, "args": args} if version == "1.2.0" else {"op": stainless_op, "args": snake_keys(args)}
    if save:
        out["save"] = save
    if token:
        out["token"] = token
    return out


def run(version: str, api: Server, token: str, steps: list[dict]) -> list[dict]:
    results = run_client(version, {"base_url": api.api, "token": token, "steps": steps})
    assert len(results) == len(steps)
    return results


def ok(result: dict) -> dict:
    assert "ok" in result, result
    return result["ok"]


def project_args(name: str, class_ids: list[str]) -> dict:
    return {"name": name, "initializer": {"specs": [{"git": {"remoteUri": f"https://github.com/acme/{name}"}}]},
            "prebuildConfiguration": {"enabled": True, "environmentClassIds": class_ids, "timeout": "3600s"}}


def live_pools(project_id: str, ec_id: str) -> list[str]:
    with session_scope() as s:
        return [p.id for p in pools.pools_of_pair(project_id, ec_id, session=s)]


def test_a_missing_client_fails_and_says_how_to_install_it():
    with pytest.raises(pytest.fail.Exception, match="run `make clients`"):
        client_dir("0.0.0-not-installed")


# ---- set-up, create, get, update, delete --------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_warm_pool_lifecycle(api, version):
    w = make_catalog(make_org())
    pid, ecid = "$project.project.id", "$ec.id"
    s = lambda rpc, **kw: step(version, rpc, **kw)  # noqa: E731
    steps = [
        s("CreateEnvironmentClass", save="ec", runnerId=w.runner_id, displayName="large class",
          description="a large class", configuration=[{"key": "image", "value": "ubuntu:24.04"}]),
        s("GetEnvironmentClass", environmentClassId=ecid),
        s("CreateProject", save="project", **project_args("svc", [ecid])),
        s("CreateWarmPool", save="pool", projectId=pid, environmentClassId=ecid, minSize=0, maxSize=2),
        s("GetWarmPool", warmPoolId="$pool.warmPool.id"),
        s("UpdateWarmPool", warmPoolId="$pool.warmPool.id", maxSize=4),
        s("UpdateWarmPool", warmPoolId="$pool.warmPool.id", minSize=None, maxSize=5),  # Stainless sends null
        s("UpdateWarmPool", warmPoolId="$pool.warmPool.id", maxSize=5),  # no change
        s("UpdateWarmPool", warmPoolId="$pool.warmPool.id", desiredSize=3),
        s("UpdateWarmPool", warmPoolId="$pool.warmPool.id", minSize=0),  # 0 is a value, not absence
        s("DeleteWarmPool", warmPoolId="$pool.warmPool.id"),
        s("GetWarmPool", warmPoolId="$pool.warmPool.id"),
        s("DeleteWarmPool", warmPoolId="$pool.warmPool.id"),
        s("UpdateWarmPool", warmPoolId="$pool.warmPool.id", maxSize=6),
        s("CreateWarmPool", projectId=pid, environmentClassId=ecid, desiredSize=2),
    ]
    steps[14]["save"] = "fresh"
    steps += [
        # Removing the class from the project's prebuild configuration deletes its pool.
        s("UpdateProject", projectId=pid, prebuildConfiguration={"enabled": True, "environmentClassIds": []}),
        s("GetWarmPool", warmPoolId="$fresh.warmPool.id"),
    ]
    if version == "0.11.0":
        steps[3]["probe"] = ["warm_pool.metadata.created_at", "warm_pool.status.phase"]
    else:
        steps[4]["use_get"] = True  # a NO_SIDE_EFFECTS read as a Connect GET, binary
    r = run(version, api, w.token, steps)

    ec = ok(r[1])["environmentClass"]
    assert (ec["displayName"], ec["runnerId"], ec["configuration"]) == ("large class", w.runner_id,
                                                                        [{"key": "image", "value": "ubuntu:24.04"}])
    project = ok(r[2])["project"]
    assert project["prebuildConfiguration"]["environmentClassIds"] == [ok(r[0])["id"]]
    created = ok(r[3])["warmPool"]
    assert created["metadata"]["projectId"] == project["id"]
    assert created["metadata"]["environmentClassId"] == ok(r[0])["id"]
    assert created["metadata"]["runnerId"] == w.runner_id
    assert created["spec"]["minSize"] == 0 and created["spec"]["maxSize"] == 2
    assert created["spec"]["specVersion"] == "1"
    assert created["status"]["phase"] == "WARM_POOL_PHASE_PENDING"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", created["metadata"]["createdAt"])
    if version == "0.11.0":
        assert r[3]["probe"]["warm_pool.metadata.created_at"][0] == "datetime"
        assert r[3]["probe"]["warm_pool.status.phase"] == ["str", "WARM_POOL_PHASE_PENDING"]
        assert json.loads(r[6]["requests"][0]["body"]) == {"warmPoolId": created["id"], "minSize": None, "maxSize": 5}
    assert ok(r[4])["warmPool"] == created

    sizes = [(ok(x)["warmPool"]["spec"].get("minSize"), ok(x)["warmPool"]["spec"]["maxSize"],
              ok(x)["warmPool"]["spec"]["specVersion"]) for x in r[5:10]]
    assert sizes == [(0, 4, "2"), (0, 5, "3"), (0, 5, "3"), (3, 3, "4"), (0, 3, "5")]

    assert ok(r[10]) == {}
    deleting = ok(r[11])["warmPool"]
    assert deleting["status"]["phase"] == "WARM_POOL_PHASE_DELETING"
    assert deleting["spec"]["desiredPhase"] == "WARM_POOL_PHASE_DELETED"
    assert ok(r[12]) == {}  # idempotent
    assert r[13]["error"]["code"] == "failed_precondition"
    fresh = ok(r[14])["warmPool"]
    assert fresh["id"] != created["id"]
    assert (fresh["spec"]["minSize"], fresh["spec"]["maxSize"]) == (2, 2)
    assert ok(r[15])["project"]["prebuildConfiguration"].get("environmentClassIds", []) == []
    assert ok(r[16])["warmPool"]["status"]["phase"] == "WARM_POOL_PHASE_DELETING"
    assert live_pools(project["id"], ec["id"]) == []


# ---- paging ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_list_warm_pools_across_pages(api, version):
    w = make_catalog(make_org())
    s = lambda rpc, **kw: step(version, rpc, **kw)  # noqa: E731
    steps = [s("CreateEnvironmentClass", save=f"ec{i}", runnerId=w.runner_id, displayName=f"class {i}") for i in range(2)]
    steps += [s("CreateProject", save=f"p{j}", **project_args(f"svc{j}", ["$ec0.id", "$ec1.id"])) for j in range(4)]
    pairs = [(j, i) for j in range(4) for i in range(2)][:7]  # 7 pools: the last page is partial
    steps += [s("CreateWarmPool", projectId=f"$p{j}.project.id", environmentClassId=f"$ec{i}.id", maxSize=1) for j, i in pairs]
    n_setup = len(steps)
    if version == "1.2.0":
        steps += [
            {"op": "list_all:prebuild.ListWarmPools", "args": {}, "page_size": 2, "items": "warmPools"},
            {"op": "list_all:prebuild.ListWarmPools", "args": {}, "page_size": 100, "items": "warmPools"},
            {"op": "list_all:prebuild.ListWarmPools", "args": {"filter": {"projectIds": ["$p0.project.id"]}},
             "page_size": 1, "items": "warmPools"},
        ]
    else:
        steps += [
            {"op": "iterate:prebuilds.list_warm_pools", "args": {"page_size": 2}},
            {"op": "iterate:prebuilds.list_warm_pools", "args": {"pagination": {"page_size": 3}}},
            {"op": "iterate:prebuilds.list_warm_pools", "args": {"page_size": 1, "filter": {"project_ids": ["$p0.project.id"]}}},
        ]
    r = run(version, api, w.token, steps)
    created = [ok(x)["warmPool"]["id"] for x in r[n_setup - 7:n_setup]]
    small, big, filtered = (ok(x) for x in r[n_setup:])
    for listing in (small, big):
        ids = [p["id"] for p in listing["items"]]
        assert listing["stopped"], "the pager did not stop"
        assert sorted(ids) == sorted(created) and len(ids) == len(set(ids)) == 7
    p0 = ok(r[2])["project"]["id"]
    assert sorted(p["id"] for p in filtered["items"]) == sorted(created[:2])
    assert all(p["metadata"]["projectId"] == p0 for p in filtered["items"])
    if version == "1.2.0":
        assert (small["pages"], big["pages"], filtered["pages"]) == (4, 1, 2)
    else:
        # Stainless re-POSTs the same body with ?token=: one request per page, then it stops.
        urls = [q["url"] for q in r[n_setup]["requests"]]
        assert len(urls) == 4 and "token=" not in urls[0] and all("token=" in u for u in urls[1:])
        assert all("pageSize=2" in u for u in urls)
        assert len(r[n_setup + 1]["requests"]) == 3
        assert len(r[n_setup + 2]["requests"]) == 2


# ---- errors -------------------------------------------------------------------------------------------

EXPECTED = {
    # code: (1.2.0 ona_sdk class, 0.11.0 class, HTTP status)
    "already_exists": ("ona_sdk.errors.SDKError", "gitpod.ConflictError", 409),
    "invalid_argument": ("ona_sdk.errors.ValidationError", "gitpod.BadRequestError", 400),
    "failed_precondition": ("ona_sdk.errors.EnvironmentPolicyError", "gitpod.BadRequestError", 400),
    "not_found": ("ona_sdk.errors.NotFoundError", "gitpod.NotFoundError", 404),
    "unauthenticated": ("ona_sdk.errors.AuthenticationRequiredError", "gitpod.AuthenticationError", 401),
}


def assert_error(version: str, result: dict, code: str) -> dict:
    assert "error" in result, result
    err = result["error"]
    sdk_class, stainless_class, status = EXPECTED[code]
    assert err["code"] == code, err
    if version == "1.2.0":
        assert err["class"] == "connectrpc.errors.ConnectError", err
        assert err["sdk_class"] == sdk_class, err
        assert err["message"] and "internal" not in err["message"].lower()
    else:
        assert (err["class"], err["status"], err["is_exported"]) == (stainless_class, status, True), err
        assert err["body"]["code"] == code and err["body"]["message"]
    return err


@pytest.mark.parametrize("version", VERSIONS)
def test_each_error_has_the_clients_exception_and_code(api, version):
    w = make_catalog(make_org())
    other = make_catalog(make_org("someone-else"))
    with session_scope() as sess:
        other_pool = pools.create_warm_pool(other.org_id, other.project_id, other.env_class_id,
                                            min_size=0, max_size=1, session=sess)
    s = lambda rpc, **kw: step(version, rpc, **kw)  # noqa: E731
    nobody = str(uuid.uuid4())
    steps = [
        s("CreateWarmPool", save="pool", projectId=w.project_id, environmentClassId=w.env_class_id, minSize=1, maxSize=2),
        s("CreateWarmPool", projectId=w.project_id, environmentClassId=w.env_class_id, minSize=1, maxSize=2),
        s("CreateWarmPool", projectId=w.project_id, environmentClassId=w.env_class_id, minSize=3, maxSize=2),
        s("CreateEnvironmentClass", save="ec2", runnerId=w.runner_id, displayName="not prebuilt"),
        s("CreateWarmPool", projectId=w.project_id, environmentClassId="$ec2.id", minSize=0, maxSize=1),
        s("GetWarmPool", warmPoolId=nobody),
        s("UpdateWarmPool", warmPoolId=nobody, maxSize=2),
        s("DeleteWarmPool", warmPoolId=nobody),
        s("GetWarmPool", warmPoolId=other_pool.id),
        s("CreateWarmPool", projectId=other.project_id, environmentClassId=other.env_class_id, minSize=0, maxSize=1),
        s("GetWarmPool", warmPoolId="$pool.warmPool.id", token="wp_not-a-real-token"),
        s("UpdateWarmPool", warmPoolId="$pool.warmPool.id", minSize=5),  # above the stored max 2
        s("ListWarmPools"),
    ]
    r = run(version, api, w.token, steps)
    pool = ok(r[0])["warmPool"]
    dup = assert_error(version, r[1], "already_exists")
    assert pool["id"] in (dup["message"] if version == "1.2.0" else dup["body"]["message"])
    assert_error(version, r[2], "invalid_argument")
    assert_error(version, r[4], "failed_precondition")
    for i in (5, 6, 7, 8, 9):
        assert_error(version, r[i], "not_found")
    assert_error(version, r[10], "unauthenticated")
    assert_error(version, r[11], "invalid_argument")
    if version == "0.11.0":
        # The SDK retries 409 unless told not to: the server says so, and the client sends one request.
        assert dup["should_retry"] == "false"
        assert len(r[1]["requests"]) == 1
        assert all(len(x["requests"]) == 1 for x in r[2:12])
    # The duplicate was answered consistently: still exactly one pool for the pair, unchanged.
    listed = ok(r[12])["warmPools"]
    assert [p["id"] for p in listed] == [pool["id"]]
    assert (listed[0]["spec"]["minSize"], listed[0]["spec"]["maxSize"], listed[0]["spec"]["specVersion"]) == (1, 2, "1")
    assert live_pools(w.project_id, w.env_class_id) == [pool["id"]]
    assert live_pools(other.project_id, other.env_class_id) == [other_pool.id]
