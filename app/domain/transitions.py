"""The one way a state changes: a compare-and-set UPDATE on the states its machine allows as sources.

Each machine (instance, pool, lease, reservation, prebuild) is a `Machine` over its table in
app.domain.states. `Machine.move` asks for a move to `to`; a request no source can make (or a named
`expect` state that may not move there) raises InvalidTransition before touching the database. The
UPDATE then runs `WHERE id = :id AND <state> IN (allowed sources) [AND extra conditions]`, stamps the
change time, and returns whether the row moved: False means another writer changed it first (the
caller lost a race, which is an answer, not an error), unless `strict`, which raises instead.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from app.domain.errors import DomainError
from app.domain import states as st
from app.models import Instance, Lease, Pool, Prebuild, Reservation, utcnow


class InvalidTransition(DomainError):
    """A move the state machine does not allow: a bug in the caller, or a row another writer moved."""

    code = "failed_precondition"


@dataclass(frozen=True)
class Machine:
    name: str
    model: Any
    column: str
    """The state column (`state`, or `phase` for pools and prebuilds)."""
    states: type[StrEnum]
    table: dict[Any, frozenset[Any]]
    stamp: str
    """The column stamped with the time of every move."""
    allows: Callable[[Any, Any], bool] | None = None
    """Whether `to` may follow `current`; by default one step of the table."""

    def sources(self, to: Any) -> frozenset[Any]:
        allows = self.allows or (lambda cur, new: new in self.table[cur])
        return frozenset(s for s in self.states if allows(s, to))

    def move(
        self, session: Session, row: Any, to: Any, *, expect: Iterable[Any] | None = None,
        where: Iterable[Any] = (), now: datetime | None = None, strict: bool = False, **values: Any,
    ) -> int:
        """Move `row` (an ORM object, an id, or a list of ids) to `to`, setting `values` alongside; returns
        how many rows moved (0 or 1 for one row). An ORM object is updated in place."""
        to = self.states(to)
        allowed = self.sources(to)
        if expect is not None:
            wanted = frozenset(self.states(s) for s in expect)
            if not wanted <= allowed:
                bad = ", ".join(sorted(wanted - allowed))
                raise InvalidTransition(f"{self.name}: {bad} -> {to} is not a move the lifecycle allows")
            allowed = wanted
        if not allowed:
            raise InvalidTransition(f"{self.name}: nothing moves to {to}")
        now = now or utcnow()
        model, col = self.model, getattr(self.model, self.column)
        ids = row if isinstance(row, list) else [row if isinstance(row, str) else row.id]
        key = model.id == ids[0] if len(ids) == 1 else model.id.in_(ids)
        changes = {self.column: str(to), self.stamp: now, **values}
        count = session.execute(
            sa.update(model).where(key, col.in_(sorted(str(s) for s in allowed)), *where).values(**changes)
        ).rowcount
        if count == 0 and strict:
            current = session.execute(sa.select(col).where(key)).scalars().first()
            raise InvalidTransition(f"{self.name} {ids[0]}: {current} -> {to} refused (allowed from: "
                                    f"{', '.join(sorted(allowed))})")
        if count and not isinstance(row, (str, list)):
            for k, v in changes.items():  # the row object shows the move without writing it again
                set_committed_value(row, k, v)
        return count


INSTANCE = Machine("instance", Instance, "state", st.InstanceState, st.INSTANCE_TRANSITIONS, "state_changed_at",
                   allows=st.reachable)
"""Observed instance state, written by the event applier: events from several consumers may skip steps
(requested -> running means provisioning happened), never go backwards (app.domain.states.reachable)."""
POOL = Machine("pool", Pool, "phase", st.PoolPhase, st.POOL_TRANSITIONS, "phase_changed_at")
LEASE = Machine("lease", Lease, "state", st.LeaseState, st.LEASE_TRANSITIONS, "ended_at")
RESERVATION = Machine("reservation", Reservation, "state", st.ReservationState, st.RESERVATION_TRANSITIONS,
                      "state_changed_at")
PREBUILD = Machine("prebuild", Prebuild, "phase", st.PrebuildPhase, st.PREBUILD_TRANSITIONS, "phase_changed_at")
