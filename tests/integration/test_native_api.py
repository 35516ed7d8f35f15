"""The native admin REST API on /v1, in process on real PostgreSQL and Redis: every route, tokens,
organizations, bad input in our {code,message} shape, masked secrets, logs through the fake provider,
and the pool event stream's filtering and keep-alive."""
from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from app.db import session_scope
from app.domain import pools
from app.domain.states import PoolKind
from app.models import Instance, Pool, Runner
from tests.conftest import World, make_catalog, make_org, token_for
from workers import operations
from workers.events import Applier
from workers.providers.fake import FakeCloud

SECRET = "s3cr3t-value-never-echoed"


@pytest.fixture
def app(db, effects_log):
    from app.main import create_app

    return create_app(dispatcher=False)


@pytest.fixture
def client(app) -> TestClient:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def bearer(world: World) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.token}"}


def expect_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    assert body["message"]
    return body["message"]


def named_pool(world: World, name: str, **fields) -> str:
    with session_scope() as s:
        pool = pools.new_pool(world.org_id, kind=PoolKind.NAMED, name=name, min_size=0, max_size=2,
                              runner_id=world.runner_id or None, **fields)
        return pools.insert_pool(pool, session=s, conflict=name).id


def add_instance(world: World, pool_id: str, **fields) -> str:
    with session_scope() as s:
        inst = Instance(pool_id=pool_id, organization_id=world.org_id, provider="fake", **fields)
        s.add(inst)
    return inst.id


@pytest.fixture
def acme(warm_pool) -> World:
    warm_pool.token = token_for(warm_pool, "admin")  # the runner routes need an admin token
    return warm_pool


@pytest.fixture
def other(acme) -> World:
    """A second organization with its own runner, pool and instance."""
    w = make_catalog(make_org("globex", scope="admin"))
    w.pool_id = named_pool(w, "globex-pool")
    return w


# ---- authentication and organizations --------------------------------------------------------

