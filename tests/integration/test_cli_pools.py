"""`warmpool pools [--watch]`, `pool show`, `runner list|delete` and the organization rules every command
shares, run in-process against real PostgreSQL as a user types them."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from app import cli, cli_pools
from app.db import session_scope
from app.domain import instances, pools, tenancy
from app.models import Instance, Organization, Pool, Runner
from tests.leasing import add_ready, get, make_pool

pytestmark = pytest.mark.postgres

SECRET = "ukc-secret-token-6d1f"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def recount(pool_id: str) -> None:
    with session_scope() as s:
        instances.recount(s.get(Pool, pool_id), session=s)


def with_address(iid: str, address: str) -> None:
    with session_scope() as s:
        s.execute(sa.update(Instance).where(Instance.id == iid).values(address=address))


def org_count() -> int:
    with session_scope() as s:
        return s.execute(sa.select(sa.func.count()).select_from(Organization)).scalar_one()


@pytest.fixture
def runner(org):
    with session_scope() as s:
        return tenancy.create_runner(org.org_id, "fake-eu", "fake", {}, session=s)


@pytest.fixture
def filled_pool(org, runner):
    """`builders`: two ready instances with addresses on snapshot snap-1, one of them leased by `ci`."""
    pool = make_pool(org.org_id, "builders", runner_id=runner.id, max_size=4, snapshot_id="snap-1")
    ids = add_ready(pool, 2, snapshot_id="snap-1")
    for n, iid in enumerate(ids):
        with_address(iid, f"10.0.0.{n + 1}:8080")
    recount(pool.id)
    return pool, ids


def test_pools_lists_every_pool_with_its_status(org, filled_pool, capsys):
    pool, _ = filled_pool
    make_pool(org.org_id, "empty-one")
    with session_scope() as s:  # a failing pool shows its failure message
        p = s.get(Pool, pool.id)
        p.failure_message, p.desired_size = "provider said: quota exceeded", 3
    code, out, err = run(capsys, "pools", "--org", "acme")
    assert code == 0, err
    title, header, *rows = out.strip().splitlines()
    assert "organization acme: 2 pool(s)" in title
    assert header.split() == ["POOL", "KIND", "PHASE", "READY", "LEASED", "STOPPED", "DESIRED", "MIN-MAX",
                              "SNAPSHOT", "FAILURE"]
    by_name = {r.split()[0]: r for r in rows}
    assert by_name["builders"].split()[:9] == ["builders", "named", "ready", "2", "0", "0", "3", "0-4", "snap-1"]
    assert by_name["builders"].endswith("provider said: quota exceeded")
    assert by_name["empty-one"].split()[:3] == ["empty-one", "named", "pending"]

    with session_scope() as s:  # text a tenant or a provider wrote never drives the operator's terminal
        s.get(Pool, pool.id).failure_message = "boom\x1b[2J\x1b]0;pwned\x07"
    code, out, _ = run(capsys, "pools", "--org", "acme")
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "boom?[2J?]0;pwned?" in out
    code, out, _ = run(capsys, "pool", "show", "builders", "--org", "acme")
    assert code == 0 and "\x1b" not in out and "failure    boom?[2J" in out

    gone = make_pool(org.org_id, "gone")
    with session_scope() as s:  # deleted pools are history: shown only with --all
        pools.delete_pool(org.org_id, gone.id, session=s)
        s.execute(sa.update(Pool).where(Pool.id == gone.id).values(phase="deleted"))
    assert "gone" not in run(capsys, "pools", "--org", "acme")[1]
    assert "gone" in run(capsys, "pools", "--all", "--org", "acme")[1]


def test_pool_show_lists_instances_with_lease_and_address(org, filled_pool, capsys, monkeypatch):
    from app import cli_leases

    monkeypatch.setattr(cli_leases, "_dispatch_after_commit", lambda: None)  # effects_log records them instead
    pool, ids = filled_pool
    code, out, err = run(capsys, "lease", "--pool", "builders", "--tag", "ci", "--org", "acme")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["INSTANCE", "POOL", "STATE", "TAG", "EXPIRES", "ADDRESS", "ZONE"]
    leased = row.split()[0]
    assert leased in ids and f"10.0.0.{ids.index(leased) + 1}:8080" in row.split()

    for ref in ("builders", pool.id):  # by name or by id
        code, out, err = run(capsys, "pool", "show", ref, "--org", "acme")
        assert code == 0, err
        facts, table = out.split("\n\n", 1)
        assert f"pool       builders (id {pool.id})" in facts and "runner     fake-eu (fake" in facts
        assert "snapshot   snap-1" in facts and "phase      ready" in facts
        header, *rows = table.strip().splitlines()
        assert header.split() == ["INSTANCE", "STATE", "DESIRED", "LEASE", "ADDRESS", "ZONE", "SNAPSHOT"]
        row_of = {r.split()[0]: r for r in rows}
        assert set(row_of) == set(ids)
        assert row_of[leased].split()[1:5] == ["running", "running", "ci", "until"]
        free = next(i for i in ids if i != leased)
        assert row_of[free].split()[1:6] == ["running", "running", "free", f"10.0.0.{ids.index(free) + 1}:8080", "zone-a"]

    code, _, err = run(capsys, "pool", "show", "nope", "--org", "acme")
    assert code == 1 and err.strip() == ("error: pool 'nope' not found in organization 'acme' "
                                        "(--org or $WARMPOOL_ORG picks another)")


def test_watch_redraws_fresh_state_until_stopped(org, filled_pool, capsys, monkeypatch):
    pool, ids = filled_pool
    pauses: list[float] = []

    def between_frames(seconds: float) -> None:  # the test hook: change the world between two frames
        pauses.append(seconds)
        make_pool(org.org_id, "arrived-later")

    monkeypatch.setattr(cli_pools, "_pause", between_frames)
    code, out, err = run(capsys, "pools", "--watch", "--count", "2", "--interval", "0.5", "--org", "acme")
    assert code == 0, err
    frames = [f for f in out.split("\n\n") if f.strip()]
    assert len(frames) == 2 and pauses == [0.5]  # two frames, one pause between them, none after the last
    assert "arrived-later" not in frames[0] and "arrived-later" in frames[1]
    assert "1 pool(s)" in frames[0] and "2 pool(s)" in frames[1]

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_pools, "_pause", interrupted)
    code, out, err = run(capsys, "pools", "--watch", "--org", "acme")
    assert code == 0 and err == "" and out.count("organization acme") == 1  # Ctrl-C ends it quietly

    monkeypatch.setattr(cli_pools.sys.stdout, "isatty", lambda: True, raising=False)
    code, out, _ = run(capsys, "pools", "--watch", "--org", "acme")
    assert out.startswith(cli_pools.CLEAR)  # on a terminal each frame replaces the last


def test_until_ready_watches_until_every_pool_is_ready(org, capsys, monkeypatch):
    pending = make_pool(org.org_id, "filling")
    with session_scope() as s:
        s.execute(sa.update(Pool).where(Pool.id == pending.id).values(desired_size=1))

    def fill(seconds: float) -> None:
        add_ready(pending)
        recount(pending.id)

    monkeypatch.setattr(cli_pools, "_pause", fill)
    code, out, err = run(capsys, "pools", "--until-ready", "--org", "acme")
    assert code == 0, err
    first, second = [f for f in out.split("\n\n") if f.strip()]
    assert first.splitlines()[2].split()[2:4] == ["pending", "0"]
    assert second.splitlines()[2].split()[2:4] == ["ready", "1"]


def test_lease_quiet_prints_id_and_address(org, filled_pool, capsys, monkeypatch):
    from app import cli_leases

    monkeypatch.setattr(cli_leases, "_dispatch_after_commit", lambda: None)
    _, ids = filled_pool
    code, out, err = run(capsys, "lease", "-q", "--org", "acme")
    assert code == 0, err
    iid, address = out.split()
    assert iid in ids and address == f"10.0.0.{ids.index(iid) + 1}:8080"


def test_runner_list_masks_secrets_and_delete_refuses_while_pools_use_it(org, filled_pool, runner, capsys):
    pool, _ = filled_pool
    code, out, err = run(capsys, "runner", "create", "ukc-eu", "--provider", "unikraft", "--setting", "metro=fra",
                         "--setting", f"token={SECRET}", "--org", "acme")
    assert code == 0, err
    ukc_id = out.strip()
    code, out, err = run(capsys, "runner", "list", "--org", "acme")
    assert code == 0 and SECRET not in out + err
    header, *rows = out.strip().splitlines()
    assert header.split() == ["ID", "NAME", "PROVIDER", "POOLS", "SETTINGS"]
    row_of = {r.split()[1]: r for r in rows}
    assert row_of["ukc-eu"].split()[2:] == ["unikraft", "0", "metro=fra,", "token=***"]
    assert row_of["fake-eu"].split()[2:] == ["fake", "1", "-"]

    code, _, err = run(capsys, "runner", "delete", "fake-eu", "--org", "acme")
    assert code == 1 and "used by 1 live pool(s): builders (ready)" in err
    with session_scope() as s:  # a deleting pool still drains through its runner
        pools.delete_pool(org.org_id, pool.id, session=s)
    code, _, err = run(capsys, "runner", "delete", runner.id, "--org", "acme")
    assert code == 1 and "builders (deleting)" in err and get(Runner, runner.id) is not None
    with session_scope() as s:
        s.execute(sa.update(Pool).where(Pool.id == pool.id).values(phase="deleted"))
    code, out, err = run(capsys, "runner", "delete", "fake-eu", "--org", "acme")
    assert code == 0 and out.strip() == f"deleted runner fake-eu ({runner.id})"
    assert get(Runner, runner.id) is None and get(Pool, pool.id).runner_id is None
    code, out, _ = run(capsys, "runner", "delete", ukc_id, "--org", "acme")
    assert code == 0
    code, out, _ = run(capsys, "runner", "list", "--org", "acme")
    assert "has no runners" in out
    code, _, err = run(capsys, "runner", "delete", "fake-eu", "--org", "acme")
    assert code == 1 and err.strip().startswith("error: runner 'fake-eu' not found in organization 'acme'")


@pytest.mark.parametrize("argv", [["pools"], ["pools", "--watch", "--count", "1"], ["pool", "show", "x"],
                                  ["runner", "list"], ["runner", "delete", "x"], ["leases"], ["leases", "--all"],
                                  ["lease"], ["return", "some-instance"]])
def test_an_unknown_organization_is_an_error_and_is_never_created(org, capsys, argv):
    before = org_count()
    code, out, err = run(capsys, *argv, "--org", "nosuchorg")
    assert code == 1 and out == ""
    assert err.strip() == "error: no organization named 'nosuchorg' (`warmpool token create --org nosuchorg` creates it)"
    assert org_count() == before


def test_the_organization_comes_from_the_flag_then_the_environment_then_dev(org, filled_pool, capsys, monkeypatch):
    monkeypatch.delenv("WARMPOOL_ORG", raising=False)
    code, _, err = run(capsys, "pools")
    assert code == 1 and "no organization named 'dev'" in err
    monkeypatch.setenv("WARMPOOL_ORG", "acme")
    code, out, _ = run(capsys, "pools")
    assert code == 0 and "organization acme" in out and "builders" in out
    code, _, err = run(capsys, "pools", "--org", "other")  # the flag wins
    assert code == 1 and "'other'" in err
