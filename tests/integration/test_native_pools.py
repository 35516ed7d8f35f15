"""The native pool API (POST/PATCH/DELETE /v1/pools, GET/PUT /v1/pools/{id}/schedule) in process on real
PostgreSQL: every knob, the façades' upstream rules, the provider's template model, quotas, and errors
in /v1's {code, message} shape."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.db import session_scope
from app.domain import podpools, tenancy
from app.models import Pool, PoolSchedule
from tests.conftest import World, make_catalog, make_org

pytestmark = pytest.mark.postgres


@pytest.fixture
def client(db, effects_log) -> TestClient:
    from app.main import create_app

    with TestClient(create_app(dispatcher=False), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def acme(db, effects_log) -> World:
    return make_catalog(make_org())  # a member token, a fake runner, a Gitpod class and project


def auth(world: World) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.token}"}


def expect_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    return body["message"]


CI = {"name": "ci", "min_size": 2, "max_size": 10, "template": {"image": "alpine:3"}, "stopped_size": 2,
      "empty_policy": "reject", "lease_default_seconds": 1800, "lease_max_seconds": 86400}


def create(client, world: World, **over) -> dict:
    r = client.post("/v1/pools", json={**CI, "runner_id": world.runner_id, **over}, headers=auth(world))
    assert r.status_code == 201, r.text
    return r.json()


ROUTES = [("POST", "/v1/pools"), ("PATCH", "/v1/pools/{id}"), ("DELETE", "/v1/pools/{id}"),
          ("GET", "/v1/pools/{id}/schedule"), ("PUT", "/v1/pools/{id}/schedule")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_needs_a_valid_token(client, acme, method, path):
    r = client.request(method, path.format(id=acme.runner_id), json={"entries": []},
                       headers={"Authorization": "Bearer wp_nope"})
    expect_error(r, 401, "unauthenticated")


# ---- create ----------------------------------------------------------------------------------------

def test_a_named_pool_is_created_with_every_knob_and_shown_as_get_shows_it(client, acme, effects_log):
    created = create(client, acme, reservation_ttl_seconds=60, idle_recycle_reserved=3600, idle_recycle_scaled=120,
                     rotation_max_surge=3, autoscale_headroom=1.5, autoscale_cooldown_seconds=30)
    assert client.get(f"/v1/pools/{created['id']}", headers=auth(acme)).json() == created
    spec = created["spec"]
    assert created["name"] == "ci" and created["kind"] == "named" and created["status"]["phase"] == "pending"
    assert (spec["min_size"], spec["max_size"], spec["stopped_size"], spec["empty_policy"]) == (2, 10, 2, "reject")
    assert (spec["lease_default_seconds"], spec["lease_max_seconds"], spec["reservation_ttl_seconds"]) == (1800, 86400, 60)
    assert (spec["idle_recycle_reserved"], spec["idle_recycle_scaled"], spec["rotation_max_surge"]) == (3600, 120, 3)
    assert spec["autoscale"] == {"headroom": 1.5, "cooldown": 30.0}
    assert spec["runner_id"] == acme.runner_id and spec["template"] == {"image": "alpine:3"}
    assert spec["spec_version"] == 1 and created["status"]["desired_size"] == 2
    assert ("reconcile_pool", {"pool_id": created["id"]}) in effects_log  # enqueued after commit


def test_a_named_pool_left_unsaid_gets_the_deployment_defaults(client, acme):
    r = client.post("/v1/pools", json={"name": "plain", "runner_id": acme.runner_id, "max_size": 1}, headers=auth(acme))
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert (spec["min_size"], spec["stopped_size"], spec["empty_policy"], spec["lease_default_seconds"]) == (0, 0, "reserve", 1800)


@pytest.mark.parametrize("body,status,code,needle", [
    ({"name": "-ci"}, 422, "invalid_argument", "name"),
    ({"name": "a b"}, 422, "invalid_argument", "name"),
    ({"empty_policy": "panic"}, 422, "invalid_argument", "empty_policy"),
    ({"min_size": -1}, 422, "invalid_argument", "min_size"),
    ({"lease_default_seconds": 0}, 422, "invalid_argument", "lease_default_seconds"),
    ({"idle_recycle_scaled": -2}, 422, "invalid_argument", "idle_recycle_scaled"),
    ({"flavour": "x"}, 422, "invalid_argument", "flavour"),
    ({"min_size": 5, "max_size": 2}, 400, "invalid_argument", "min_size must be <= max_size"),
    ({"lease_default_seconds": 7200, "lease_max_seconds": 3600}, 400, "invalid_argument", "lease_default_seconds"),
    ({"runner_id": "not-a-uuid"}, 400, "invalid_argument", "runner_id"),
    ({"runner_id": "00000000-0000-4000-8000-000000000000"}, 404, "not_found", "runner"),
    ({"min_size": 0, "max_size": 101}, 429, "resource_exhausted", "max_pool_size"),
])
def test_bad_creates_are_refused_in_our_shape(client, acme, body, status, code, needle):
    r = client.post("/v1/pools", json={**CI, "runner_id": acme.runner_id, **body}, headers=auth(acme))
    assert needle in expect_error(r, status, code)
    with session_scope() as s:
        assert s.query(Pool).filter(Pool.kind == "named").count() == 0


def test_templates_are_checked_by_the_runners_provider_model(client, acme):
    with session_scope() as s:
        k8s = tenancy.create_runner(acme.org_id, "k8s", "kubernetes", {}, session=s).id
    for template, needle in (({"image": "x", "hostNetwork": True}, "host"),
                             ({"image": "x", "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "hostPath"),
                             ({"image": "x", "command": "sh -c 'id'"}, "command")):
        r = client.post("/v1/pools", json={**CI, "runner_id": k8s, "template": template}, headers=auth(acme))
        assert needle in expect_error(r, 400, "invalid_argument"), template
    create(client, acme, name="k8s-ok", runner_id=k8s, template={"image": "alpine", "command": ["sleep", "1"]})


def test_a_name_is_taken_once_among_live_pools_and_free_again_after_delete(client, acme):
    first = create(client, acme)
    assert "ci" in expect_error(client.post("/v1/pools", json={**CI, "runner_id": acme.runner_id},
                                            headers=auth(acme)), 409, "already_exists")
    assert client.delete(f"/v1/pools/{first['id']}", headers=auth(acme)).json()["status"]["phase"] == "deleting"
    assert create(client, acme)["id"] != first["id"]


def test_another_organizations_runner_and_pool_are_not_found(client, acme):
    other = make_catalog(make_org("globex"))
    r = client.post("/v1/pools", json={**CI, "runner_id": other.runner_id}, headers=auth(acme))
    expect_error(r, 404, "not_found")
    theirs = create(client, other)
    for method, path, body in (("PATCH", "", {"max_size": 3}), ("DELETE", "", None), ("GET", "/schedule", None),
                               ("PUT", "/schedule", {"entries": []})):
        expect_error(client.request(method, f"/v1/pools/{theirs['id']}{path}", json=body, headers=auth(acme)),
                     404, "not_found")


# ---- update ----------------------------------------------------------------------------------------

def test_patch_changes_any_knob_bumps_the_spec_version_and_reconciles(client, acme, effects_log):
    pool = create(client, acme)
    effects_log.clear()
    r = client.patch(f"/v1/pools/{pool['id']}", json={
        "min_size": 3, "max_size": 12, "stopped_size": 1, "empty_policy": "cold", "lease_default_seconds": 60,
        "lease_max_seconds": 600, "reservation_ttl_seconds": 30, "idle_recycle_reserved": -1,
        "idle_recycle_scaled": 0, "rotation_max_surge": 0, "autoscale_headroom": 0.25, "template": {"image": "alpine:4"},
    }, headers=auth(acme))
    assert r.status_code == 200, r.text
    spec = r.json()["spec"]
    assert spec["spec_version"] == 2  # one change, one version
    assert (spec["min_size"], spec["max_size"], spec["stopped_size"], spec["empty_policy"]) == (3, 12, 1, "cold")
    assert (spec["lease_default_seconds"], spec["lease_max_seconds"], spec["reservation_ttl_seconds"]) == (60, 600, 30)
    assert (spec["idle_recycle_reserved"], spec["idle_recycle_scaled"], spec["rotation_max_surge"]) == (-1, 0, 0)
    assert spec["autoscale"] == {"headroom": 0.25}
    assert spec["template"] == {"image": "alpine:4"} and r.json()["status"]["desired_size"] == 3
    assert effects_log == [("reconcile_pool", {"pool_id": pool["id"]})]
    assert client.get(f"/v1/pools/{pool['id']}", headers=auth(acme)).json() == r.json()
    # The same values again change nothing: no new spec version, no reconcile.
    effects_log.clear()
    again = client.patch(f"/v1/pools/{pool['id']}", json={"empty_policy": "cold", "max_size": 12}, headers=auth(acme))
    assert again.json()["spec"]["spec_version"] == spec["spec_version"] and effects_log == []


def test_patch_refusals(client, acme):
    pool = create(client, acme)
    url = f"/v1/pools/{pool['id']}"
    assert "lease_default_seconds" in expect_error(client.patch(url, json={"lease_default_seconds": 90000},
                                                                headers=auth(acme)), 400, "invalid_argument")
    assert "min_size" in expect_error(client.patch(url, json={"min_size": 11}, headers=auth(acme)), 400, "invalid_argument")
    assert "name" in expect_error(client.patch(url, json={"name": "other"}, headers=auth(acme)), 422, "invalid_argument")
    assert "template" in expect_error(client.patch(url, json={"template": {"image": "x" * 5000}}, headers=auth(acme)),
                                      400, "invalid_argument")  # the fake's template model: strings up to 4096
    client.delete(url, headers=auth(acme))
    assert "deleted" in expect_error(client.patch(url, json={"max_size": 3}, headers=auth(acme)), 409, "failed_precondition")
    assert client.get(url, headers=auth(acme)).json()["spec"]["max_size"] == 10


def test_a_gitpod_warm_pool_gets_every_knob_but_keeps_gitpods_size_bounds_and_template(client, acme):
    from app.domain import pools

    with session_scope() as s:
        gp = pools.create_warm_pool(acme.org_id, acme.project_id, acme.env_class_id, min_size=1, max_size=3, session=s).id
    url = f"/v1/pools/{gp}"
    r = client.patch(url, json={"stopped_size": 2, "empty_policy": "reject", "lease_max_seconds": 3600}, headers=auth(acme))
    assert r.status_code == 200 and r.json()["spec"]["stopped_size"] == 2, r.text
    assert "between 1 and 20" in expect_error(client.patch(url, json={"max_size": 21}, headers=auth(acme)), 400, "invalid_argument")
    assert "between 1 and 20" in expect_error(client.patch(url, json={"max_size": 0}, headers=auth(acme)), 400, "invalid_argument")
    assert "environment class" in expect_error(client.patch(url, json={"template": {"image": "x"}}, headers=auth(acme)),
                                               409, "failed_precondition")
    assert client.patch(url, json={"max_size": 20}, headers=auth(acme)).json()["spec"]["max_size"] == 20


def test_a_pod_pool_keeps_openyuanrongs_rules(client, acme):
    with session_scope() as s:
        failures = podpools.create_pod_pools(acme.org_id, [podpools.PodPoolInput(
            id="pp", size=1, max_size=1, resources={"requests": {"cpu": "1"}})], tenant_id="", session=s)
        assert failures == []
        pool = s.query(Pool).filter(Pool.name == "pp").one()
        pool.reconciled_at = pool.updated_at  # past status New: openYuanrong allows updates now
        pool.extra = {**pool.extra, "spec_changed_at": pool.updated_at.isoformat()}
        pool_id = pool.id
    url = f"/v1/pools/{pool_id}"
    assert "stopped" in expect_error(client.patch(url, json={"stopped_size": 1}, headers=auth(acme)), 409, "failed_precondition")
    assert "pod-pool spec" in expect_error(client.patch(url, json={"template": {}}, headers=auth(acme)), 409, "failed_precondition")
    assert "idle" in expect_error(client.patch(url, json={"idle_recycle_scaled": 5}, headers=auth(acme)), 409, "failed_precondition")
    # A fixed-size pool stays fixed (max follows size), as openYuanrong's update does.
    r = client.patch(url, json={"min_size": 2, "empty_policy": "reject"}, headers=auth(acme))
    assert r.status_code == 200, r.text
    assert (r.json()["spec"]["min_size"], r.json()["spec"]["max_size"], r.json()["spec"]["empty_policy"]) == (2, 2, "reject")


# ---- schedule --------------------------------------------------------------------------------------

def test_a_schedule_is_put_read_applied_at_once_and_removed(client, acme, effects_log):
    pool = create(client, acme)
    url = f"/v1/pools/{pool['id']}/schedule"
    empty = client.get(url, headers=auth(acme)).json()
    assert empty["entries"] == [] and empty["holding"] is None and empty["next_fire_at"] is None
    entries = [{"cron": "0 8 * * 1-5", "timezone": "Europe/Berlin", "min_size": 4, "max_size": 8},
               {"cron": "* * * * *", "timezone": "UTC", "min_size": 3, "max_size": 9, "desired_size": 5}]
    effects_log.clear()
    r = client.put(url, json={"entries": entries}, headers=auth(acme))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["holding"]["index"] == 1 and got["applied"] == got["holding"] and got["last_error"] == ""
    assert got["entries"][0] == {**entries[0], "desired_size": None} and got["next_fire_at"]
    assert client.get(url, headers=auth(acme)).json()["entries"] == got["entries"]
    shown = client.get(f"/v1/pools/{pool['id']}", headers=auth(acme)).json()
    assert (shown["spec"]["min_size"], shown["spec"]["max_size"], shown["status"]["desired_size"]) == (3, 9, 5)
    assert ("reconcile_pool", {"pool_id": pool["id"]}) in effects_log
    r = client.put(url, json={"entries": []}, headers=auth(acme))
    assert r.json()["entries"] == [] and r.json()["next_fire_at"] is None
    with session_scope() as s:
        assert s.get(PoolSchedule, pool["id"]) is None
    assert client.get(f"/v1/pools/{pool['id']}", headers=auth(acme)).json()["spec"]["max_size"] == 9  # sizes stay


@pytest.mark.parametrize("entry,status,needle", [
    ({"cron": "0 8 * *", "timezone": "UTC", "min_size": 1}, 400, "entries[0]: cron"),
    ({"cron": "0 8 * * *", "timezone": "Europe/Nowhere", "min_size": 1}, 400, "IANA"),
    ({"cron": "0 8 * * *", "timezone": "UTC"}, 400, "sets nothing"),
    ({"cron": "0 8 * * *", "timezone": "UTC", "min_size": 9, "max_size": 1}, 400, "min_size must be <= max_size"),
    ({"cron": "0 8 * * *", "timezone": "UTC", "min_size": -1}, 422, "min_size"),
    ({"cron": "0 8 * * *", "timezone": "UTC", "min_size": 1, "at": "noon"}, 422, "at"),
    ({"cron": "* * * * *", "timezone": "UTC", "min_size": 20}, 400, "holds now"),  # above the pool's max 10
    ({"cron": "* * * * *", "timezone": "UTC", "max_size": 101}, 429, "max_pool_size"),  # the quota
])
def test_bad_schedules_are_refused_and_change_nothing(client, acme, entry, status, needle):
    pool = create(client, acme)
    r = client.put(f"/v1/pools/{pool['id']}/schedule", json={"entries": [entry]}, headers=auth(acme))
    assert needle in expect_error(r, status, "invalid_argument" if status in (400, 422) else "resource_exhausted")
    assert client.get(f"/v1/pools/{pool['id']}/schedule", headers=auth(acme)).json()["entries"] == []
    assert client.get(f"/v1/pools/{pool['id']}", headers=auth(acme)).json()["spec"]["max_size"] == 10


def test_the_openapi_document_describes_the_pool_routes(client):
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/v1/pools"]["post"]
    assert {"201", "400", "401", "404", "409", "422", "429"} <= set(post["responses"])
    assert set(doc["paths"]["/v1/pools/{pool_id}"]) == {"get", "patch", "delete"}
    assert set(doc["paths"]["/v1/pools/{pool_id}/schedule"]) == {"get", "put"}
    knobs = doc["components"]["schemas"]["PoolPatch"]["properties"]
    assert {"stopped_size", "empty_policy", "lease_default_seconds", "lease_max_seconds", "reservation_ttl_seconds",
            "idle_recycle_reserved", "idle_recycle_scaled", "rotation_max_surge", "autoscale_headroom",
            "autoscale_cooldown_seconds", "min_size", "max_size", "template"} <= set(knobs)
