"""Async PostgreSQL for the lean lease path: asyncpg connections kept per event loop, warmed at start-up,
and one unit of work that retries a transaction PostgreSQL aborted (40P01, 40001).

A process runs two event loops (uvicorn's and the gRPC server's thread), and a connection belongs to the
loop that opened it, so each loop keeps its own (LoopPool). A gate per loop bounds the units of work it runs
on PostgreSQL at once (`lease_db_concurrency`); the rest wait their turn on the loop. SQLite (`warmpool dev`)
has no async path: `enabled()` is False and the callers keep the sync one (app.db, BEGIN IMMEDIATE).

Why asyncpg and not psycopg's async connection: the same one-statement claim costs the api ~90-110 µs of CPU
with asyncpg against ~160-230 µs with psycopg (its cursor, generators and a reader added to and removed from
the loop for every wait), and the api's CPU is what bounds the lease rate on a small machine. The domain's
async statements keep psycopg's `%(name)s` placeholders and attribute access to columns (app.adb_conn).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa

from app import db
from app.adb_conn import Conn, Row
from config.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # as app.db: deadlock victim, serialization failure
ATTEMPTS = 3
WARM_CONNECTIONS = 4
CONNECT_SECONDS = 10
MAX_AGE_SECONDS = 3600  # a connection older than this is closed when its unit of work ends, and replaced
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
"""What the driver raises: the server's errors (each with its SQLSTATE), a connection that ended or could not be
made (InterfaceError, OSError, TimeoutError among them)."""


class LoopPool:
    """One event loop's connections to one database: up to `max_size`, opened when a unit of work finds none
    idle, kept idle between units (the last used first). The loop's gate lets no more than `max_size` units
    run at once, so a unit never waits here for a connection, only for one to open."""

    def __init__(self, url: str, max_size: int) -> None:
        self.url, self.max_size = url, max_size
        self.idle: list[Conn] = []
        # The units of work running at once. The others wait here, in order, rather than in PostgreSQL: concurrent
        # claims take the oldest ready instances of a pool, so they meet on the same index and heap pages, and past
        # the database's cores they only queue there, on page locks held by a backend that lost its core
        # (LWLock:BufferContent), which is a longer tail for the same throughput.
        self.gate = asyncio.Semaphore(max_size)
        self.closed = False
        self._closing: set[asyncio.Task] = set()
        self._connecting = asyncio.Lock()

    async def take(self) -> Conn:
        if self.idle:
            return self.idle.pop()
        async with self._connecting:  # one at a time: units that came first get their connections first
            if self.idle:
                return self.idle.pop()
            raw = await asyncpg.connect(self.url, record_class=Row, timeout=CONNECT_SECONDS)
        return Conn(raw)

    def give(self, conn: Conn, clean: bool) -> None:
        """Back after a unit of work: kept if `clean` (it ended normally or with the server's error, outside a
        transaction) and still young, else closed."""
        if clean and not self.closed and conn.reusable() and time.monotonic() - conn.born < MAX_AGE_SECONDS:
            self.idle.append(conn)
        elif clean and not conn.raw.is_closed():
            task = asyncio.ensure_future(_close(conn))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            conn.raw.terminate()  # mid-statement (cancelled) or broken: no goodbye to wait for

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        await asyncio.gather(*(_close(c) for c in idle), *self._closing, return_exceptions=True)


async def _close(conn: Conn) -> None:
    try:
        await conn.raw.close(timeout=2)
    except Exception:  # noqa: BLE001 - it is going away either way
        conn.raw.terminate()


def conninfo() -> str | None:
    """The libpq URL of the configured database, or None when it is not PostgreSQL."""
    url = get_settings().database_url
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return None


def enabled() -> bool:
    return conninfo() is not None


def loop_local(registry: dict[tuple, T], make: Callable[[], T], *key: Any) -> T:
    """The running event loop's object in `registry` (under the loop and `key`), made on first use; the entries
    of loops that ended (without closing what they held: tests) are dropped then."""
    full = (asyncio.get_running_loop(), *key)
    found = registry.get(full)
    if found is None:
        for gone in [k for k in registry if k[0].is_closed()]:
            registry.pop(gone)
        found = registry[full] = make()
    return found


_pools: dict[tuple, LoopPool] = {}


async def pool() -> LoopPool:
    """This event loop's pool (no connection is opened until a unit of work or warm() needs one)."""
    url = conninfo()
    if url is None:
        raise RuntimeError("the async lease path needs PostgreSQL; WARMPOOL_DATABASE_URL is not")
    # Each unit of work is one or two short statements, so a few connections carry a loop's load. Several
    # loops (HTTP, gRPC) and `--workers` multiply this against max_connections.
    return loop_local(_pools, lambda: LoopPool(url, max(1, get_settings().lease_db_concurrency)), url)


