"""The transition tables: the lifecycle of DESIGN.md and nothing else."""
from __future__ import annotations

import pytest

from app.domain.states import (
    ALIVE, IN_FLIGHT, INSTANCE_TRANSITIONS, LEASE_TRANSITIONS, POOL_TRANSITIONS, PREBUILD_TRANSITIONS,
    InstanceState as S, LeaseState, PoolPhase, PrebuildPhase,
)


@pytest.mark.parametrize("current,new", [
    (S.REQUESTED, S.PROVISIONING), (S.PROVISIONING, S.STOPPED), (S.PROVISIONING, S.RUNNING),
    (S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING), (S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED),
    (S.RUNNING, S.DELETING), (S.DELETING, S.DELETED), (S.RUNNING, S.FAILED), (S.FAILED, S.DELETING),
])
def test_lifecycle_moves_are_allowed(current, new):
    assert new in INSTANCE_TRANSITIONS[current]


@pytest.mark.parametrize("current,new", [
    (S.REQUESTED, S.RUNNING), (S.STOPPED, S.RUNNING), (S.RUNNING, S.STOPPED), (S.DELETED, S.RUNNING),
    (S.DELETED, S.DELETING), (S.DELETED, S.FAILED), (S.FAILED, S.RUNNING), (S.RUNNING, S.RUNNING),
    (S.DELETING, S.RUNNING),
])
def test_moves_outside_the_lifecycle_are_refused(current, new):
    assert new not in INSTANCE_TRANSITIONS[current]


def test_every_state_has_a_row_and_deleted_is_terminal():
    assert set(INSTANCE_TRANSITIONS) == set(S)
    assert INSTANCE_TRANSITIONS[S.DELETED] == frozenset()
    for state in ALIVE:
        assert S.DELETING in INSTANCE_TRANSITIONS[state] and S.FAILED in INSTANCE_TRANSITIONS[state]


def test_in_flight_states_are_alive_and_not_running():
    assert IN_FLIGHT <= ALIVE
    assert S.RUNNING not in IN_FLIGHT


def test_other_tables_are_complete_and_end_in_terminal_states():
    assert set(POOL_TRANSITIONS) == set(PoolPhase)
    assert POOL_TRANSITIONS[PoolPhase.DELETED] == frozenset()
    assert PoolPhase.READY not in POOL_TRANSITIONS[PoolPhase.DELETING]
    assert set(PREBUILD_TRANSITIONS) == set(PrebuildPhase)
    assert PrebuildPhase.COMPLETED not in PREBUILD_TRANSITIONS[PrebuildPhase.FAILED]
    assert set(LEASE_TRANSITIONS) == set(LeaseState)
    assert LEASE_TRANSITIONS[LeaseState.RETURNED] == frozenset()
