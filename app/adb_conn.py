"""An asyncpg connection as the lease path's async statements use it (app.domain.leases_async,
reservations_async): `await conn.execute(sql, params)` with psycopg's `%(name)s` placeholders, whose result
has `await fetchone()`, `await fetchall()` and `rowcount`, and rows whose columns read as attributes. Each
statement is prepared once per connection and kept (the lease path is a handful of fixed statements)."""
from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

MAX_STATEMENTS = 64  # kept prepared per connection; more (ad hoc SQL) and the oldest are dropped
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
STALE_PLAN = (asyncpg.exceptions.InvalidCachedStatementError, asyncpg.exceptions.OutdatedSchemaCacheError)


class Row(asyncpg.Record):
    """A row whose columns are also attributes (`row.expires_at`), as psycopg's namedtuple rows."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@functools.lru_cache(maxsize=256)
def convert(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with `$1, $2, …` for its `%(name)s` placeholders (one number per name, however often it appears)
    and `%` for `%%`; and the names in their numbers' order."""
    names: dict[str, int] = {}

    def number(m: re.Match) -> str:
        if m.group(1) is None:
            return "%"
        return f"${names.setdefault(m.group(1), len(names) + 1)}"

    return _PLACEHOLDER.sub(number, sql), tuple(names)


class Result:
    __slots__ = ("rows", "rowcount", "_next")

    def __init__(self, rows: list, rowcount: int) -> None:
        self.rows, self.rowcount, self._next = rows, rowcount, 0

    async def fetchone(self) -> Any:
        if self._next >= len(self.rows):
            return None
        self._next += 1
        return self.rows[self._next - 1]

    async def fetchall(self) -> list:
        rest, self._next = self.rows[self._next:], len(self.rows)
        return rest


class Conn:
    """One asyncpg connection of a LoopPool (app.adb), with its prepared statements."""

    __slots__ = ("raw", "born", "_statements")

    def __init__(self, raw: asyncpg.Connection) -> None:
        self.raw = raw
        self.born = time.monotonic()
        self._statements: dict[str, Any] = {}

    async def execute(self, sql: str, params: dict[str, Any] | tuple | None = None) -> Result:
        text, names = convert(sql)
        statement = self._statements.get(text)
        if statement is None:
            if len(self._statements) >= MAX_STATEMENTS:
                self._statements.pop(next(iter(self._statements)))
            statement = self._statements[text] = await self.raw.prepare(text, record_class=Row)
        if names:
            assert isinstance(params, dict), "named placeholders take a dict"
            args: Any = [params[name] for name in names]
        else:
            args = params or ()
        try:
            rows = await statement.fetch(*args)
        except STALE_PLAN:
            # The schema changed under a prepared statement (a migration while serving): prepared again, and run
            # again if nothing else ran in its transaction (outside one, the failed run changed nothing).
            self._statements.pop(text, None)
            if self.raw.is_in_transaction():
                raise
            statement = self._statements[text] = await self.raw.prepare(text, record_class=Row)
            rows = await statement.fetch(*args)
        return Result(rows, _rowcount(statement.get_statusmsg(), rows))

    @contextlib.asynccontextmanager
    async def rolled_back(self) -> AsyncIterator[Conn]:
        """A transaction that is always rolled back: statements run for their side effects on the session
        (prepared, planned) or to look, and change nothing."""
        transaction = self.raw.transaction()
        await transaction.start()
        try:
            yield self
        finally:
            await transaction.rollback()

    def reusable(self) -> bool:
        """Open and outside a transaction: fit for the next unit of work."""
        return not self.raw.is_closed() and not self.raw.is_in_transaction()


def _rowcount(status: str | None, rows: list) -> int:
    """Rows a statement changed or returned, from its command tag (`UPDATE 3`, `INSERT 0 1`, `SELECT 2`)."""
    if status:
        last = status.rpartition(" ")[2]
        if last.isdigit():
            return int(last)
    return len(rows)