async def warm(statements: list[tuple[str, dict[str, Any]]] = ()) -> None:  # type: ignore[assignment]
    """Open this loop's first connections and run `statements` (SQL, harmless parameters) on each in a
    transaction rolled back, so the first calls after start-up neither connect, prepare nor plan."""
    p = await pool()
    conns: list[Conn] = []
    try:
        for _ in range(min(WARM_CONNECTIONS, p.max_size) - len(p.idle)):
            conns.append(await p.take())
        for conn in conns:
            async with conn.rolled_back():
                for sql, params in statements:
                    await conn.execute(sql, params)
    finally:
        for conn in conns:
            p.give(conn, clean=True)


async def close() -> None:
    """Close this loop's pool (shutdown)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _pools if k[0] is loop]:
        await _pools.pop(key).close()


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in RETRYABLE_SQLSTATES


async def transaction(fn: Callable[[Conn], Awaitable[T]], *, attempts: int = ATTEMPTS) -> T:
    """`await fn(conn)` in one transaction: committed when it returns, rolled back when it raises, and run
    again from the start (after a short random pause) when PostgreSQL aborted it to break a deadlock or a
    serialization conflict; the last failure is raised."""
    return await _attempts(fn, attempts, explicit=True)


async def one_statement(fn: Callable[[Conn], Awaitable[T]], *, attempts: int = ATTEMPTS) -> T:
    """`transaction` for a unit of work whose writes are one statement (PostgreSQL runs a statement as a
    transaction of its own): the same retries and error mapping, a third of the round trips. `fn` may read
    more afterwards (to explain a refusal), but whatever it raises after the write changes nothing."""
    return await _attempts(fn, attempts, explicit=False)


async def _attempts(fn: Callable[[Conn], Awaitable[T]], attempts: int, *, explicit: bool) -> T:
    p = await pool()
    for attempt in range(attempts):
        try:
            async with p.gate:  # released during the pause before a retry
                return await _once(p, fn, explicit)
        except DB_ERRORS as exc:
            if not is_retryable(exc) or attempt == attempts - 1:
                mapped = as_domain_error(exc)
                if mapped is None:
                    raise
                raise mapped from exc
            await asyncio.sleep(random.uniform(0, 0.005 * 2 ** attempt))
    raise AssertionError("unreachable")


async def _once(p: LoopPool, fn: Callable[[Conn], Awaitable[T]], explicit: bool) -> T:
    conn = await p.take()
    clean = False
    try:
        if explicit:
            async with conn.raw.transaction():
                result = await fn(conn)
        else:
            result = await fn(conn)
        clean = True
        return result
    except Exception as exc:
        # The server's error (a constraint, a deadlock), a value the driver could not send or the domain's
        # refusal leaves the session usable; a lost connection does not.
        clean = isinstance(exc, asyncpg.exceptions.DataError) or not isinstance(exc, (asyncpg.InterfaceError, OSError))
        raise
    finally:
        p.give(conn, clean)  # a cancelled unit (BaseException) is never clean


def as_domain_error(exc: BaseException) -> Any:
    """The domain error a driver error stands for, by the same rules as the sync path (app.db.domain_error_of,
    which reads SQLAlchemy's wrapping of psycopg's errors, DB-API classes by SQLSTATE): None for a bug."""
    state = getattr(exc, "sqlstate", None) or ""
    kind: type[sa.exc.DBAPIError]
    if isinstance(exc, asyncpg.PostgresError):
        kind = _KINDS.get(state[:2], sa.exc.ProgrammingError)
    elif isinstance(exc, asyncpg.exceptions.DataError):
        kind = sa.exc.DataError  # a value the driver could not encode for its column (a date out of range)
    elif isinstance(exc, asyncpg.InterfaceError):
        kind = sa.exc.InterfaceError  # the connection ended, or is unusable
    else:
        kind = sa.exc.OperationalError  # no connection could be made (refused, timed out)
    return db.domain_error_of(kind(None, None, _Orig(exc, state)))


# SQLSTATE class -> the DB-API error psycopg raises for it (psycopg.errors), as far as domain_error_of reads it.
_KINDS: dict[str, type[sa.exc.DBAPIError]] = {
    "22": sa.exc.DataError, "23": sa.exc.IntegrityError, "40": sa.exc.OperationalError,
    "08": sa.exc.OperationalError, "53": sa.exc.OperationalError, "54": sa.exc.OperationalError,
    "55": sa.exc.OperationalError, "57": sa.exc.OperationalError, "58": sa.exc.OperationalError,
    "XX": sa.exc.InternalError,
}


class _Orig(Exception):
    """A driver error as app.db.domain_error_of reads psycopg's: its message, `sqlstate` and `diag.constraint_name`."""

    def __init__(self, exc: BaseException, state: str) -> None:
        super().__init__(str(exc) or type(exc).__name__)
        self.sqlstate = state or None
        self.diag = _Diag(getattr(exc, "constraint_name", None))


class _Diag:
    def __init__(self, constraint_name: str | None) -> None:
        self.constraint_name = constraint_name
