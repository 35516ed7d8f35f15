"""Where a `warmpool` command runs: outside a migrated data directory it says so in one line (and creates
nothing), and beside a running `warmpool dev` it finds that dev's Redis, database and organization."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import cli
from app.cli_context import dev_env_path, load_dev_env, write_dev_env
from config.settings import get_settings
from tests.leasing import add_ready, make_pool

ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARS = ("WARMPOOL_DATABASE_URL", "WARMPOOL_REDIS_URL", "WARMPOOL_DATA_DIR", "WARMPOOL_ORG")


def cli_process(cwd: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """`warmpool ARGV` in `cwd` as a new shell runs it: none of the test's service variables set."""
    base = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def use_database(monkeypatch, url: str) -> None:
    from app.db import reset_engine

    monkeypatch.setenv("WARMPOOL_DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engine()


def one_line_error(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    out = capsys.readouterr()
    assert code == 1 and out.out == "" and "Traceback" not in out.err
    assert len(out.err.strip().splitlines()) == 1, out.err
    return out.err.strip()


def test_outside_a_data_directory_the_cli_says_so_and_creates_nothing(tmp_path):
    for argv in (["leases", "--org", "nosuchorg"], ["token", "create", "--org", "acme"], ["pools"]):
        done = cli_process(tmp_path, *argv)
        assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("error: no warmpool database at sqlite:///.data/warmpool.sqlite3")
        assert "warmpool migrate" in line
    assert list(tmp_path.iterdir()) == []  # no .data, no empty sqlite file


@pytest.mark.postgres
def test_an_unmigrated_or_unreachable_database_is_one_line(settings_env, pg_server_url, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.sqlite3"
    sa.create_engine(f"sqlite:///{empty}").connect().close()  # an existing file without tables
    use_database(monkeypatch, f"sqlite:///{empty}")
    err = one_line_error(capsys, ["leases"])
    assert err == (f"error: the database at sqlite:///{empty} has no warmpool tables: run `warmpool migrate` "
                   "(or start `warmpool dev`) in the directory that holds .data, or set WARMPOOL_DATABASE_URL")

    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    name = f"warmpool_unmigrated_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = pg_server_url.rsplit("/", 1)[0] + f"/{name}"
        use_database(monkeypatch, url)
        assert "has no warmpool tables" in one_line_error(capsys, ["runner", "list"])
        from app.db import reset_engine

        reset_engine()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    use_database(monkeypatch, "postgresql+psycopg://warmpool:hunter2@127.0.0.1:1/nothing")
    err = one_line_error(capsys, ["pools"])
    assert err.startswith("error: cannot reach the database at postgresql+psycopg://warmpool:***@127.0.0.1:1/nothing")
    assert "hunter2" not in err


def test_dev_env_fills_only_what_the_environment_does_not_set(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = write_dev_env(data, redis_url="redis://127.0.0.1:7001/0", database_url="sqlite:///x.db", org="acme")
    assert path == dev_env_path(data) and oct(path.stat().st_mode & 0o777) == "0o600"
    env = {"WARMPOOL_DATA_DIR": str(data), "WARMPOOL_ORG": "mine"}
    assert load_dev_env(env) == path
    assert env["WARMPOOL_REDIS_URL"] == "redis://127.0.0.1:7001/0" and env["WARMPOOL_DATABASE_URL"] == "sqlite:///x.db"
    assert env["WARMPOOL_ORG"] == "mine"  # explicit wins

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path.write_text(path.read_text().replace(f"WARMPOOL_DEV_PID={os.getpid()}", f"WARMPOOL_DEV_PID={gone.pid}"))
    env = {"WARMPOOL_DATA_DIR": str(data)}
    assert load_dev_env(env) is None and "WARMPOOL_REDIS_URL" not in env  # a dead dev's file is ignored


@pytest.mark.postgres
def test_a_second_shell_beside_dev_uses_its_redis_database_and_org(org, database_url, redis_url, tmp_path):
    """What `warmpool dev` leaves in .data/dev.env is all a second shell needs: the lease lands in dev's
    organization, prints the address, and its after-commit work reaches dev's Redis (no tracebacks)."""
    import redis

    pool = make_pool(org.org_id, "builders")
    [iid] = add_ready(pool)
    from app.db import session_scope
    from app.models import Instance

    with session_scope() as s:
        s.execute(sa.update(Instance).where(Instance.id == iid).values(address="127.0.0.1:40123"))
    (tmp_path / ".data").mkdir()
    write_dev_env(tmp_path / ".data", redis_url=redis_url, database_url=database_url, org="acme")  # we stand in for dev
    client = redis.Redis.from_url(redis_url)
    client.flushdb()

    done = cli_process(tmp_path, "lease", "--pool", "builders", "--tag", "ci")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr
    header, row = done.stdout.strip().splitlines()
    assert row.split()[0] == iid and "127.0.0.1:40123" in row.split()
    # the `leased` event went to dev's Redis, not to 127.0.0.1:6379
    from app.events import InstanceEvent

    [(_, fields)] = client.xrange(get_settings().engine.events_stream)
    assert InstanceEvent.from_fields(fields).instance_id == iid

    done = cli_process(tmp_path, "leases", WARMPOOL_ORG="nosuchorg")  # the environment wins over the file
    assert done.returncode == 1 and "no organization named 'nosuchorg'" in done.stderr


@pytest.mark.postgres
def test_a_lease_with_redis_down_is_still_a_lease_and_one_warning(org, database_url, tmp_path):
    pool = make_pool(org.org_id, "builders")
    [iid] = add_ready(pool)
    done = cli_process(tmp_path, "lease", "--pool", "builders", "-q", "--org", "acme",
                       WARMPOOL_DATABASE_URL=database_url, WARMPOOL_REDIS_URL="redis://127.0.0.1:1/0")
    assert done.returncode == 0 and done.stdout.split()[0] == iid
    assert "Traceback" not in done.stderr, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "redis://127.0.0.1:1/0 did not take the follow-up work" in warnings[0], done.stderr
