"""The same refusals on SQLite, the embedded database of `warmpool dev`, which would store a NUL byte
that PostgreSQL refuses: the edge refuses it first, and an organization whose SQLite file already
holds a lone surrogate still lists its runners and pools."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.db import get_engine, session_scope
from app.domain import tenancy
from tests.conftest import World, make_org

NUL = "\\u0000"


@pytest.fixture
def sqlite_world(monkeypatch: pytest.MonkeyPatch, tmp_path, effects_log) -> Iterator[tuple[TestClient, World]]:
    from app import auth
    from app.db import reset_engine
    from app.main import create_app
    from app.migrate import upgrade
    from config.settings import get_settings

    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    monkeypatch.setenv("WARMPOOL_ENV", "dev")
    monkeypatch.setenv("WARMPOOL_DATABASE_URL", url)
    monkeypatch.setenv("WARMPOOL_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    reset_engine()
    auth.clear_cache()
    upgrade(url)
    world = make_org(scope="admin")
    with session_scope() as s:
        world.runner_id = tenancy.create_runner(world.org_id, "fake", "fake", {}, session=s).id
    try:
        with TestClient(create_app(dispatcher=False), raise_server_exceptions=False) as client:
            yield client, world
    finally:
        reset_engine()
        get_settings.cache_clear()
        auth.clear_cache()


def count(table: str, org_id: str) -> int:
    with get_engine().connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE organization_id = :o"), {"o": org_id}).scalar_one()


@pytest.mark.parametrize("path,body,status,table,before", [
    ("/v1/runners", '{"name": "r%s", "provider": "fake", "settings": {}}' % NUL, 400, "runners", 1),
    ("/v1/runners", '{"name": "r", "provider": "fake", "settings": {"a": "%s"}}' % NUL, 400, "runners", 1),
    ("/serverless/v1/podpools", '{"pools": [{"id": "p1", "group": "g%s", "resources": {}}]}' % NUL, 500, "pools", 0),
    ("/api/gitpod.v1.ProjectService/CreateProject", '{"name": "p%sq"}' % NUL, 400, "projects", 0),
], ids=["runner name", "runner settings", "pod-pool group", "Gitpod project name"])
def test_nul_is_refused_on_sqlite_too(sqlite_world, path, body, status, table, before):
    client, world = sqlite_world
    r = client.post(path, content=body.encode(), headers={
        "Authorization": f"Bearer {world.token}", "Content-Type": "application/json", "Connect-Protocol-Version": "1"})
    assert r.status_code == status and "NUL" in r.json()["message"], r.text
    assert count(table, world.org_id) == before


def test_a_stored_surrogate_reads_back_on_sqlite(sqlite_world):
    client, world = sqlite_world
    with get_engine().begin() as conn:
        conn.execute(sa.text("UPDATE runners SET settings = :s WHERE id = :id"), {"s": '{"a": "\\ud800"}', "id": world.runner_id})
    r = client.get("/v1/runners", headers={"Authorization": f"Bearer {world.token}"})
    assert r.status_code == 200, r.text
    assert r.json()["runners"][0]["settings"] == {"a": "\ufffd"}
