"""The one way a state changes: a compare-and-set UPDATE on the states its machine allows as sources.

Each machine (instance, pool, lease, reservation, prebuild) is a `Machine` over its table in
app.domain.states. `Machine.move` asks for a move to `to`; a request no source can make (or a named
`expect` state that may not move there) raises InvalidTransition before touching the database. The
UPDATE then runs `WHERE id = :id AND <state> IN (allowed sources) [AND extra conditions]`, stamps the
change time, and returns whether the row moved: False means another writer changed it first (the
caller lost a race, which is an answer, not an error), unless `strict`, which raises instead.
`Machine.move_many` makes many such compare-and-sets at once (the event applier's batches), each row
with its own expected state, in one statement per shape of change.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from app.domain.errors import DomainError
from app.domain import states as st
from app.models import Instance, Lease, Pool, Prebuild, Reservation, utcnow


class InvalidTransition(DomainError):
    """A move the state machine does not allow: a bug in the caller, or a row another writer moved."""

    code = "failed_precondition"


@dataclass(frozen=True)
class Move:
    """One row's compare-and-set in a `Machine.move_many`: from `expect` (the state the caller read) to `to`
    (None: the state stays, only `values` change), if the columns in `where` still hold those values."""

    id: str
    expect: Any
    to: Any = None
    where: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


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

    def move_many(self, session: Session, moves: list[Move], *, now: datetime | None = None,
                  returning: Iterable[Any] = ()) -> dict[str, Any]:
        """Many compare-and-sets in few statements: each row moves only from its own `expect` (which the
        table must allow as a source of its `to`, else InvalidTransition before anything is written) and
        only if its `where` columns still hold their values. Rows changing the same columns share one
        UPDATE on PostgreSQL (`UPDATE … FROM jsonb_to_recordset(…)`); SQLite, whose BEGIN IMMEDIATE already holds the
        whole database, runs one in-process UPDATE per row. Returns {id: row of `returning` columns, read
        after the write} for the rows that moved; a missing id lost its race."""
        sources: dict[Any, frozenset[Any]] = {}
        for m in moves:
            if m.to is not None and m.to not in sources:
                sources[m.to] = self.sources(m.to)
            if m.to is not None and self.states(m.expect) not in sources[m.to]:
                raise InvalidTransition(f"{self.name} {m.id}: {m.expect} -> {m.to} is not a move the lifecycle allows")
        now = now or utcnow()
        table = self.model.__table__
        returning = [table.c.id, *[table.c[c.key] for c in returning]]
        shapes: dict[tuple, list[Move]] = {}
        for m in moves:
            shapes.setdefault((m.to is None, tuple(sorted(m.where)), tuple(sorted(m.values))), []).append(m)
        moved: dict[str, Any] = {}
        def changes(m: Move) -> dict[str, Any]:
            return m.values if m.to is None else {self.column: str(self.states(m.to)), self.stamp: now, **m.values}

        for (_, where_cols, _), group in shapes.items():

            if session.get_bind().dialect.name != "postgresql":  # SQLite: one in-process UPDATE per row
                for m in group:
                    stmt = (sa.update(table).where(table.c.id == m.id, table.c[self.column] == str(m.expect),
                                                   *[table.c[k] == v for k, v in m.where.items()])
                            .values(**changes(m)).returning(*returning))
                    row = session.execute(stmt).first()
                    if row is not None:
                        moved[row.id] = row
                continue
            rows = [changes(m) for m in group]
            set_cols = tuple(rows[0])
            data = [{"id": m.id, "expect": str(m.expect), **{f"w_{k}": m.where[k] for k in where_cols},
                     **{f"s_{k}": r[k] for k in set_cols}} for m, r in zip(group, rows)]
            stmt = self._update_from_json(where_cols, set_cols, tuple(returning))
            moved.update((row.id, row) for row in session.execute(stmt, {"p_rows": _json(data)}))
        return moved

    def _update_from_json(self, where_cols: tuple[str, ...], set_cols: tuple[str, ...], returning: tuple) -> Any:
        """PostgreSQL: `UPDATE … FROM jsonb_to_recordset(:rows) AS v(id …, expect …, …)`: the rows travel as one
        JSON document, typed by the column list, so the statement's text is the same whatever their number
        (compiled and prepared once) and no driver-side array is built value by value."""
        table = self.model.__table__
        cols = [sa.column("id", table.c.id.type), sa.column("expect", table.c[self.column].type),
                *[sa.column(f"w_{k}", table.c[k].type) for k in where_cols],
                *[sa.column(f"s_{k}", table.c[k].type) for k in set_cols]]
        v = (sa.func.jsonb_to_recordset(sa.cast(sa.bindparam("p_rows", type_=sa.String), JSONB))
             .table_valued(*cols).render_derived(name="v", with_types=True))
        return (sa.update(table)
                .where(table.c.id == v.c.id, table.c[self.column] == v.c.expect,
                       *[table.c[k] == v.c[f"w_{k}"] for k in where_cols])
                .values({k: v.c[f"s_{k}"] for k in set_cols})
                .returning(*returning))


def _json(rows: list[dict[str, Any]]) -> str:
    """Rows as a JSON document PostgreSQL reads back with their types (times as ISO 8601 with their offset;
    a batch's rows mostly share one time, so each is formatted once)."""
    seen: dict[Any, str] = {}

    def text(v: Any) -> str:
        if v not in seen:
            seen[v] = v.isoformat() if isinstance(v, datetime) else str(v)
        return seen[v]

    return json.dumps(rows, default=text, separators=(",", ":"))


INSTANCE = Machine("instance", Instance, "state", st.InstanceState, st.INSTANCE_TRANSITIONS, "state_changed_at",
                   allows=st.reachable)
"""Observed instance state, written by the event applier: events from several consumers may skip steps
(requested -> running means provisioning happened), never go backwards (app.domain.states.reachable)."""
POOL = Machine("pool", Pool, "phase", st.PoolPhase, st.POOL_TRANSITIONS, "phase_changed_at")
LEASE = Machine("lease", Lease, "state", st.LeaseState, st.LEASE_TRANSITIONS, "ended_at")
RESERVATION = Machine("reservation", Reservation, "state", st.ReservationState, st.RESERVATION_TRANSITIONS,
                      "state_changed_at")
PREBUILD = Machine("prebuild", Prebuild, "phase", st.PrebuildPhase, st.PREBUILD_TRANSITIONS, "phase_changed_at")
