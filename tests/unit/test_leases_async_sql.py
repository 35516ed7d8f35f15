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
    # Whatever claims.READY says (the epoch predicate included) is in the async claim, compiled inside the
    # claim's own SELECT so its correlated parts refer to the instance being probed.
    where = _compiled(sa.select(Instance.id).where(claims.READY)).split("WHERE", 1)[1]
    assert where.strip() in la.PICK_SQL and la.PICK_SQL in la.CLAIM_NAMED
    assert "instances.seen_epoch" in la.PICK_SQL and "= instances.pool_id" in la.PICK_SQL  # correlated, not global
    assert "ORDER BY instances.stale, instances.ready_at" in la.PICK_SQL
    assert "FOR UPDATE SKIP LOCKED" in la.PICK_SQL
    assert "instances.lease_id IS NULL" in la.CLAIM_NAMED.split("taken AS", 1)[1]  # set only from NULL


def _compiled(stmt) -> str:
    return str(stmt.compile(dialect=la._PG, compile_kwargs={"literal_binds": True}))


def test_active_means_what_the_sync_path_means() -> None:
    assert la.ACTIVE_SQL == "leases.state = 'active'"
    assert la.ACTIVE_SQL in la.LATEST and la.ACTIVE_SQL in la.RETURN and la.ACTIVE_SQL in la._EXTEND
    assert f"'{leases.LOST}'" in la.RETURN
