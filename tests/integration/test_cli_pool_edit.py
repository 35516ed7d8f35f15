"""`warmpool pool create|update|delete|schedule`, in process against real PostgreSQL as a user types them."""
from __future__ import annotations

import pytest

from app import cli
from app.db import session_scope
from app.models import Pool, PoolSchedule
from tests.conftest import make_catalog, make_org

pytestmark = pytest.mark.postgres


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def acme(db, effects_log, monkeypatch):
    monkeypatch.setattr("app.cli_pool_edit._dispatch_after_commit", lambda: None)  # effects_log keeps them
    return make_catalog(make_org("acme"))


def pool_named(name: str) -> Pool:
    with session_scope() as s:
        return s.query(Pool).filter(Pool.name == name, Pool.deleted_at.is_(None)).one()


def test_create_update_schedule_and_delete_a_named_pool(capsys, acme, effects_log):
    code, out, err = run(capsys, "pool", "create", "ci", "--runner", "runner-fake", "--min", "2", "--max", "10",
                         "--stopped", "2", "--empty-policy", "reject", "--lease-default", "1800", "--lease-max", "86400",
                         "--image", "alpine:3", "--headroom", "1", "--org", "acme")
    assert code == 0, err
    pool = pool_named("ci")
    assert out.strip() == pool.id and "stopped tier 2" in err and "empty pool: reject" in err
    assert (pool.kind, pool.min_size, pool.max_size, pool.stopped_size, pool.empty_policy) == ("named", 2, 10, 2, "reject")
    assert pool.template == {"image": "alpine:3"} and pool.autoscale == {"headroom": 1.0}
    assert ("reconcile_pool", {"pool_id": pool.id}) in effects_log

    code, out, err = run(capsys, "pool", "update", "ci", "--max", "12", "--empty-policy", "cold", "--idle-scaled", "-1",
                         "--org", "acme")
    assert code == 0, err
    after = pool_named("ci")
    assert (after.max_size, after.empty_policy, after.idle_recycle_scaled) == (12, "cold", -1)
    assert after.spec_version == pool.spec_version + 1 and "spec version 2" in out

    code, out, err = run(capsys, "pool", "schedule", "ci", "--entry", "0 8 * * 1-5 Europe/Berlin min=4 max=8",
                         "--entry", "* * * * * UTC min=3 max=9 desired=5", "--org", "acme")
    assert code == 0, err
    assert "* [1] * * * * *  UTC  min=3 max=9 desired=5" in out and "  [0] 0 8 * * 1-5  Europe/Berlin  min=4 max=8" in out
    assert (pool_named("ci").min_size, pool_named("ci").max_size) == (3, 9)
    code, shown, _ = run(capsys, "pool", "schedule", "ci", "--org", "acme")
    assert code == 0 and shown.splitlines()[:2] == out.splitlines()[:2]
    code, shown, _ = run(capsys, "pool", "show", "ci", "--org", "acme")
    assert code == 0 and "2 entries, entry 1 holds, next firing" in shown
    code, out, _ = run(capsys, "pool", "schedule", "ci", "--clear", "--org", "acme")
    assert code == 0 and out.startswith("no schedule")
    with session_scope() as s:
        assert s.get(PoolSchedule, pool.id) is None

    code, out, err = run(capsys, "pool", "delete", "ci", "--org", "acme")
    assert code == 0 and "deleting" in out, err
    with session_scope() as s:
        assert s.get(Pool, pool.id).deleted_at is not None


@pytest.mark.parametrize("argv,needle", [
    (["pool", "create", "ci", "--runner", "nope", "--max", "1"], "runner 'nope' not found"),
    (["pool", "create", "c i", "--runner", "runner-fake", "--max", "1"], "pool name"),
    (["pool", "create", "ci", "--runner", "runner-fake", "--max", "1", "--template", "[1]"], "JSON object"),
    (["pool", "create", "ci", "--runner", "runner-fake", "--max", "1", "--empty-policy", "panic"], "empty_policy"),
    (["pool", "update", "nope", "--max", "1"], "not found"),
    (["pool", "schedule", "nope"], "not found"),
])
def test_bad_commands_say_what_is_wrong_in_one_line(capsys, acme, argv, needle):
    code, out, err = run(capsys, *argv, "--org", "acme")
    assert code == 1 and needle in err and "Traceback" not in err, (out, err)
    with session_scope() as s:
        assert s.query(Pool).count() == 0


def test_bad_schedule_entries_and_empty_updates(capsys, acme):
    assert run(capsys, "pool", "create", "ci", "--runner", "runner-fake", "--max", "3", "--org", "acme")[0] == 0
    for entry, needle in (("0 8 * * 1-5", "5 cron fields, a timezone and sizes"),
                          ("0 8 * * 1-5 Europe/Berlin min=x", "min=N"),
                          ("0 8 * * 1-5 Mars/Base min=1", "IANA"),
                          ("0 25 * * * UTC min=1", "cron")):
        code, _, err = run(capsys, "pool", "schedule", "ci", "--entry", entry, "--org", "acme")
        assert code == 1 and needle in err, (entry, err)
    code, _, err = run(capsys, "pool", "update", "ci", "--org", "acme")
    assert code == 1 and "nothing to change" in err