ROUTES = [("GET", "/v1/runners"), ("POST", "/v1/runners"), ("GET", "/v1/runners/{id}"), ("GET", "/v1/pools"),
          ("GET", "/v1/pools/{id}"), ("GET", "/v1/pools/{id}/instances"), ("GET", "/v1/instances/{id}"),
          ("GET", "/v1/instances/{id}/logs"), ("GET", "/v1/events"),
          ("GET", "/v1/tokens"), ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{id}")]
ROUTES += [("DELETE", "/v1/runners/{id}")]
ROUTES += [("GET", "/v1/quota")]  # tests/security/test_quotas.py tests what it answers
ROUTES += [("POST", "/v1/pools"), ("PATCH", "/v1/pools/{id}"), ("DELETE", "/v1/pools/{id}"),  # test_native_pools.py
           ("GET", "/v1/pools/{id}/schedule"), ("PUT", "/v1/pools/{id}/schedule")]
ROUTES += [("GET", "/v1/pools/{id}/rollout"), ("PUT", "/v1/pools/{id}/rollout"),  # test_native_rollout.py
           ("POST", "/v1/pools/{id}/rollout:pause"), ("POST", "/v1/pools/{id}/rollout:resume"),
           ("POST", "/v1/pools/{id}/rollout:rollback")]


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wp_not-a-real-token", "Basic dXNlcjpwYXNz", "Bearer "])
def test_every_route_needs_a_valid_bearer_token(client, acme, method, path, header):
    headers = {"Authorization": header} if header is not None else {}
    r = client.request(method, path.format(id=acme.pool_id), headers=headers, json={"name": "x", "provider": "fake"})
    expect_error(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_body_that_is_not_json_still_answers_401_before_422(client, acme):
    r = client.post("/v1/runners", content=b"{nope", headers={"Content-Type": "application/json"})
    expect_error(r, 401, "unauthenticated")
    r = client.post("/v1/runners", content=b"{nope", headers={**bearer(acme), "Content-Type": "application/json"})
    expect_error(r, 422, "invalid_argument")


def test_another_organizations_objects_are_not_found(client, acme, other):
    inst = add_instance(other, other.pool_id, provider_ref="fake-x", state="running")
    for path in (f"/v1/runners/{other.runner_id}", f"/v1/pools/{other.pool_id}", f"/v1/pools/{other.pool_id}/instances",
                 f"/v1/instances/{inst}", f"/v1/instances/{inst}/logs", f"/v1/events?pool_id={other.pool_id}"):
        expect_error(client.get(path, headers=bearer(acme)), 404, "not_found")
    assert [r["id"] for r in client.get("/v1/runners", headers=bearer(acme)).json()["runners"]] == [acme.runner_id]
    assert [p["id"] for p in client.get("/v1/pools", headers=bearer(acme)).json()["pools"]] == [acme.pool_id]
    # and the other way round
    expect_error(client.get(f"/v1/pools/{acme.pool_id}", headers=bearer(other)), 404, "not_found")


# ---- runners -------------------------------------------------------------------------------------

def test_runners_are_created_listed_and_read_with_secrets_masked(client, acme):
    # Secrets are the provider model's SecretStr fields (unikraft's `token`); keys merely named like secrets
    # are not settings of any provider and are refused (tests/security).
    settings = {"metro": "fra", "token": SECRET, "default_memory_mb": 256}
    r = client.post("/v1/runners", json={"name": "ukc-eu", "provider": "unikraft", "settings": settings},
                    headers=bearer(acme))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "ukc-eu" and created["provider"] == "unikraft"
    assert created["settings"] == {"metro": "fra", "token": "***", "default_memory_mb": 256}
    listed = client.get("/v1/runners", headers=bearer(acme))
    one = client.get(f"/v1/runners/{created['id']}", headers=bearer(acme))
    assert one.json() == created
    assert created["id"] in [x["id"] for x in listed.json()["runners"]]
    for text in (r.text, listed.text, one.text):
        assert SECRET not in text
    from workers.providers.catalog import runtime_settings

    with session_scope() as s:  # masked on the way out, encrypted at rest: the adapter still gets the real value
        stored = s.get(Runner, created["id"]).settings
    assert SECRET not in json.dumps(stored)
    assert runtime_settings("unikraft", stored)["token"] == SECRET


def test_an_unknown_provider_is_400_naming_the_offered_ones(client, acme):
    r = client.post("/v1/runners", json={"name": "x", "provider": "azure"}, headers=bearer(acme))
    message = expect_error(r, 400, "invalid_argument")
    assert "'azure'" in message and "fake" in message and "kubernetes" in message
    assert "local" not in message.split("offered are")[1]  # WARMPOOL_ENV=test: local exists only under dev


def test_a_runner_is_deleted_only_once_no_live_pool_uses_it(client, acme, other):
    path = f"/v1/runners/{acme.runner_id}"
    member = {"Authorization": f"Bearer {token_for(acme, 'member')}"}
    expect_error(client.delete(path, headers=member), 403, "permission_denied")
    expect_error(client.delete(f"/v1/runners/{other.runner_id}", headers=bearer(acme)), 404, "not_found")
    expect_error(client.delete("/v1/runners/not-a-uuid", headers=bearer(acme)), 400, "invalid_argument")
    pool_name = client.get(f"/v1/pools/{acme.pool_id}", headers=bearer(acme)).json()["name"]
    refused = expect_error(client.delete(path, headers=bearer(acme)), 409, "failed_precondition")
    assert pool_name in refused and "delete them first" in refused
    assert client.get(path, headers=bearer(acme)).status_code == 200  # still there

    with session_scope() as s:  # the pool is gone (drained and deleted)
        s.get(Pool, acme.pool_id).phase = "deleted"
    gone = client.delete(path, headers=bearer(acme))
    assert gone.status_code == 200, gone.text
    assert gone.json()["id"] == acme.runner_id and gone.json()["environment_classes_deleted"] == 1
    expect_error(client.get(path, headers=bearer(acme)), 404, "not_found")
    expect_error(client.delete(path, headers=bearer(acme)), 404, "not_found")
    with session_scope() as s:
        assert s.get(Runner, other.runner_id) is not None  # another organization's runner untouched


def test_a_runner_name_is_taken_once(client, acme):
    body = {"name": "twice", "provider": "fake"}
    assert client.post("/v1/runners", json=body, headers=bearer(acme)).status_code == 201
    assert "twice" in expect_error(client.post("/v1/runners", json=body, headers=bearer(acme)), 409, "already_exists")


@pytest.mark.parametrize("body,status,needle", [
    ({"provider": "fake"}, 422, "body.name"),
    ({"name": "", "provider": "fake"}, 422, "body.name"),
    ({"name": "x" * 201, "provider": "fake"}, 422, "body.name"),
    ({"name": "x", "provider": "fake", "settings": ["a"]}, 422, "body.settings"),
    ({"name": "x", "provider": "fake", "colour": "red"}, 422, "body.colour"),
    ([1, 2], 422, "body"),
    ({"name": "nul\u0000byte", "provider": "fake"}, 400, "cannot be stored"),
])
def test_bad_runner_bodies_are_refused_in_our_shape(client, acme, body, status, needle):
    r = client.post("/v1/runners", json=body, headers=bearer(acme))
    assert needle in expect_error(r, status, "invalid_argument")


# ---- pools ---------------------------------------------------------------------------------------

def test_pools_of_every_kind_are_listed_a_page_at_a_time(client, acme):
    names = [f"named-{n}" for n in range(3)]
    ids = [acme.pool_id] + [named_pool(acme, n) for n in names]
    seen, token, pages = [], "", 0
    while True:
        r = client.get("/v1/pools", params={"page_size": 2, "page_token": token}, headers=bearer(acme))
        assert r.status_code == 200, r.text
        seen += [p["id"] for p in r.json()["pools"]]
        token, pages = r.json()["next_page_token"], pages + 1
        if not token:
            break
    assert (seen, pages) == (ids, 2)
    kinds = client.get("/v1/pools", params={"kind": "named"}, headers=bearer(acme)).json()["pools"]
    assert sorted(p["name"] for p in kinds) == names


def test_pools_filter_by_phase_and_hide_deleted_ones(client, acme):
    gone = named_pool(acme, "gone")
    with session_scope() as s:
        s.get(Pool, gone).phase = "deleted"
        s.get(Pool, acme.pool_id).phase = "ready"
    listed = lambda **q: [p["id"] for p in client.get("/v1/pools", params=q, headers=bearer(acme)).json()["pools"]]  # noqa: E731
    assert listed() == [acme.pool_id]
    assert listed(phase="ready") == [acme.pool_id]
    assert listed(phase="deleted") == [gone]
    assert listed(phase="pending") == []


def test_a_pool_shows_its_spec_and_status(client, acme):
    with session_scope() as s:
        p = s.get(Pool, acme.pool_id)
        p.snapshot_id, p.previous_snapshot_id, p.failure_message = "snap-2", "snap-1", "quota exceeded"
        p.phase, p.desired_size, p.ready_instances, p.leased_instances, p.stopped_instances = "degraded", 2, 1, 1, 1
        p.template = {"image": "alpine", "registry_password": SECRET}
        p.status_version = 7
    r = client.get(f"/v1/pools/{acme.pool_id}", headers=bearer(acme))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["kind"], body["name"]) == (acme.pool_id, "gitpod", acme.pool_id)
    spec, status = body["spec"], body["status"]
    assert (spec["min_size"], spec["max_size"], spec["snapshot_id"], spec["previous_snapshot_id"]) == (1, 3, "snap-2", "snap-1")
    assert (spec["project_id"], spec["environment_class_id"], spec["runner_id"]) == (acme.project_id, acme.env_class_id, acme.runner_id)
    assert spec["template"] == {"image": "alpine", "registry_password": "***"} and SECRET not in r.text
    assert spec["spec_version"] >= 1
    assert status == {**status, "phase": "degraded", "failure_message": "quota exceeded", "desired_size": 2,
                      "ready": 1, "leased": 1, "stopped": 1, "status_version": 7}


@pytest.mark.parametrize("query,status,needle", [
    ({"page_size": 0}, 422, "query.page_size"),
    ({"page_size": 101}, 422, "query.page_size"),
    ({"page_size": "ten"}, 422, "query.page_size"),
    ({"page_token": "not-a-token"}, 400, "page_token"),
    ({"kind": "lambda"}, 422, "'gitpod', 'named' or 'podpool'"),
    ({"phase": "warm"}, 422, "query.phase"),
])
def test_bad_pool_queries_are_refused_in_our_shape(client, acme, query, status, needle):
    assert needle in expect_error(client.get("/v1/pools", params=query, headers=bearer(acme)), status, "invalid_argument")


@pytest.mark.parametrize("path", ["/v1/pools/{bad}", "/v1/pools/{bad}/instances", "/v1/runners/{bad}",
                                  "/v1/instances/{bad}", "/v1/instances/{bad}/logs", "/v1/events?pool_id={bad}"])
def test_ids_that_are_not_uuids_are_400_and_unknown_ones_404(client, acme, path):
    assert "UUID" in expect_error(client.get(path.format(bad="not-a-uuid"), headers=bearer(acme)), 400, "invalid_argument")
    expect_error(client.get(path.format(bad=uuid.uuid4()), headers=bearer(acme)), 404, "not_found")


# ---- instances -----------------------------------------------------------------------------------

def test_a_pools_instances_and_one_instance(client, acme):
    running = add_instance(acme, acme.pool_id, state="running", provider_ref="fake-1", address="10.0.0.7", boot_ms=42,
                           snapshot_id="snap-1", lease_id="lease-1")
    booting = add_instance(acme, acme.pool_id, state="provisioning", desired_state="running")
    deleted = add_instance(acme, acme.pool_id, state="deleted", desired_state="deleted")
    r = client.get(f"/v1/pools/{acme.pool_id}/instances", headers=bearer(acme))
    assert r.status_code == 200, r.text
    assert sorted(i["id"] for i in r.json()["instances"]) == sorted([running, booting])
    only_deleted = client.get(f"/v1/pools/{acme.pool_id}/instances", params={"state": "deleted"}, headers=bearer(acme))
    assert [i["id"] for i in only_deleted.json()["instances"]] == [deleted]
    first = client.get(f"/v1/pools/{acme.pool_id}/instances", params={"page_size": 1}, headers=bearer(acme)).json()
    second = client.get(f"/v1/pools/{acme.pool_id}/instances", params={"page_size": 1, "page_token": first["next_page_token"]},
                        headers=bearer(acme)).json()
    assert first["next_page_token"] and not second["next_page_token"]
    assert {first["instances"][0]["id"], second["instances"][0]["id"]} == {running, booting}
    one = client.get(f"/v1/instances/{running}", headers=bearer(acme)).json()
    assert {k: one[k] for k in ("pool_id", "state", "desired_state", "lease_id", "address", "boot_ms", "snapshot_id",
                                "provider_ref")} == {
        "pool_id": acme.pool_id, "state": "running", "desired_state": "running", "lease_id": "lease-1",
        "address": "10.0.0.7", "boot_ms": 42, "snapshot_id": "snap-1", "provider_ref": "fake-1"}
    assert one["requested_at"] and one["state_changed_at"]
    bad = client.get(f"/v1/pools/{acme.pool_id}/instances", params={"state": "warm"}, headers=bearer(acme))
    assert "query.state" in expect_error(bad, 422, "invalid_argument")


def test_logs_come_from_the_fake_provider_through_the_runners_adapter(client, acme, redis_client):
    FakeCloud(redis_client).configure(boot_ms=0)
    inst = add_instance(acme, acme.pool_id, state="requested")
    assert operations.provision(inst) == "provisioning"  # the fake cloud accepted it; it boots on its own
    Applier(client=redis_client, consumer="test").poll(block_ms=10)
    ref = f"fake-{inst}"
    one = client.get(f"/v1/instances/{inst}", headers=bearer(acme)).json()
    assert (one["state"], one["provider_ref"]) == ("provisioning", ref)
    cloud = FakeCloud(redis_client)
    record = cloud.load(ref)
    record["log"] += ["booted", "listening on :8080"]
    cloud.put(ref, record)
    r = client.get(f"/v1/instances/{inst}/logs", headers=bearer(acme))
    assert r.status_code == 200, r.text
    assert r.json() == {"instance_id": inst, "provider": "fake", "provider_ref": ref, "lines": 100,
                        "output": "created from image\nbooted\nlistening on :8080"}
    last = client.get(f"/v1/instances/{inst}/logs", params={"lines": 2}, headers=bearer(acme)).json()
    assert last["output"] == "booted\nlistening on :8080"
    for lines in (0, -1, 10001, "all"):
        r = client.get(f"/v1/instances/{inst}/logs", params={"lines": lines}, headers=bearer(acme))
        assert "query.lines" in expect_error(r, 422, "invalid_argument")


def test_logs_of_an_instance_without_a_resource_yet_are_409(client, acme):
    inst = add_instance(acme, acme.pool_id, state="requested")
    assert "no provider resource" in expect_error(client.get(f"/v1/instances/{inst}/logs", headers=bearer(acme)),
                                                  409, "failed_precondition")


def test_a_provider_error_reading_logs_is_502_with_its_message(client, acme, redis_client):
    inst = add_instance(acme, acme.pool_id, state="running", provider_ref="fake-vanished")
    message = expect_error(client.get(f"/v1/instances/{inst}/logs", headers=bearer(acme)), 502, "provider_error")
    assert "no resource fake-vanished" in message


# ---- the error shape belongs to /v1 only ---------------------------------------------------------

def test_unknown_routes_and_methods_under_v1_answer_in_our_shape(client, acme):
    assert "/docs" in expect_error(client.get("/v1/nothing-here", headers=bearer(acme)), 404, "not_found")
    expect_error(client.delete("/v1/runners", headers=bearer(acme)), 405, "method_not_allowed")


def test_other_paths_keep_fastapis_own_validation_errors(app, acme):
    @app.get("/elsewhere")
    def elsewhere(n: int) -> dict:
        return {"n": n}

    with TestClient(app) as c:
        r = c.get("/elsewhere", params={"n": "x"})
        assert r.status_code == 422 and isinstance(r.json()["detail"], list)
        assert c.get("/v1x/nothing").json()["code"] == "not_found"  # unknown paths: tests/integration/test_http_edges.py
        podpools = c.get("/serverless/v1/podpools")  # the openYuanrong façade keeps its envelope
        assert podpools.status_code == 401 and podpools.json()["code"] == 121049


def test_every_route_is_documented_with_a_summary_and_a_typed_answer(client):
    spec = client.get("/openapi.json").json()
    ops = {(method.upper(), re.sub(r"\{\w+\}", "{id}", path)): op
           for path, item in spec["paths"].items() if path.startswith("/v1/") for method, op in item.items()}
    assert set(ops) == set(ROUTES)
    for path, op in ops.items():
        assert op["summary"], path
        assert op["security"] == [{"HTTPBearer": []}], path
        ok = op["responses"].get("200") or op["responses"]["201"]
        content = ok["content"]
        schema = content.get("application/json", {}).get("schema") or content["text/event-stream"]["itemSchema"]
        assert "$ref" in schema or schema.get("properties"), path
        assert op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


# ---- the pool event stream (generator on real Redis; the HTTP stream is tested end to end) --------

def test_the_stream_sends_the_callers_pool_changes_once_and_keeps_alive(acme, other, redis_client, redis_url):
    from app.api.native_sse import pool_events, subscribe
    from app.domain.events import pool_channel

    second = named_pool(acme, "second")

    async def scenario() -> list[str]:
        r = aioredis.Redis.from_url(redis_url)
        pubsub = r.pubsub()
        await subscribe(pubsub, acme.org_id)
        frames = pool_events(pubsub, acme.org_id, keepalive=0.3)
        out = [(await anext(frames)).decode()]
        # Another organization's pool never reaches this subscription; named under acme's channels (a forged
        # or stale notification) it is read back under acme's organization and dropped.
        assert await r.publish(pool_channel(other.org_id, other.pool_id), "ready") == 0
        for pool_id in (other.pool_id, acme.pool_id, acme.pool_id, second):  # the second acme one: same version
            assert await r.publish(pool_channel(acme.org_id, pool_id), "ready") == 1
        out.append((await asyncio.wait_for(anext(frames), 2)).decode())
        out.append((await asyncio.wait_for(anext(frames), 2)).decode())
        out.append((await asyncio.wait_for(anext(frames), 2)).decode())
        await frames.aclose()
        await pubsub.aclose()
        await r.aclose()
        return out

    out = asyncio.run(scenario())
    assert out[0] == ": connected\n\n"
    events = [json.loads(f.split("data: ", 1)[1]) for f in out[1:3]]
    assert all(f.startswith("event: pool\ndata: ") and f.endswith("\n\n") for f in out[1:3])
    with session_scope() as s:
        p = s.get(Pool, acme.pool_id)
        expected = {"pool_id": p.id, "phase": p.phase, "ready": p.ready_instances, "stopped": p.stopped_instances,
                    "leased": p.leased_instances, "desired_size": p.desired_size, "status_version": p.status_version}
    assert events[0] == expected
    assert events[1]["pool_id"] == second
    assert out[3] == ": keep-alive\n\n"



def test_the_stream_is_503_when_redis_is_unreachable(acme, monkeypatch):
    from app.main import create_app
    from config.settings import get_settings
    from scripts.testenv import free_port

    monkeypatch.setenv("WARMPOOL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    get_settings.cache_clear()
    with TestClient(create_app(dispatcher=False)) as c:
        r = c.get("/v1/events", headers=bearer(acme))
    assert "Redis is unreachable" in expect_error(r, 503, "unavailable")
