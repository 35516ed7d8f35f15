"""Warm-pool rules on real PostgreSQL: one pool per pair under concurrency, org isolation, spec versions,
delete semantics, the snapshot of the pair, and reconcile_pool enqueued only after commit."""
from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app.api.gitpod import warm_pool_message
from app.db import get_engine, session_scope
from app.domain import catalog, pagination, pools, prebuilds
from app.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from app.domain.states import PoolPhase, PrebuildPhase
from app.models import Pool, Prebuild
from tests.conftest import World, make_catalog, make_org

pytestmark = pytest.mark.postgres
PAGE = pagination.Page(size=100)


def create(w: World, **sizes) -> Pool:
    sizes = sizes or {"min_size": 1, "max_size": 3}
    with session_scope() as s:
        return pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, session=s, **sizes)


def load(w: World, pool_id: str) -> Pool:
    with session_scope() as s:
        return pools.get_pool(w.org_id, pool_id, session=s)


def live_pools_of_pair(w: World) -> list[Pool]:
    with session_scope() as s:
        return pools.pools_of_pair(w.project_id, w.env_class_id, session=s)


# ---- uniqueness under concurrency --------------------------------------------------------------

def test_concurrent_creates_for_one_pair_exactly_one_wins(prebuild_ready_project):
    w = prebuild_ready_project
    n = 4
    barrier = threading.Barrier(n, timeout=10)
    results: list[object] = [None] * n

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            results[i] = create(w, min_size=0, max_size=2)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results[i] = exc

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    winners = [r for r in results if isinstance(r, Pool)]
    losers = [r for r in results if not isinstance(r, Pool)]
    assert len(winners) == 1, results
    assert all(isinstance(r, AlreadyExists) for r in losers), results
    assert [p.id for p in live_pools_of_pair(w)] == [winners[0].id]


def test_a_create_racing_an_uncommitted_twin_is_already_exists(prebuild_ready_project, effects_log):
    """Force the interleaving the pre-check cannot see: B checks while A's insert is uncommitted,
    so only the partial unique index can stop B."""
    w = prebuild_ready_project
    outcome: list[object] = []

    def second() -> None:
        try:
            outcome.append(create(w))
        except Exception as exc:  # noqa: BLE001
            outcome.append(exc)

    with session_scope() as s:
        first = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=1, max_size=2, session=s)
        b = threading.Thread(target=second)
        b.start()
        wait_for_lock_waiter()
    b.join(timeout=20)
    assert len(outcome) == 1 and isinstance(outcome[0], AlreadyExists), outcome
    assert "already exists" in outcome[0].message
    assert [p.id for p in live_pools_of_pair(w)] == [first.id]
    assert effects_log == [("reconcile_pool", {"pool_id": first.id})]  # the loser enqueued nothing


def wait_for_lock_waiter(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with get_engine().connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )).scalar_one()
            conn.commit()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the second create never waited on the first one's insert")


def test_existing_pool_is_already_exists_with_its_id(warm_pool):
    with pytest.raises(AlreadyExists, match=warm_pool.pool_id):
        create(warm_pool)


# ---- org isolation -------------------------------------------------------------------------------

@pytest.fixture
def two_orgs(warm_pool) -> tuple[World, World]:
    mine = warm_pool
    other = make_catalog(make_org("other-org"))
    other.pool_id = create(other).id
    with session_scope() as s:
        other_prebuild = prebuilds.create_prebuild(other.org_id, other.project_id, other.env_class_id, session=s)
    other.prebuild_id = other_prebuild.id  # type: ignore[attr-defined]
    return mine, other


