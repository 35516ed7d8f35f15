"""openYuanrong pod pools over plain HTTP against a running `warmpool api`: every PoolInfo field round
trips, the documented paging, every documented error in upstream's envelope, group delete, and update
of a pool in each status 0..6 (statuses reached by setting the engine's columns in the database)."""
from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.db import get_engine, session_scope
from app.domain import tenancy
from tests.conftest import World, make_org

pytestmark = pytest.mark.e2e
PATH = "/serverless/v1/podpools"
JSON_CT = "application/json; charset=utf-8"
NOT_FOUND_MSG = "pool does not exist or has been deleted. check input parameters"

RES = {"requests": {"cpu": "600m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
FULL: dict[str, Any] = {
    "id": "pool-full", "group": "rg1", "size": 1, "max_size": 3, "reuse": True,
    "image": "registry.example/runtime-manager:1.2", "init_image": "registry.example/function-agent-init:1.2",
    "labels": {"team": "ml", "tier": "warm"}, "environment": {"LOG_LEVEL": "debug", "X_MODE": "fast"},
    "node_selector": {"disktype": "ssd"},
    # A volume type the operator allows by default (hostPath is refused unless allowed: tests/security).
    "volumes": json.dumps([{"name": "data", "configMap": {"name": "runtime-config"}}]),
    "volume_mounts": json.dumps([{"name": "data", "mountPath": "/mnt/data", "readOnly": True}]),
    "affinities": json.dumps({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}}),
    "tolerations": json.dumps([{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    "horizontal_pod_autoscaler_spec": "",
    "topology_spread_constraints": json.dumps([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                                                "labelSelector": {"matchLabels": {"team": "ml"}}}]),
    "resources": RES, "runtime_class_name": "kata", "pod_pending_duration_threshold": 300,
    "idle_recycle_time": {"reserved": 80, "scaled": 20},
}


@pytest.fixture
def world(api, monkeypatch) -> World:
    from config.settings import get_settings

    monkeypatch.setenv("WARMPOOL_PROVIDERS__KUBERNETES__NAMESPACES", "pools")  # the operator offers this namespace
    get_settings.cache_clear()
    w = make_org()
    with session_scope() as s:
        w.runner_id = tenancy.create_runner(w.org_id, "k8s", "kubernetes", {"namespace": "pools"}, session=s).id
    return w


@pytest.fixture
def http(api, world: World) -> httpx.Client:
    with httpx.Client(base_url=api.url, timeout=10, headers={"Authorization": f"Bearer {world.token}"}) as client:
        yield client


def row(name: str) -> dict[str, Any]:
    with get_engine().connect() as conn:
        r = conn.execute(sa.text("SELECT * FROM pools WHERE name = :n ORDER BY created_at DESC LIMIT 1"), {"n": name}).mappings().first()
    assert r is not None, f"no pool row {name}"
    return dict(r)


def set_pool(name: str, sql: str, **params: Any) -> None:
    with get_engine().begin() as conn:
        n = conn.execute(sa.text(f"UPDATE pools SET {sql} WHERE name = :name AND phase <> 'deleted'"), {"name": name, **params}).rowcount
    assert n == 1


def mark_reconciled(name: str) -> None:
    """What a reconcile pass after the last spec change leaves behind."""
    set_pool(name, "reconciled_at = (extra->>'spec_changed_at')::timestamptz + interval '1 millisecond', needs_reconcile = false")


def create(http: httpx.Client, *pools: dict[str, Any], headers: dict | None = None) -> httpx.Response:
    return http.post(PATH, json={"pools": list(pools)}, headers=headers)


def get_one(http: httpx.Client, pool_id: str) -> dict[str, Any]:
    r = http.get(PATH, params={"id": pool_id})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["count"] == 1, r.text
    return r.json()["result"]["pools"][0]


def ok(r: httpx.Response, result: Any = None) -> None:
    assert (r.status_code, r.json()) == (200, {"code": 0, "message": "", "result": result}), r.text
    assert r.headers["content-type"] == JSON_CT


def err(r: httpx.Response, status: int, code: int, contains: str = "") -> str:
    body = r.json()
    assert (r.status_code, body["code"]) == (status, code), r.text
    assert r.headers["content-type"] == JSON_CT
    assert contains in body["message"], body["message"]
    assert "Traceback" not in r.text
    return body["message"]


def minimal(pool_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": pool_id, "resources": RES, **fields}


# ---- create and query ---------------------------------------------------------------------------

def test_every_field_round_trips_and_is_stored_for_the_engine(http: httpx.Client, world: World) -> None:
    ok(create(http, FULL, headers={"X-Tenant-ID": "tenant-7"}), {"failed_pools": None})
    got = get_one(http, "pool-full")
    expected = {k: v for k, v in FULL.items()}
    expected.update(scalable=True, ready_count=0, status=0, msg="New")
    assert got == expected

    r = row("pool-full")
    assert (r["kind"], r["group_name"], r["tenant_id"], r["runner_id"]) == ("podpool", "rg1", "tenant-7", world.runner_id)
    assert (r["min_size"], r["max_size"], r["desired_size"], r["stopped_size"], r["reuse"]) == (1, 3, 1, 0, True)
    assert (r["idle_recycle_reserved"], r["idle_recycle_scaled"]) == (80, 20)
    assert r["labels"] == {"team": "ml", "tier": "warm"}
    assert r["needs_reconcile"] is True  # reconcile_pool was deferred
    t = r["template"]
    assert t["image"] == FULL["image"] and t["init_image"] == FULL["init_image"]
    assert t["resources"] == RES and t["environment"] == FULL["environment"] and t["node_selector"] == {"disktype": "ssd"}
    assert t["labels"] == {"team": "ml", "tier": "warm", "rg1": "rg1"}
    assert t["annotations"] == {"yr-pod-pool": "pool-full"}
    assert t["volumes"] == json.loads(FULL["volumes"]) and t["volume_mounts"] == json.loads(FULL["volume_mounts"])
    assert t["affinity"] == json.loads(FULL["affinities"]) and t["tolerations"] == json.loads(FULL["tolerations"])
    assert t["topology_spread_constraints"] == json.loads(FULL["topology_spread_constraints"])
    assert (t["runtime_class_name"], t["pod_pending_duration_threshold"]) == ("kata", 300)


def test_defaults_and_fixed_size_pools(http: httpx.Client) -> None:
    ok(create(http, minimal("p-min"), minimal("p-fixed", size=3, labels={"yr-idle-to-recycle": 5}),
              minimal("p-never", size=2, max_size=2, labels={"yr-idle-to-recycle": "unlimited"},
                      idle_recycle_time={"reserved": 30, "scaled": 0}, horizontal_pod_autoscaler_spec='{"minReplicas":2}'),
              minimal("p-mixed", size=1, max_size=3, labels={"yr-idle-to-recycle": "45"}, idle_recycle_time={"scaled": 7})),
       {"failed_pools": None})
    got = get_one(http, "p-min")
    assert got == {
        "id": "p-min", "group": "default", "size": 0, "max_size": 0, "reuse": False, "scalable": False, "ready_count": 0,
        "status": 0, "msg": "New", "image": "", "init_image": "", "labels": None, "environment": None,
        "node_selector": None, "resources": RES, "volumes": "", "volume_mounts": "", "affinities": "", "tolerations": "",
        "horizontal_pod_autoscaler_spec": "", "topology_spread_constraints": "", "runtime_class_name": "",
        "pod_pending_duration_threshold": 0, "idle_recycle_time": {"reserved": 0, "scaled": 0},
    }
    assert row("p-min")["template"]["pod_pending_duration_threshold"] == 120  # 0 -> the 120 s default
    assert (row("p-min")["idle_recycle_reserved"], row("p-min")["idle_recycle_scaled"]) == (-1, -1)
    fixed = get_one(http, "p-fixed")
    assert (fixed["size"], fixed["max_size"], fixed["scalable"], fixed["labels"]) == (3, 3, False, {"yr-idle-to-recycle": "5"})
    # A fixed-size pool recycles idle pods per the label; idle_recycle_time only applies to scalable pools.
    assert (row("p-fixed")["idle_recycle_reserved"], row("p-fixed")["idle_recycle_scaled"]) == (5, -1)
    assert (row("p-never")["idle_recycle_reserved"], row("p-never")["idle_recycle_scaled"]) == (-1, -1)
    assert get_one(http, "p-never")["horizontal_pod_autoscaler_spec"] == '{"minReplicas":2}'
    # Scalable: idle_recycle_time where set, else the label (as openYuanrong labels its scaled-up pods).
    assert (row("p-mixed")["idle_recycle_reserved"], row("p-mixed")["idle_recycle_scaled"]) == (45, 7)
    assert get_one(http, "p-mixed")["idle_recycle_time"] == {"reserved": 0, "scaled": 7}


def test_paging_counts_and_filters(http: httpx.Client) -> None:
    ids = [f"p{n:02d}" for n in range(12)]
    ok(create(http, *[minimal(i, group="ga" if n < 7 else "gb") for n, i in enumerate(ids)]), {"failed_pools": None})

    def page(**params: Any) -> tuple[int, list[str]]:
        r = http.get(PATH, params=params)
        assert r.status_code == 200 and r.json()["code"] == 0, r.text
        return r.json()["result"]["count"], [p["id"] for p in r.json()["result"]["pools"]]

    assert page() == (12, ids[:10])  # limit defaults to 10, first page
    assert page(offset=0) == page(offset=1) == (12, ids[:10])
    assert page(offset=2) == (12, ids[10:])
    assert page(offset=3) == (12, [])
    assert page(limit=5, offset=3) == (12, ids[10:])
    assert page(limit=5, offset=2) == (12, ids[5:10])
    assert page(limit=0) == page(limit=-3) == page(offset=-1) == (0, [])
    assert page(group="gb") == (5, ids[7:])
    assert page(group="ga", limit=3, offset=3) == (7, ids[6:7])
    assert page(id="p03") == (1, ["p03"])
    assert page(id="p03", group="gb") == (0, [])
    assert page(id="nope") == (0, [])
    err(http.get(PATH, params={"limit": "ten"}), 500, 4104, "limit must be an integer")
    # Another organization sees none of them.
    other = make_org("other")
    r = http.get(PATH, headers={"Authorization": f"Bearer {other.token}"})
    assert r.json()["result"] == {"count": 0, "pools": []}


# ---- errors ------------------------------------------------------------------------------------

BAD_POOLS = [
    (minimal("Upper"), "pod pool id can contain only lowercase letters"),
    (minimal("a" * 41), "pod pool id can contain only lowercase letters"),
    (minimal("-a"), "cannot start or end with '-'"),
    (minimal(""), "pod pool id can contain only"),
    (minimal("p", group="bad_group"), "pod pool group can contain only letters"),
    (minimal("p", group="g" * 41), "pod pool group can contain only letters"),
    (minimal("p", size=-1), "size is less than 0"),
    (minimal("p", size=3, max_size=2), "max_size is less than size"),
    (minimal("p", size=1, max_size=2, horizontal_pod_autoscaler_spec='{"maxReplicas":3}'),
     "max_size greater than size and horizontal_pod_autoscaler_spec cannot be set at the same time"),
    (minimal("p", idle_recycle_time={"reserved": -2}), "idle time of reserved should not less than -1"),
    (minimal("p", idle_recycle_time={"scaled": -5}), "idle time of scaled should not less than -1"),
    (minimal("p", image="i" * 201), "image len is not in [1, 200]"),
    (minimal("p", init_image="i" * 201), "init image len is not in [1, 200]"),
    (minimal("p", runtime_class_name="r" * 65), "runtime_class_name should not greater than 64"),
    (minimal("p", pod_pending_duration_threshold=-1), "pod_pending_duration_threshold should not be less than 0"),
    ({"id": "p"}, "resources is required"),
    ({"id": "p", "resources": {"requests": {}, "limits": {}}}, "resources is required"),
    (minimal("p", resources={"requests": {"cpu": "lots"}}), "is not a Kubernetes quantity"),
    (minimal("p", volumes="[{oops"), "volumes is not valid JSON"),
    (minimal("p", volume_mounts='{"name":"x"}'), "volume_mounts must be a string holding an array"),
    (minimal("p", affinities="[]"), "affinities must be a string holding a Kubernetes Affinity object"),
    (minimal("p", tolerations="nope"), "tolerations is not valid JSON"),
    (minimal("p", topology_spread_constraints="[1]"), "topology_spread_constraints must be a string holding an array"),
    (minimal("p", size=2, horizontal_pod_autoscaler_spec="{"), "horizontal_pod_autoscaler_spec is not valid JSON"),
    (minimal("p", labels={"yr-idle-to-recycle": "soon"}), "must be a number of seconds or 'unlimited'"),
    (minimal("p", labels={"bad key!": "v"}), "is not a valid Kubernetes label key"),
    (minimal("p", labels={"warmpool.dev/owner": "me"}), "uses the reserved prefix"),
    (minimal("p", node_selector={"zone": "not valid!"}), "is not a valid Kubernetes label value"),
    (minimal("p", environment={"1BAD": "x"}), "environment variable name '1BAD' is invalid"),
]


@pytest.mark.parametrize("pool,detail", BAD_POOLS, ids=[d for _, d in BAD_POOLS])
def test_invalid_pools_are_4104_and_create_nothing(http: httpx.Client, pool: dict, detail: str) -> None:
    message = err(create(http, pool), 500, 4104, detail)
    assert message.startswith(f"failed to create pod pool, id: {pool['id']},err: ")
    assert message.endswith(". check input parameters")
    assert http.get(PATH).json()["result"] == {"count": 0, "pools": []}


WRONG_TYPES = [
    ({"pools": [minimal("p", size="3")]}, "cannot unmarshal string into field pools[0].size of type int"),
    ({"pools": [minimal("p", size=1.5)]}, "cannot unmarshal number 1.5 into field pools[0].size"),
    ({"pools": [minimal("p", size=2**40)]}, "of type int32"),
    ({"pools": [minimal("p", reuse="yes")]}, "into field pools[0].reuse of type bool"),
    ({"pools": [minimal("p", labels=["a"])]}, "cannot unmarshal array into field pools[0].labels"),
    ({"pools": [minimal("p", environment={"A": 1})]}, "into field pools[0].environment.A of type string"),
    ({"pools": [minimal("p", volumes=[{"name": "x"}])]}, "cannot unmarshal array into field pools[0].volumes of type string"),
    ({"pools": [minimal("p", resources="600m")]}, "into field pools[0].resources of type ResourceRequirements"),
    ({"pools": [minimal("p", resources={"requests": {"cpu": 1}})]}, "pools[0].resources.requests.cpu of type string"),
    ({"pools": [minimal("p", idle_recycle_time={"reserved": "80"})]}, "pools[0].idle_recycle_time.reserved of type int"),
    ({"pools": "p"}, "into field pools of type []PoolInfo"),
    ({"pools": [3]}, "into field pools[0] of type PoolInfo"),
    ([minimal("p")], "cannot unmarshal array into a request of type object"),
]


@pytest.mark.parametrize("body,detail", WRONG_TYPES, ids=[d for _, d in WRONG_TYPES])
def test_wrong_json_types_are_130600(http: httpx.Client, body: Any, detail: str) -> None:
    err(http.post(PATH, json=body), 500, 130600, detail)


def test_body_errors_auth_and_not_found(http: httpx.Client, api) -> None:
    err(http.post(PATH, content=b""), 500, 121052, "request body is empty")
    err(http.post(PATH, content=b"{not json", headers={"Content-Type": "application/json"}), 500, 130600, "invalid JSON body")
    err(http.post(PATH, content=b"\xff\xfe", headers={"Content-Type": "application/json"}), 500, 130600, "invalid JSON body")
    err(http.post(PATH, json={"pools": []}), 500, 4104, "pools must contain at least one pool. check input parameters")
    err(http.post(PATH, json={}), 500, 4104, "pools must contain at least one pool")
    err(http.put(f"{PATH}/ghost", json={"size": 1}), 404, 4120, NOT_FOUND_MSG)
    assert http.put(f"{PATH}/ghost", json={"size": 1}).json() == {"code": 4120, "message": NOT_FOUND_MSG}
    err(http.delete(PATH, params={"id": "ghost"}), 404, 4120, NOT_FOUND_MSG)
    err(http.delete(PATH, params={"group": "ghosts"}), 404, 4120, NOT_FOUND_MSG)
    err(http.delete(PATH), 500, 4104, "id and group cannot be empty at the same time. check input parameters")
    ok(create(http, minimal("p1")), {"failed_pools": None})
    err(http.put(f"{PATH}/p1", content=b""), 500, 121052, "request body is empty")
    err(http.put(f"{PATH}/p1", content=b"[1,"), 500, 130600, "invalid JSON body")
    err(http.put(f"{PATH}/p1", json={"size": "2"}), 500, 130600, "into field size of type int")
    err(http.put(f"{PATH}/p1", json={"horizontal_pod_autoscaler_spec": {}}), 500, 130600, "of type string")
    err(create(http, minimal("p1")), 500, 4104, "failed to create pod pool, id: p1,err: pool id already exists or is deleting")
    err(http.post(PATH, json={"pools": [minimal("p2")]}, headers={"X-Tenant-ID": "t" * 65}), 500, 4104, "X-Tenant-ID")

    with httpx.Client(base_url=api.url, timeout=10) as anon:
        for headers in ({}, {"Authorization": "Bearer wp_not-a-token"}, {"Authorization": "Basic abc"}):
            r = anon.get(PATH, headers=headers)
            err(r, 401, 121049)
            assert set(r.json()) == {"code", "message"}
        err(anon.post(PATH, json={"pools": [minimal("p3")]}), 401, 121049, "Authorization")
    assert [p["id"] for p in http.get(PATH).json()["result"]["pools"]] == ["p1"]


def test_partial_create_keeps_the_good_pools(http: httpx.Client) -> None:
    r = create(http, minimal("good-a"), minimal("Bad"), minimal("good-b", size=2), minimal("good-a"))
    message = err(r, 500, 4104)
    assert message == ("failed to create pod pool, id: Bad,err: pod pool id can contain only lowercase letters, digits "
                       "and '-'. it cannot start or end with '-' and cannot exceed 40 characters or less than 1 characters;"
                       "failed to create pod pool, id: good-a,err: pool id already exists or is deleting. check input parameters")
    assert r.json()["result"] == {"failed_pools": ["Bad", "good-a"]}
    assert [p["id"] for p in http.get(PATH).json()["result"]["pools"]] == ["good-a", "good-b"]


# ---- delete ------------------------------------------------------------------------------------

def test_group_delete_and_delete_by_id(http: httpx.Client) -> None:
    ok(create(http, minimal("a1", group="g1"), minimal("a2", group="g1"), minimal("b1", group="g2")), {"failed_pools": None})
    set_pool("b1", "needs_reconcile = false")
    err(http.delete(PATH, params={"id": "b1", "group": "g1"}), 404, 4120, NOT_FOUND_MSG)  # wrong group
    assert row("b1")["deleted_at"] is None

    ok(http.delete(PATH, params={"group": "g1"}))
    pools = http.get(PATH, params={"group": "g1"}).json()["result"]
    assert pools["count"] == 2 and {(p["id"], p["status"], p["msg"]) for p in pools["pools"]} == {("a1", 6, "Deleted"), ("a2", 6, "Deleted")}
    assert all(row(n)["deleted_at"] is not None and row(n)["phase"] == "deleting" and row(n)["needs_reconcile"] for n in ("a1", "a2"))
    assert get_one(http, "b1")["status"] == 0
    ok(http.delete(PATH, params={"group": "g1"}))  # idempotent while draining
    err(create(http, minimal("a1")), 500, 4104, "pool id already exists or is deleting")

    ok(http.delete(PATH, params={"id": "b1", "group": "g2"}))
    assert get_one(http, "b1")["status"] == 6 and row("b1")["needs_reconcile"] is True

    set_pool("a1", "phase = 'deleted'")  # the engine finished draining it
    assert [p["id"] for p in http.get(PATH).json()["result"]["pools"]] == ["a2", "b1"]
    err(http.delete(PATH, params={"id": "a1"}), 404, 4120)
    ok(create(http, minimal("a1")), {"failed_pools": None})
    assert get_one(http, "a1")["status"] == 0


# ---- update in each status ---------------------------------------------------------------------

def put(http: httpx.Client, pool_id: str, **body: Any) -> httpx.Response:
    return http.put(f"{PATH}/{pool_id}", json=body)


def status(http: httpx.Client, pool_id: str) -> tuple[int, str]:
    p = get_one(http, pool_id)
    return p["status"], p["msg"]


def test_update_in_each_status(http: httpx.Client) -> None:
    ok(create(http, minimal("sp", size=1, max_size=4, idle_recycle_time={"reserved": 0, "scaled": 30})), {"failed_pools": None})

    assert status(http, "sp") == (0, "New")
    err(put(http, "sp", size=2, max_size=4), 500, 4104, "pool status is 0 , not allowed to update. check input parameters")

    mark_reconciled("sp")
    assert status(http, "sp") == (1, "Creating")
    ok(put(http, "sp", size=2, max_size=5))
    r = row("sp")
    assert (r["min_size"], r["max_size"], r["desired_size"], r["needs_reconcile"]) == (2, 5, 2, True)
    assert (r["idle_recycle_reserved"], r["idle_recycle_scaled"]) == (-1, 30)

    assert status(http, "sp") == (2, "Update")
    err(put(http, "sp", size=3, max_size=5), 500, 4104, "pool status is 2 , not allowed to update")

    mark_reconciled("sp")
    assert status(http, "sp") == (3, "Updating")
    ok(put(http, "sp", size=3, max_size=0))  # max_size 0 keeps the ceiling of a scalable pool
    assert (get_one(http, "sp")["size"], get_one(http, "sp")["max_size"]) == (3, 5)

    mark_reconciled("sp")
    set_pool("sp", "phase = 'ready', ready_instances = 3")
    assert status(http, "sp") == (4, "Running")
    assert get_one(http, "sp")["ready_count"] == 3
    ok(put(http, "sp", size=3, max_size=3, horizontal_pod_autoscaler_spec='{"minReplicas":3,"maxReplicas":3}'))
    got = get_one(http, "sp")
    assert (got["size"], got["max_size"], got["scalable"]) == (3, 3, False)
    assert got["horizontal_pod_autoscaler_spec"] == '{"minReplicas":3,"maxReplicas":3}'
    assert got["idle_recycle_time"] == {"reserved": 0, "scaled": 30}  # echoed as given
    assert (row("sp")["idle_recycle_reserved"], row("sp")["idle_recycle_scaled"]) == (-1, -1)  # now fixed-size

    mark_reconciled("sp")
    set_pool("sp", "phase = 'degraded', failure_message = 'image pull failed'")
    assert status(http, "sp") == (5, "image pull failed")
    ok(put(http, "sp", size=4, max_size=9))  # a fixed-size pool stays fixed: max_size follows size
    got = get_one(http, "sp")
    assert (got["size"], got["max_size"], got["scalable"], got["horizontal_pod_autoscaler_spec"]) == (4, 4, False, "")

    ok(http.delete(PATH, params={"id": "sp"}))
    assert status(http, "sp") == (6, "Deleted")
    err(put(http, "sp", size=1), 500, 4104, "pool status is 6 , not allowed to update")


def test_update_rules(http: httpx.Client) -> None:
    ok(create(http, minimal("sc", size=1, max_size=4), minimal("fx", size=2)), {"failed_pools": None})
    mark_reconciled("sc")
    mark_reconciled("fx")
    err(put(http, "sc", size=5, max_size=4), 500, 4104, "max_size is less than size")
    err(put(http, "sc", size=-1, max_size=4), 500, 4104, "size is less than 0")
    err(put(http, "sc", size=1, max_size=4, horizontal_pod_autoscaler_spec='{"maxReplicas":4}'), 500, 4104,
        "max_size greater than size and horizontal_pod_autoscaler_spec cannot be set at the same time")
    err(put(http, "fx", size=2, horizontal_pod_autoscaler_spec="{bad"), 500, 4104, "horizontal_pod_autoscaler_spec is not valid JSON")
    assert (row("sc")["min_size"], row("sc")["max_size"], row("sc")["spec_version"]) == (1, 4, 1)

    set_pool("sc", "needs_reconcile = false")
    ok(put(http, "sc", size=1, max_size=4))  # nothing changes: no new spec, no reconcile
    assert (row("sc")["spec_version"], row("sc")["needs_reconcile"], status(http, "sc")[0]) == (1, False, 1)

    ok(http.put(f"{PATH}/sc", json={"max_size": 2, "ignored": True}))  # absent size is Go's zero
    assert (get_one(http, "sc")["size"], get_one(http, "sc")["max_size"]) == (0, 2)
    ok(put(http, "fx", size=5, max_size=1))  # fixed: max_size is forced to size
    assert (get_one(http, "fx")["size"], get_one(http, "fx")["max_size"]) == (5, 5)
