"""Fixtures of the security suite: the HTTP façades in process with a small body limit, one
organization with a fake runner, and row counts read straight from the database."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.db import get_engine, session_scope
from app.domain import tenancy
from tests.conftest import World, make_org

BODY_LIMIT = 64 * 1024


@pytest.fixture
def small_bodies(monkeypatch: pytest.MonkeyPatch, settings_env) -> int:
    """A 64 KiB body limit (gRPC messages too), so the oversize attacks stay cheap."""
    from config.settings import get_settings

    monkeypatch.setenv("WARMPOOL_INPUT__MAX_BODY_BYTES", str(BODY_LIMIT))
    monkeypatch.setenv("WARMPOOL_INPUT__MAX_GRPC_MESSAGE_BYTES", str(BODY_LIMIT))
    get_settings.cache_clear()
    return BODY_LIMIT


@pytest.fixture
def client(db, effects_log, small_bodies) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(dispatcher=False), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def world(db, effects_log) -> World:
    w = make_org(scope="admin")  # the attacks go through the runner routes too, which need admin
    with session_scope() as s:
        w.runner_id = tenancy.create_runner(w.org_id, "fake", "fake", {}, session=s).id
    return w


def rows(table: str, org_id: str) -> int:
    """How many rows of `table` the organization has, read from the database."""
    with get_engine().connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE organization_id = :o"), {"o": org_id}).scalar_one()


def auth(world: World) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.token}"}


# ---- compute configuration and secrets at rest (test_compute_config.py, test_secrets_at_rest.py) ----

def use_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Operator configuration for this test: the settings and the cached adapters are rebuilt."""
    from config.settings import get_settings
    from workers.providers.registry import clear_cache

    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    clear_cache()


@pytest.fixture
def acme(db, effects_log) -> World:
    """The attacker: an organization's admin token, the most a tenant can hold (runners need it)."""
    return make_org("acme", scope="admin")


bearer = auth


def count(table: str) -> int:
    """Rows of `table` across every organization: a refused request stored nothing anywhere."""
    with get_engine().connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def refused(response, needle: str) -> str:
    """A /v1 refusal: 400 {code: invalid_argument, message} whose message contains `needle`."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_argument" and needle in body["message"], body
    return body["message"]