def test_another_orgs_objects_are_not_found(two_orgs):
    mine, other = two_orgs
    org = mine.org_id
    calls = [
        lambda s: pools.get_pool(org, other.pool_id, session=s),
        lambda s: pools.resize_pool(org, other.pool_id, min_size=0, session=s),
        lambda s: pools.delete_pool(org, other.pool_id, session=s),
        lambda s: catalog.get_project(org, other.project_id, session=s),
        lambda s: catalog.update_project(org, other.project_id, {"name": "x"}, session=s),
        lambda s: catalog.delete_project(org, other.project_id, session=s),
        lambda s: catalog.get_environment_class(org, other.env_class_id, session=s),
        lambda s: catalog.update_environment_class(org, other.env_class_id, enabled=False, session=s),
        lambda s: prebuilds.get_prebuild(org, other.prebuild_id, session=s),
        lambda s: prebuilds.cancel_prebuild(org, other.prebuild_id, session=s),
        lambda s: pools.create_warm_pool(org, other.project_id, mine.env_class_id, min_size=0, max_size=1, session=s),
        lambda s: pools.create_warm_pool(org, mine.project_id, other.env_class_id, min_size=0, max_size=1, session=s),
        lambda s: catalog.create_environment_class(org, other.runner_id, "abc", "", [], session=s),
    ]
    for i, fn in enumerate(calls):
        try:
            with session_scope() as s:
                fn(s)
        except NotFound:
            continue
        pytest.fail(f"call #{i} reached another organization's object")
    other_pool = load(other, other.pool_id)
    assert (other_pool.phase, other_pool.spec_version, other_pool.min_size) == ("pending", 1, 1)


def test_a_project_cannot_name_another_orgs_class(two_orgs):
    mine, other = two_orgs
    with pytest.raises(InvalidArgument, match="not found"), session_scope() as s:
        catalog.update_project(mine.org_id, mine.project_id, {"prebuildConfiguration": {
            "enabled": True, "environmentClassIds": [other.env_class_id]}}, session=s)


def test_lists_show_only_the_callers_org(two_orgs):
    mine, other = two_orgs
    with session_scope() as s:
        assert [p.id for p in pools.list_pools(mine.org_id, PAGE, session=s)[0]] == [mine.pool_id]
        assert [p.id for p in pools.list_pools(other.org_id, PAGE, session=s)[0]] == [other.pool_id]
        assert [p.id for p in catalog.list_projects(mine.org_id, PAGE, session=s)[0]] == [mine.project_id]
        assert [e.id for e in catalog.list_environment_classes(mine.org_id, PAGE, session=s)[0]] == [mine.env_class_id]
        assert prebuilds.list_prebuilds(mine.org_id, PAGE, session=s)[0] == []
        # Filtering by the other org's ids finds nothing rather than leaking them.
        assert pools.list_pools(mine.org_id, PAGE, project_ids=[other.project_id], session=s)[0] == []
    empty = make_org("empty-org")
    with session_scope() as s:
        assert pools.list_pools(empty.org_id, PAGE, session=s) == ([], "")


# ---- spec_version --------------------------------------------------------------------------------

def resize(w: World, **sizes) -> Pool:
    with session_scope() as s:
        return pools.resize_pool(w.org_id, w.pool_id, session=s, **sizes)


def test_spec_version_bumps_on_each_real_change_only(warm_pool, effects_log):
    w = warm_pool
    assert load(w, w.pool_id).spec_version == 1
    effects_log.clear()
    assert resize(w, max_size=5).spec_version == 2
    assert resize(w, min_size=0).spec_version == 3
    assert resize(w, min_size=2, max_size=4).spec_version == 4
    assert len(effects_log) == 3
    effects_log.clear()
    # No-ops: the same sizes, or nothing at all.
    assert resize(w, min_size=2, max_size=4).spec_version == 4
    assert resize(w).spec_version == 4
    assert resize(w, max_size=4).spec_version == 4
    assert effects_log == []
    stored = load(w, w.pool_id)
    assert (stored.spec_version, stored.min_size, stored.max_size) == (4, 2, 4)


def test_a_resize_that_breaks_min_le_max_changes_nothing(warm_pool):
    w = warm_pool
    with pytest.raises(InvalidArgument, match="min_size must be <= max_size"):
        resize(w, min_size=5)  # max stays 3
    stored = load(w, w.pool_id)
    assert (stored.spec_version, stored.min_size, stored.max_size) == (1, 1, 3)


def test_snapshot_change_bumps_spec_version(warm_pool):
    w = warm_pool
    with session_scope() as s:
        pool = pools.get_pool(w.org_id, w.pool_id, session=s)
        assert pools.set_snapshot(pool, "snap-a", session=s) is True
        assert pools.set_snapshot(pool, "snap-a", session=s) is False
    stored = load(w, w.pool_id)
    assert (stored.snapshot_id, stored.spec_version) == ("snap-a", 2)


