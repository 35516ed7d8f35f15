"""Every state machine of warmpool: the StrEnums, their allowed transitions, and named groups.

The tables are enforced: every state change goes through app.domain.transitions, a compare-and-set on
the sources a table allows."""
from __future__ import annotations

from enum import StrEnum
from functools import cache


class InstanceState(StrEnum):
    """Observed state of an instance, written only by the event applier."""

    REQUESTED = "requested"
    PROVISIONING = "provisioning"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


class DesiredState(StrEnum):
    """What the reconciler wants an instance to be."""

    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


S = InstanceState
_NON_TERMINAL = {S.REQUESTED, S.PROVISIONING, S.STOPPED, S.STARTING, S.RUNNING, S.STOPPING}

# One table: from-state -> the states it may move to (DESIGN.md, Instance lifecycle).
INSTANCE_TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    S.REQUESTED: frozenset({S.PROVISIONING}),
    S.PROVISIONING: frozenset({S.STOPPED, S.STARTING, S.RUNNING}),
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING}),
    S.RUNNING: frozenset({S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.DELETING: frozenset({S.DELETED}),
    S.DELETED: frozenset(),
    S.FAILED: frozenset({S.DELETING}),
}
for _s in _NON_TERMINAL:
    INSTANCE_TRANSITIONS[_s] = INSTANCE_TRANSITIONS[_s] | {S.DELETING, S.FAILED}
INSTANCE_TRANSITIONS[S.DELETING] = INSTANCE_TRANSITIONS[S.DELETING] | {S.FAILED}

IN_FLIGHT = frozenset({S.REQUESTED, S.PROVISIONING, S.STARTING})
"""Instances on their way to running: counted against targets so nothing is created twice."""
ALIVE = frozenset(_NON_TERMINAL)
"""Instances that exist (or are being made) and count toward a pool's size."""
LOST = frozenset({S.FAILED, S.DELETING, S.DELETED})
"""Instances that can serve no lease any more: one that reaches these states ends the lease it held."""


@cache  # the table is fixed: the event applier asks this for every event
def reachable(current: InstanceState | str, new: InstanceState | str) -> bool:
    """True when `new` can be reached from `current` along the table without passing through
    DELETED or FAILED, nor DELETING unless `new` is DELETED. Events from different consumers may
    arrive out of order, so the applier accepts an observation that skips intermediate states
    (requested -> running means provisioning happened) but never one that goes backwards."""
    return _walk(InstanceState(current), InstanceState(new), skip=frozenset())


def _walk(current: InstanceState, new: InstanceState, skip: frozenset[tuple[InstanceState, InstanceState]]) -> bool:
    """Breadth-first along the table from `current` to `new`, never through DELETED or FAILED (nor
    DELETING unless `new` is DELETED), and never along an edge in `skip`."""
    if current == new:
        return False
    seen: set[InstanceState] = {current}
    frontier: list[InstanceState] = [current]
    while frontier:
        nxt: list[InstanceState] = []
        for state in frontier:
            for target in INSTANCE_TRANSITIONS[state]:
                if (state, target) in skip:
                    continue
                if target == new:
                    return True
                if target in seen or target in (S.DELETED, S.FAILED):
                    continue
                if target == S.DELETING and new != S.DELETED:
                    continue
                seen.add(target)
                nxt.append(target)
        frontier = nxt
    return False


# The edges that turn an instance around (a stop of a running one, a start of a stopped one): the only
# moves that can repeat, so the only ones an event's sequence must vouch for.
_TURNS = frozenset({(S.RUNNING, S.STOPPING), (S.STOPPED, S.STARTING), (S.STARTING, S.STOPPING)})


@cache
def progresses(current: InstanceState | str, new: InstanceState | str) -> bool:
    """True when `new` follows `current` within one leg of the lifecycle (provisioning -> running,
    starting -> running, stopping -> stopped, anything -> failed/deleting/deleted), never turning it
    around. Such a move is right whatever order its event arrived in, so the applier takes it even from
    an event older than the last one applied (an observer's "running" published just before the task's
    own late "provisioning"); a turn (running -> stopping -> stopped) needs a newer event."""
    return _walk(InstanceState(current), InstanceState(new), skip=_TURNS)


class PoolPhase(StrEnum):
    """A pool's lifecycle phase; the names follow Gitpod's WarmPoolPhase."""

    PENDING = "pending"
    READY = "ready"
    DEGRADED = "degraded"
    DELETING = "deleting"
    DELETED = "deleted"


POOL_TRANSITIONS: dict[PoolPhase, frozenset[PoolPhase]] = {
    PoolPhase.PENDING: frozenset({PoolPhase.READY, PoolPhase.DEGRADED, PoolPhase.DELETING}),
    PoolPhase.READY: frozenset({PoolPhase.PENDING, PoolPhase.DEGRADED, PoolPhase.DELETING}),
    PoolPhase.DEGRADED: frozenset({PoolPhase.PENDING, PoolPhase.READY, PoolPhase.DELETING}),
    PoolPhase.DELETING: frozenset({PoolPhase.DELETED}),
    PoolPhase.DELETED: frozenset(),
}


class PoolKind(StrEnum):
    """Which façade created a pool; the row is the same, only the naming differs."""

    GITPOD = "gitpod"
    NAMED = "named"
    PODPOOL = "podpool"


class EmptyPoolPolicy(StrEnum):
    """What a lease on a pool with no ready instance does."""

    RESERVE = "reserve"
    REJECT = "reject"
    COLD = "cold"


class PrebuildPhase(StrEnum):
    """Prebuild phases; the names follow Gitpod's PrebuildPhase."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SNAPSHOTTING = "snapshotting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    DELETING = "deleting"
    DELETED = "deleted"


P = PrebuildPhase
PREBUILD_TRANSITIONS: dict[PrebuildPhase, frozenset[PrebuildPhase]] = {
    P.PENDING: frozenset({P.STARTING, P.FAILED, P.CANCELLING, P.CANCELLED}),
    P.STARTING: frozenset({P.RUNNING, P.FAILED, P.CANCELLING}),
    P.RUNNING: frozenset({P.STOPPING, P.SNAPSHOTTING, P.FAILED, P.CANCELLING}),
    P.STOPPING: frozenset({P.SNAPSHOTTING, P.FAILED, P.CANCELLING}),
    P.SNAPSHOTTING: frozenset({P.COMPLETED, P.FAILED, P.CANCELLING}),
    P.COMPLETED: frozenset(),
    P.FAILED: frozenset(),
    P.CANCELLING: frozenset({P.CANCELLED}),
    P.CANCELLED: frozenset(),
    P.DELETING: frozenset({P.DELETED}),
    P.DELETED: frozenset(),
}
# DeletePrebuild removes the record at once, whatever its phase (the runner of a live one sees
# desired_phase = deleted and stops); DELETING is Gitpod's wire value, never stored here.
for _p in P:
    if _p != P.DELETED:
        PREBUILD_TRANSITIONS[_p] = PREBUILD_TRANSITIONS[_p] | {P.DELETED}
PREBUILD_FINISHED = frozenset({P.COMPLETED, P.FAILED, P.CANCELLED, P.DELETING, P.DELETED})
PREBUILD_CANCELLABLE = frozenset({P.PENDING, P.STARTING, P.RUNNING, P.STOPPING, P.SNAPSHOTTING})


class LeaseState(StrEnum):
    ACTIVE = "active"
    RETURNED = "returned"
    EXPIRED = "expired"


LEASE_TRANSITIONS: dict[LeaseState, frozenset[LeaseState]] = {
    LeaseState.ACTIVE: frozenset({LeaseState.RETURNED, LeaseState.EXPIRED}),
    LeaseState.RETURNED: frozenset(),
    LeaseState.EXPIRED: frozenset(),
}


class ReservationState(StrEnum):
    WAITING = "waiting"
    FULFILLED = "fulfilled"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


# A reservation named again by a Lease call after it expired, was cancelled, or was spent (its lease
# ended) goes back in the queue: the same row, WAITING again, at the back.
RESERVATION_TRANSITIONS: dict[ReservationState, frozenset[ReservationState]] = {
    ReservationState.WAITING: frozenset(
        {ReservationState.FULFILLED, ReservationState.EXPIRED, ReservationState.CANCELLED}
    ),
    ReservationState.FULFILLED: frozenset({ReservationState.WAITING}),
    ReservationState.EXPIRED: frozenset({ReservationState.WAITING}),
    ReservationState.CANCELLED: frozenset({ReservationState.WAITING}),
}
