"""Shared fixtures: real PostgreSQL and Redis (started here unless WARMPOOL_TEST_*_URL point at running
ones), per-test isolation (truncate + flush), captured effects, and data factories named after world states."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.testenv import Postgres, Redis  # noqa: E402

# Outside dev warmpool refuses to start without a key for runner secrets: one per test run, inherited by the
# processes tests start. The domain checks runner settings and templates through the providers' models.
if not os.environ.get("WARMPOOL_SECRET_KEYS"):
    from cryptography.fernet import Fernet

    os.environ["WARMPOOL_SECRET_KEYS"] = Fernet.generate_key().decode()
from workers.providers.catalog import install as _install_catalog  # noqa: E402

_install_catalog()

TABLES = ["reservations", "leases", "instances", "pools", "prebuilds", "projects", "environment_classes",
          "runners", "api_tokens", "organizations"]


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("WARMPOOL_TEST_DATABASE_URL")
    if url:
        yield url
        return
    pg = Postgres()
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("WARMPOOL_TEST_REDIS_URL")
    if url:
        yield url
        return
    rd = Redis()
    try:
        yield rd.start()
    finally:
        rd.stop()


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> str:
    """A fresh database for this test run, migrated to head."""
    from app.migrate import upgrade

    name = f"warmpool_test_{os.getpid()}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = pg_server_url.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    return url


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str, tmp_path: Path):
    """Point Settings at the test services; the cached settings and engine are rebuilt."""
    from app import auth
    from app.db import reset_engine
    from config.settings import get_settings

    monkeypatch.setenv("WARMPOOL_ENV", "test")
    monkeypatch.setenv("WARMPOOL_DATABASE_URL", database_url)
    monkeypatch.setenv("WARMPOOL_REDIS_URL", redis_url)
    monkeypatch.setenv("WARMPOOL_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    reset_engine()
    auth.clear_cache()
    yield get_settings()
    reset_engine()
    get_settings.cache_clear()


@pytest.fixture
def db(settings_env) -> Iterator[None]:
    """Real PostgreSQL with empty tables for this test."""
    from app.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(TABLES) + " CASCADE"))
    yield


@pytest.fixture
def redis_client(settings_env, redis_url: str):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def effects_log() -> Iterator[list[tuple[str, dict]]]:
    """Every effect dispatched after a commit, in order (instead of Celery)."""
    from app.domain import effects

    seen: list[tuple[str, dict]] = []
    previous = effects.set_dispatcher(lambda name, payload: seen.append((name, payload)))
    yield seen
    effects.set_dispatcher(previous)


# ---- world states ----------------------------------------------------------------------------

@dataclass
class World:
    org_id: str
    token: str
    runner_id: str = ""
    env_class_id: str = ""
    project_id: str = ""
    pool_id: str = ""


def make_org(name: str = "acme", scope: str = "member") -> World:
    """An organization and a token of `scope` (member: pools, prebuilds, pod pools, leases)."""
    from app.db import session_scope
    from app.domain import tenancy, tokens

    with session_scope() as s:
        org = tenancy.ensure_organization(name, session=s)
        _, token = tokens.create_token(org, session=s, scope=tokens.Scope(scope))
    return World(org_id=org.id, token=token)


def token_for(world: World, scope: str, **fields) -> str:
    """Another token of the world's organization, with `scope` (and expires_in, name, …)."""
    from app.db import session_scope
    from app.domain import tokens

    with session_scope() as s:
        return tokens.create_token(world.org_id, session=s, scope=tokens.Scope(scope), **fields)[1]


def make_catalog(world: World, provider: str = "fake", prebuilds_enabled: bool = True) -> World:
    from app.db import session_scope
    from app.domain import catalog, tenancy

    with session_scope() as s:
        runner = tenancy.create_runner(world.org_id, f"runner-{provider}", provider, {}, session=s)
        ec = catalog.create_environment_class(world.org_id, runner.id, "small", "a small class",
                                              [{"key": "image", "value": "alpine"}], session=s)
        project = catalog.create_project(world.org_id, "project", {"prebuildConfiguration": {
            "enabled": prebuilds_enabled, "environmentClassIds": [ec.id]}}, session=s)
    world.runner_id, world.env_class_id, world.project_id = runner.id, ec.id, project.id
    return world


@pytest.fixture
def org(db, effects_log) -> World:
    return make_org()


@pytest.fixture
def prebuild_ready_project(org: World) -> World:
    """An org with a runner, an environment class, and a project whose prebuilds cover that class."""
    return make_catalog(org)


@pytest.fixture
def warm_pool(prebuild_ready_project: World) -> World:
    from app.db import session_scope
    from app.domain import pools

    w = prebuild_ready_project
    with session_scope() as s:
        pool = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=1, max_size=3, session=s)
    w.pool_id = pool.id
    return w


# ---- both backends ---------------------------------------------------------------------------

class SqliteAtHead:
    """A SQLite file migrated to head once per run (`upgrade`, as `warmpool dev` does), copied for each test:
    the same fresh file, without the half second of Alembic every SQLite test used to pay."""

    def __init__(self, path: Path) -> None:
        from app.migrate import upgrade

        upgrade(f"sqlite:///{path}")
        self.path = path

    def backup(self, to: Path) -> None:
        import sqlite3

        # The backup API, not a file copy: a WAL file the migration left beside it is included.
        with sqlite3.connect(self.path) as src, sqlite3.connect(to) as dst:
            src.backup(dst)
        src.close()
        dst.close()


@pytest.fixture(scope="session")
def sqlite_at_head(tmp_path_factory: pytest.TempPathFactory) -> SqliteAtHead:
    return SqliteAtHead(tmp_path_factory.mktemp("sqlite-head") / "head.sqlite3")


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The test runs once on PostgreSQL (empty tables) and once on SQLite (a fresh file migrated to head,
    as `warmpool dev` makes it): a guarantee claimed on both backends is tested on both. Yields the name."""
    if request.param == "postgresql":
        request.getfixturevalue("db")
        yield "postgresql"
        return
    from app import auth
    from app.db import reset_engine
    from config.settings import get_settings

    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    monkeypatch.setenv("WARMPOOL_ENV", "test")
    monkeypatch.setenv("WARMPOOL_DATABASE_URL", url)
    monkeypatch.setenv("WARMPOOL_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    reset_engine()
    auth.clear_cache()
    request.getfixturevalue("sqlite_at_head").backup(tmp_path / "dev.sqlite3")
    yield "sqlite"
    reset_engine()
    get_settings.cache_clear()


@pytest.fixture
def any_org(backend: str, effects_log) -> World:
    """An organization on the backend under test (see `backend`)."""
    return make_org()
