"""`warmpool rollout status|policy|pause|resume|rollback` run in-process against real PostgreSQL as a
user types them, by pool name, with the errors a user can make."""
from __future__ import annotations

import pytest

from app.db import session_scope
from app.models import Pool
from tests.integration.test_cli_pools import run
from tests.leasing import make_pool

pytestmark = pytest.mark.postgres


def test_rollout_commands_by_pool_name(org, capsys):
    pool = make_pool(org.org_id, "builders", snapshot_id="snap-2", previous_snapshot_id="snap-1")

    code, out, err = run(capsys, "rollout", "status", "builders", "--org", "acme")
    assert code == 0, err
    assert "stage:         complete" in out and "snap-2 (previous snap-1)" in out

    code, out, err = run(capsys, "rollout", "policy", "builders", "--canary", "1", "--bake-seconds", "60",
                         "--org", "acme")
    assert code == 0, err
    assert "canary=1" in out and "bake_seconds=60" in out and "max_surge=2" in out, "unset flags keep their value"

    code, out, err = run(capsys, "rollout", "pause", "builders", "--org", "acme")
    assert code == 0 and "(paused)" in out, err
    code, out, err = run(capsys, "rollout", "resume", "builders", "--org", "acme")
    assert code == 0 and "(paused)" not in out, err

    code, out, err = run(capsys, "rollout", "rollback", "builders", "--org", "acme")
    assert code == 0, err
    assert "snap-1 (previous snap-2)" in out
    with session_scope() as s:
        assert s.get(Pool, pool.id).snapshot_id == "snap-1"


def test_rollout_errors_are_one_line(org, capsys):
    make_pool(org.org_id, "plain")
    code, out, err = run(capsys, "rollout", "rollback", "plain", "--org", "acme")
    assert code == 1 and err.startswith("error: ") and "no previous snapshot" in err and "Traceback" not in err
    code, out, err = run(capsys, "rollout", "policy", "plain", "--canary", "-3", "--org", "acme")
    assert code == 1 and err.startswith("error: --canary:") and "Traceback" not in err
    code, out, err = run(capsys, "rollout", "status", "nosuch", "--org", "acme")
    assert code == 1 and "nosuch" in err