# ---- delete semantics ----------------------------------------------------------------------------

def delete(w: World, pool_id: str | None = None) -> Pool:
    with session_scope() as s:
        return pools.delete_pool(w.org_id, pool_id or w.pool_id, session=s)


def test_delete_marks_deleting_and_is_idempotent(warm_pool, effects_log):
    w = warm_pool
    effects_log.clear()
    first = delete(w)
    assert first.phase == PoolPhase.DELETING and first.desired_phase == PoolPhase.DELETED
    assert first.deleted_at is not None and first.spec_version == 2
    assert effects_log == [("reconcile_pool", {"pool_id": w.pool_id})]
    again = delete(w)
    assert (again.phase, again.spec_version, again.deleted_at) == (PoolPhase.DELETING, 2, first.deleted_at)
    # Still visible (draining) until the engine finishes it.
    with session_scope() as s:
        assert [p.id for p in pools.list_pools(w.org_id, PAGE, session=s)[0]] == [w.pool_id]
    assert warm_pool_message(load(w, w.pool_id)).status.phase == 40  # WARM_POOL_PHASE_DELETING


def test_a_deleting_pool_cannot_be_updated(warm_pool):
    w = warm_pool
    delete(w)
    with pytest.raises(FailedPrecondition, match="being deleted"):
        resize(w, max_size=5)
    assert load(w, w.pool_id).max_size == 3


def test_the_pair_can_get_a_new_pool_after_delete(warm_pool):
    w = warm_pool
    delete(w)
    fresh = create(w, min_size=0, max_size=1)
    assert fresh.id != w.pool_id
    assert [p.id for p in live_pools_of_pair(w)] == [fresh.id]
    with pytest.raises(AlreadyExists):
        create(w)


def test_deleted_pools_leave_the_list(warm_pool):
    w = warm_pool
    delete(w)
    with session_scope() as s:
        pool = pools.get_pool(w.org_id, w.pool_id, session=s)
        pool.phase = str(PoolPhase.DELETED)  # what the engine does once drained
    with session_scope() as s:
        assert pools.list_pools(w.org_id, PAGE, session=s)[0] == []


# ---- snapshotId -----------------------------------------------------------------------------------

def add_prebuild(w: World, phase: PrebuildPhase, snapshot: str | None, completed: datetime | None,
                 env_class_id: str | None = None) -> None:
    with session_scope() as s:
        s.add(Prebuild(organization_id=w.org_id, project_id=w.project_id, environment_class_id=env_class_id or w.env_class_id,
                       phase=str(phase), snapshot_id=snapshot, completion_time=completed))


def test_snapshot_is_empty_without_a_completed_prebuild(prebuild_ready_project):
    w = prebuild_ready_project
    add_prebuild(w, PrebuildPhase.RUNNING, None, None)
    add_prebuild(w, PrebuildPhase.FAILED, "snap-failed", datetime.now(UTC))
    pool = create(w)
    assert pool.snapshot_id is None
    assert not warm_pool_message(pool).spec.HasField("snapshot_id")


def test_snapshot_is_the_newest_completed_prebuild_of_the_pair(prebuild_ready_project):
    w = prebuild_ready_project
    now = datetime.now(UTC)
    with session_scope() as s:
        other_ec = catalog.create_environment_class(w.org_id, w.runner_id, "other", "", [], session=s)
    add_prebuild(w, PrebuildPhase.COMPLETED, "snap-old", now - timedelta(hours=2))
    add_prebuild(w, PrebuildPhase.COMPLETED, "snap-new", now - timedelta(hours=1))
    add_prebuild(w, PrebuildPhase.FAILED, "snap-failed", now)  # newer, but not completed
    add_prebuild(w, PrebuildPhase.COMPLETED, "snap-other-class", now, env_class_id=other_ec.id)
    pool = create(w)
    assert pool.snapshot_id == "snap-new"
    assert warm_pool_message(pool).spec.snapshot_id == "snap-new"


# ---- reconcile_pool after commit ------------------------------------------------------------------

