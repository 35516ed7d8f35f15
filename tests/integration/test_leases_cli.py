"""`warmpool lease`, `warmpool leases`, `warmpool return` against real PostgreSQL, as a user types them."""
from __future__ import annotations

import pytest

from app import cli, cli_leases
from app.domain import effects
from app.models import Instance, Reservation
from tests.leasing import add_ready, get, make_pool, reservation

pytestmark = pytest.mark.postgres


@pytest.fixture
def dispatched(org, monkeypatch):
    """The commands hand deferred work to Celery; here it is recorded instead."""
    seen: list[tuple[str, dict]] = []
    monkeypatch.setattr(cli_leases, "_dispatch_after_commit",
                        lambda: effects.set_dispatcher(lambda name, payload: seen.append((name, payload))))
    return seen


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_lease_list_and_return_print_readable_tables(org, dispatched, capsys):
    pool = make_pool(org.org_id, "builders", lease_max_seconds=7200)
    [iid] = add_ready(pool, zone="eu-1")
    code, out, _ = run(capsys, "lease", "--pool", "builders", "--for", "30m", "--tag", "ci", "--org", "acme")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["INSTANCE", "POOL", "STATE", "TAG", "EXPIRES", "ADDRESS", "ZONE"]
    assert row.split()[:4] == [iid, "builders", "active", "ci"] and "(in 29m" in row and row.split()[-2:] == ["-", "eu-1"]
    assert ("reconcile_pool", {"pool_id": pool.id}) in dispatched

    code, out, _ = run(capsys, "leases", "--org", "acme")
    assert code == 0 and iid in out

    code, _, err = run(capsys, "return", iid, "--org", "acme")
    assert code == 1 and "another service tag" in err
    code, out, _ = run(capsys, "return", iid, "--tag", "ci", "--org", "acme")
    assert code == 0 and "destroyed" in out
    assert get(Instance, iid).desired_state == "deleted"
    assert ("delete_instance", {"instance_id": iid}) in dispatched
    code, _, err = run(capsys, "return", iid, "--tag", "ci", "--org", "acme")
    assert code == 1 and "already ended" in err

    code, out, _ = run(capsys, "leases", "--org", "acme")
    assert code == 0 and out.strip() == "no active leases"
    code, out, _ = run(capsys, "leases", "--all", "--org", "acme")
    assert "returned" in out and iid in out
    assert "(in " not in out and "ended " in out  # an ended lease shows when it ended, not a countdown


def test_lease_on_an_empty_pool_and_bad_durations(org, dispatched, capsys):
    make_pool(org.org_id, "empty")
    code, _, err = run(capsys, "lease", "--pool", "empty", "--org", "acme")
    assert code == 3 and "no ready instance" in err
    from app.db import session_scope

    with session_scope() as s:
        assert [r.state for r in s.query(Reservation).all()] == ["cancelled"]  # nothing left queued
    code, _, err = run(capsys, "lease", "--pool", "empty", "--reservation", "job-7", "--org", "acme")
    assert code == 3 and "'job-7' is queued" in err
    assert reservation(org.org_id, "job-7").state == "waiting"
    code, _, err = run(capsys, "lease", "--pool", "empty", "--for", "soon", "--org", "acme")
    assert code == 2 and "not a duration" in err
    code, _, err = run(capsys, "lease", "--pool", "missing", "--org", "acme")
    assert code == 1 and "not found" in err


def test_a_longer_lease_than_the_pool_grants_is_clamped_with_a_warning(org, dispatched, capsys):
    pool = make_pool(org.org_id, "short", lease_max_seconds=7200)
    add_ready(pool, zone="eu-1")
    add_ready(pool, zone="eu-1")
    code, out, err = run(capsys, "lease", "--pool", "short", "--for", "48h", "--org", "acme")
    assert code == 0 and "(in 1h59m" in out
    assert "warning: --for 48h is longer than pool 'short' grants; the lease is for 2h00m" in err, err
    code, out, err = run(capsys, "lease", "--pool", "short", "--for", "2h", "-q", "--org", "acme")
    assert code == 0 and "warning" not in err  # what the pool grants in full: no warning


def test_an_exhausted_reject_pool_is_retried_after_the_wait_it_names(org, dispatched, capsys, monkeypatch):
    import sqlalchemy as sa

    from app.db import session_scope
    from app.models import Pool

    pool = make_pool(org.org_id, "strict", empty_policy="reject")
    with session_scope() as s:  # as if it had measured its refills
        s.execute(sa.update(Pool).where(Pool.id == pool.id).values(refill_seconds=0.4))
    code, _, err = run(capsys, "lease", "--pool", "strict", "--wait", "0", "--org", "acme")
    assert code == 1 and "retry in 1 s" in err and "Traceback" not in err

    # The instance turns ready during the wait the command names, however slow the machine is.
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        add_ready(pool)

    monkeypatch.setattr(cli_leases, "_pause", pause)
    code, out, err = run(capsys, "lease", "--pool", "strict", "--wait", "10s", "--org", "acme")
    assert code == 0, err
    assert pauses == [1.0] and "waiting 1 s (--wait 10s)" in err and "strict" in out
