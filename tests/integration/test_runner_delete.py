"""tenancy.delete_runner on both backends: refused while a live (or draining) pool uses the runner, its
environment classes go with it, and a pool inserted beside the delete can never point at a deleted runner."""
from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from app.db import get_engine, session_scope
from app.domain import pools, tenancy
from app.domain.errors import AlreadyExists, FailedPrecondition
from app.domain.states import PoolKind
from app.models import EnvironmentClass, Pool, Runner
from tests.conftest import make_catalog
from tests.leasing import get


def _mark_deleted(pool_id: str) -> None:
    with session_scope() as s:
        s.execute(sa.update(Pool).where(Pool.id == pool_id).values(phase="deleted"))


def _lock_waiters(backend: str, want: int, timeout: float = 20.0) -> None:
    """On PostgreSQL, poll until `want` sessions wait on a row lock. SQLite serialises writers at BEGIN
    IMMEDIATE, so the second transaction runs after the first whatever the timing: nothing to wait for."""
    if backend != "postgresql":
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_engine().connect() as conn:
            waiting = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )).scalar_one()
        if waiting >= want:
            return
        time.sleep(0.02)
    raise AssertionError("the concurrent transaction never waited on the lock")


def _named_pool(org_id: str, runner_id: str, name: str) -> Pool:
    return pools.new_pool(org_id, kind=PoolKind.NAMED, name=name, min_size=0, max_size=1, runner_id=runner_id)


def test_delete_refuses_while_pools_use_the_runner_and_cascades_its_classes(any_org):
    w = make_catalog(any_org)
    with session_scope() as s:
        pool = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=1, max_size=2, session=s)
    for phase_note in ("pending", "deleting"):
        with pytest.raises(FailedPrecondition, match=rf"runner 'runner-fake' is used by 1 live pool\(s\): {pool.name} \({phase_note}\)"):
            with session_scope() as s:
                tenancy.delete_runner(w.org_id, "runner-fake", session=s)
        with session_scope() as s:
            pools.delete_pool(w.org_id, pool.id, session=s)
    _mark_deleted(pool.id)
    with session_scope() as s:
        runner, classes = tenancy.delete_runner(w.org_id, w.runner_id, session=s)
    assert (runner.id, classes) == (w.runner_id, 1)
    assert get(Runner, w.runner_id) is None and get(EnvironmentClass, w.env_class_id) is None
    kept = get(Pool, pool.id)  # history stays, detached from what is gone
    assert kept is not None and kept.runner_id is None and kept.environment_class_id is None


def test_a_pool_inserted_while_the_runner_is_deleted_is_refused(any_org, backend):
    with session_scope() as s:
        runner = tenancy.create_runner(any_org.org_id, "r", "fake", {}, session=s)
    outcome: list[BaseException | str] = []

    def insert_late_pool() -> None:
        try:
            with session_scope() as s:
                pools.insert_pool(_named_pool(any_org.org_id, runner.id, "late"), session=s, conflict="late exists")
            outcome.append("inserted")
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            outcome.append(exc)

    with session_scope() as s:
        tenancy.delete_runner(any_org.org_id, runner.id, session=s)
        t = threading.Thread(target=insert_late_pool)
        t.start()
        _lock_waiters(backend, 1)  # the insert's foreign-key check waits for the delete
    t.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], AlreadyExists | sa.exc.IntegrityError), outcome
    with session_scope() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Pool).where(Pool.name == "late")).scalar_one() == 0
    assert get(Runner, runner.id) is None


def test_a_delete_beside_a_pool_insert_sees_the_pool(any_org, backend):
    with session_scope() as s:
        runner = tenancy.create_runner(any_org.org_id, "r", "fake", {}, session=s)
    outcome: list[BaseException | str] = []

    def delete() -> None:
        try:
            with session_scope() as s:
                tenancy.delete_runner(any_org.org_id, runner.id, session=s)
            outcome.append("deleted")
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            outcome.append(exc)

    with session_scope() as s:
        pools.insert_pool(_named_pool(any_org.org_id, runner.id, "early"), session=s, conflict="early exists")
        t = threading.Thread(target=delete)
        t.start()
        _lock_waiters(backend, 1)  # the delete's row lock waits for the insert's key-share lock
    t.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], FailedPrecondition) and "early" in str(outcome[0]), outcome
    assert get(Runner, runner.id) is not None
