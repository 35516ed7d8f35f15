"""A unit of work PostgreSQL aborts to break a deadlock runs again from the start (app.db.run_in_transaction,
the lease path's unit of work); one whose retries run out answers `aborted`, never an internal error."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from app.api.hygiene import domain_error_of
from app.db import get_engine, is_retryable, run_in_transaction, session_scope
from app.domain.errors import Aborted
from app.models import Organization, new_id

pytestmark = pytest.mark.postgres

LOCK = "SELECT id FROM organizations WHERE id = :id FOR UPDATE"


def two_rows() -> tuple[str, str]:
    a, b = new_id(), new_id()
    with session_scope() as s:
        s.add_all([Organization(id=a, name=f"a-{a}"), Organization(id=b, name=f"b-{b}")])
    return a, b


def deadlock_on_first_attempt(a: str, b: str, attempts: int) -> tuple[list[int], threading.Thread]:
    """Run a unit of work that locks A then B while another transaction locks B then A. The unit of work
    waits first and with the shorter deadlock_timeout, so PostgreSQL aborts it, not the other one."""
    a_locked, b_locked = threading.Event(), threading.Event()
    tries: list[int] = []

    def other() -> None:
        with get_engine().begin() as conn:
            conn.execute(sa.text(LOCK), {"id": b})
            b_locked.set()
            a_locked.wait(10)
            conn.execute(sa.text(LOCK), {"id": a})  # waits for the unit of work, which the deadlock aborts

    thread = threading.Thread(target=other)
    thread.start()

    def work(session) -> int:
        tries.append(1)
        session.execute(sa.text("SET LOCAL deadlock_timeout = '100ms'"))
        session.execute(sa.text(LOCK), {"id": a})
        if len(tries) == 1:
            a_locked.set()
            b_locked.wait(10)
        session.execute(sa.text(LOCK), {"id": b})
        return len(tries)

    try:
        run_in_transaction(work, attempts=attempts)
    finally:
        thread.join(10)
    return tries, thread


def test_a_deadlocked_unit_of_work_runs_again_and_commits(db):
    a, b = two_rows()
    tries, thread = deadlock_on_first_attempt(a, b, attempts=3)
    assert len(tries) == 2 and not thread.is_alive()


def test_when_retries_run_out_the_conflict_is_aborted_not_internal(db):
    a, b = two_rows()
    with pytest.raises(sa.exc.OperationalError) as failed:
        deadlock_on_first_attempt(a, b, attempts=1)
    assert is_retryable(failed.value)
    assert isinstance(domain_error_of(failed.value), Aborted)
