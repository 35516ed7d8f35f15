"""Operations endpoints on real PostgreSQL and Redis: /healthz is open, /readyz names what is unreachable,
/metrics needs a token unless WARMPOOL_METRICS_PUBLIC=true and counts pools by phase."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.db import reset_engine, session_scope
from app.models import Instance, Pool
from config.settings import get_settings
from scripts.testenv import free_port


def make_client() -> TestClient:
    from app.main import create_app

    return TestClient(create_app(dispatcher=False), raise_server_exceptions=False)


@pytest.fixture
def client(db, redis_client, effects_log):
    with make_client() as c:
        yield c


def test_healthz_is_open(client):
    r = client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_readyz_is_200_when_the_database_and_redis_answer(client):
    r = client.get("/readyz")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "checks": {"database": "ok", "redis": "ok"}})


@pytest.mark.parametrize("down,variable,url", [
    ("redis", "WARMPOOL_REDIS_URL", "redis://127.0.0.1:{port}/0"),
    ("database", "WARMPOOL_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:{port}/warmpool"),
])
def test_readyz_is_503_naming_what_is_unreachable(db, monkeypatch, down, variable, url):
    monkeypatch.setenv(variable, url.format(port=free_port()))  # nothing listens there
    get_settings.cache_clear()
    reset_engine()
    with make_client() as c:
        r = c.get("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["checks"][down].startswith("unreachable: ")
    up = ({"database", "redis"} - {down}).pop()
    assert body["checks"][up] == "ok"


def metric(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def test_metrics_need_a_token_and_count_pools_by_phase(client, warm_pool):
    w = warm_pool
    for headers in ({}, {"Authorization": "Bearer wp_wrong"}):
        r = client.get("/metrics", headers=headers)
        assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    with session_scope() as s:
        ready = Pool(organization_id=w.org_id, kind="named", name="ready-one", phase="ready", runner_id=w.runner_id)
        s.add(ready)
        s.flush()
        s.add(Instance(pool_id=ready.id, organization_id=w.org_id, state="running"))
        s.add(Instance(pool_id=ready.id, organization_id=w.org_id, state="running", lease_id="lease-1"))
    r = client.get("/metrics", headers={"Authorization": f"Bearer {w.token}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert metric(r.text, "warmpool_pools", '{organization="acme",phase="pending"}') == 1.0
    assert metric(r.text, "warmpool_pools", '{organization="acme",phase="ready"}') == 1.0
    assert metric(r.text, "warmpool_ready_instances", '{organization="acme"}') == 1.0


def test_metrics_are_open_when_made_public(db, redis_client, effects_log, warm_pool, monkeypatch):
    monkeypatch.setenv("WARMPOOL_METRICS_PUBLIC", "true")
    get_settings.cache_clear()
    with make_client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    assert metric(r.text, "warmpool_pools", '{organization="acme",phase="pending"}') == 1.0
