"""The async lease statements (app.domain.leases_async) encode exactly the moves the state machines allow
and exactly the claim predicate the sync path uses: the SQL text is checked against the tables."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from app.domain import claims, leases, leases_async as la, transitions
from app.domain.states import LEASE_TRANSITIONS, LeaseState
from app.models import Instance


def _from_states(sql: str, column: str) -> set[str]:
    found = re.findall(rf"{column} IN \(([^)]*)\)", sql)
    assert len(found) == 1, (column, found)
    return {s.strip().strip("'") for s in found[0].split(",")}


def test_return_moves_a_lease_only_from_what_the_machine_allows() -> None:
    # leases.end asks transitions.LEASE to move from ACTIVE to RETURNED: the SQL says the same.
    assert _from_states(la.RETURN, "leases.state") == {str(LeaseState.ACTIVE)}
    assert set(la.RETURN_FROM) == {str(s) for s in transitions.LEASE.sources(LeaseState.RETURNED)
                                   if s == LeaseState.ACTIVE}
    assert LeaseState.RETURNED in LEASE_TRANSITIONS[LeaseState.ACTIVE]
    assert f"state = '{LeaseState.RETURNED}'" in la.RETURN
    assert "ended_at = %(now)s" in la.RETURN  # the machine's stamp column
    assert transitions.LEASE.stamp == "ended_at"


def test_a_move_the_machine_refuses_cannot_be_rendered() -> None:
    with pytest.raises(transitions.InvalidTransition):
        la.from_states(transitions.LEASE, LeaseState.ACTIVE, [LeaseState.RETURNED])


def test_a_claim_creates_an_active_lease_that_can_end() -> None:
    assert la.CREATED_STATE == str(LeaseState.ACTIVE)
    assert f"'{la.CREATED_STATE}', NULL" in la.CLAIM_NAMED
    assert LEASE_TRANSITIONS[LeaseState(la.CREATED_STATE)], "a claimed lease must be able to end"


def test_the_claim_probes_what_the_sync_claim_probes() -> None:
    # What claims.READY says is in the async claims, the runner's epoch read for the probed pool once per
    # statement (claims.ready_in; tests/integration/test_epochs.py holds the behaviour on both backends).
    pool = sa.literal_column("(SELECT id FROM pool)")
    where = _compiled(sa.select(Instance.id).where(Instance.pool_id == pool, claims.ready_in(pool))).split("WHERE", 1)[1]
    assert where.strip() in la.PICK_SQL and la.PICK_SQL in la.CLAIM_NAMED
    assert where.strip() in la.PICK_MANY_SQL and la.PICK_MANY_SQL in la.CLAIM_NAMED_MANY
    free = _compiled(sa.select(Instance.id).where(claims._FREE)).split("WHERE", 1)[1].strip()
    ready = _compiled(sa.select(Instance.id).where(claims.READY)).split("WHERE", 1)[1].strip()
    assert ready.startswith(free) and "instances.seen_epoch >= (SELECT coalesce(max(runners_1.epoch), 0)" in ready
    for sql in (la.PICK_SQL, la.PICK_MANY_SQL):
        assert free in sql and "instances.seen_epoch >= (SELECT coalesce(max(runners_1.epoch), 0)" in sql
        assert "WHERE pools_1.id = (SELECT id FROM pool))" in sql  # the probed pool's runner, not any pool's
        assert "ORDER BY instances.stale, instances.ready_at" in sql
        assert "FOR UPDATE SKIP LOCKED" in sql
    assert "LIMIT 1 FOR" in la.PICK_SQL and "LIMIT %(k)s FOR" in la.PICK_MANY_SQL
    for claim in (la.CLAIM_NAMED, la.CLAIM_NAMED_MANY):
        assert "instances.lease_id IS NULL" in claim.split("taken AS", 1)[1]  # set only from NULL


def _compiled(stmt) -> str:
    return str(stmt.compile(dialect=la._PG, compile_kwargs={"literal_binds": True}))


def test_active_means_what_the_sync_path_means() -> None:
    assert la.ACTIVE_SQL == "leases.state = 'active'"
    assert la.ACTIVE_SQL in la.LATEST and la.ACTIVE_SQL in la.RETURN and la.ACTIVE_SQL in la._EXTEND
    assert f"'{leases.LOST}'" in la.RETURN