def test_writes_enqueue_reconcile_pool_after_commit(prebuild_ready_project, effects_log):
    w = prebuild_ready_project
    with session_scope() as s:
        pool = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=1, max_size=2, session=s)
        assert effects_log == []  # not before the commit
    assert effects_log == [("reconcile_pool", {"pool_id": pool.id})]
    w.pool_id = pool.id
    effects_log.clear()
    with session_scope() as s:
        pools.resize_pool(w.org_id, pool.id, max_size=4, session=s)
        assert effects_log == []
    assert effects_log == [("reconcile_pool", {"pool_id": pool.id})]
    effects_log.clear()
    delete(w)
    assert effects_log == [("reconcile_pool", {"pool_id": pool.id})]


class Boom(Exception):
    pass


def test_a_rolled_back_write_enqueues_nothing(warm_pool, effects_log):
    w = warm_pool
    effects_log.clear()
    with pytest.raises(Boom), session_scope() as s:
        pools.resize_pool(w.org_id, w.pool_id, max_size=9, session=s)
        raise Boom()
    with pytest.raises(Boom), session_scope() as s:
        pools.delete_pool(w.org_id, w.pool_id, session=s)
        raise Boom()
    assert effects_log == []
    stored = load(w, w.pool_id)
    assert (stored.max_size, stored.phase, stored.spec_version) == (3, "pending", 1)
    # And a failed create leaves neither a row nor an effect behind.
    delete(w)
    effects_log.clear()
    with pytest.raises(Boom), session_scope() as s:
        pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=0, max_size=1, session=s)
        raise Boom()
    assert effects_log == [] and live_pools_of_pair(w) == []


def test_the_next_unit_of_work_does_not_inherit_rolled_back_effects(warm_pool, effects_log):
    w = warm_pool
    effects_log.clear()
    with pytest.raises(Boom), session_scope() as s:
        pools.resize_pool(w.org_id, w.pool_id, max_size=9, session=s)
        raise Boom()
    with session_scope() as s:
        pools.get_pool(w.org_id, w.pool_id, session=s)
    assert effects_log == []


# ---- the project's prebuild configuration owns its pools ------------------------------------------

def test_removing_a_class_from_the_prebuild_configuration_deletes_its_pool(warm_pool, effects_log):
    w = warm_pool
    with session_scope() as s:
        kept_ec = catalog.create_environment_class(w.org_id, w.runner_id, "kept", "", [], session=s)
        catalog.update_project(w.org_id, w.project_id, {"prebuildConfiguration": {
            "enabled": True, "environmentClassIds": [w.env_class_id, kept_ec.id]}}, session=s)
    kept = World(org_id=w.org_id, token=w.token, project_id=w.project_id, env_class_id=kept_ec.id)
    kept_pool = create(kept)
    effects_log.clear()
    with session_scope() as s:
        catalog.update_project(w.org_id, w.project_id, {"prebuildConfiguration": {
            "enabled": True, "environmentClassIds": [kept_ec.id]}}, session=s)
    assert load(w, w.pool_id).phase == PoolPhase.DELETING
    assert load(w, kept_pool.id).phase == PoolPhase.PENDING
    assert effects_log == [("reconcile_pool", {"pool_id": w.pool_id})]
    with pytest.raises(FailedPrecondition, match="not in the prebuild configuration"):
        create(w)


def test_disabling_prebuilds_deletes_every_pool_of_the_project(warm_pool):
    w = warm_pool
    with session_scope() as s:
        catalog.update_project(w.org_id, w.project_id, {"prebuildConfiguration": {
            "enabled": False, "environmentClassIds": [w.env_class_id]}}, session=s)
    assert load(w, w.pool_id).phase == PoolPhase.DELETING
    with pytest.raises(FailedPrecondition, match="does not have prebuilds enabled"):
        create(w)


def test_an_unrelated_project_update_keeps_the_pool(warm_pool, effects_log):
    w = warm_pool
    effects_log.clear()
    with session_scope() as s:
        catalog.update_project(w.org_id, w.project_id, {"technicalDescription": "hello"}, session=s)
    pool = load(w, w.pool_id)
    assert (pool.phase, pool.spec_version) == ("pending", 1) and effects_log == []
