"""Async PostgreSQL for the lean lease path: one psycopg AsyncConnectionPool per event loop, warmed at
start-up, and one unit of work that retries a transaction PostgreSQL aborted (40P01, 40001).

A process runs two event loops (uvicorn's and the gRPC server's thread), and a pool's connections
belong to the loop that opened them, so each loop gets its own pool, opened by `warm()` at start-up
(or by the first call). A gate per pool bounds the units of work a loop runs on PostgreSQL at once
(`lease_db_concurrency`); the rest wait their turn on the loop. SQLite (`warmpool dev`) has no async path:
`enabled()` is False and the callers keep the sync one (app.db, BEGIN IMMEDIATE).
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool

from app import db
from config.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # as app.db: deadlock victim, serialization failure
ATTEMPTS = 3
WARM_CONNECTIONS = 4

_pools: dict[tuple[asyncio.AbstractEventLoop, str], AsyncConnectionPool] = {}
_opening: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Lock] = {}
_gates: dict[AsyncConnectionPool, asyncio.Semaphore] = {}
"""Per pool (so per loop): the units of work running at once, at most `lease_db_concurrency`. The others wait
here, in order, rather than in PostgreSQL: concurrent claims take the oldest ready instances of a pool, so they
meet on the same index and heap pages, and past the database's cores they only queue there, on page locks held by
a backend that lost its core (LWLock:BufferContent), which is a longer tail for the same throughput."""


def conninfo() -> str | None:
    """The libpq URL of the configured database, or None when it is not PostgreSQL."""
    url = get_settings().database_url
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return None


def enabled() -> bool:
    return conninfo() is not None


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # Every statement is prepared on its first run: the lease path is a handful of fixed statements.
    conn.prepare_threshold = 0
    # A unit of work that is one statement runs as its own transaction (`one_statement`): no BEGIN and
    # COMMIT round trips; `transaction` still opens an explicit one.
    await conn.set_autocommit(True)
    conn.row_factory = namedtuple_row


async def pool() -> AsyncConnectionPool:
    """This event loop's pool, opened (min_size connections ready) on first use. Calls that come while it
    opens wait for that one opening: had they taken its first connections (and kept them on the loop's stack),
    it would never have seen min_size of them ready at once, and its opening would have timed out."""
    url = conninfo()
    if url is None:
        raise RuntimeError("the async lease path needs PostgreSQL; WARMPOOL_DATABASE_URL is not")
    key = (asyncio.get_running_loop(), url)
    found = _pools.get(key)
    if found is not None:
        return found
    for gone in [k for k in {*_pools, *_opening} if k[0].is_closed()]:  # loops that ended without close() (tests)
        _opening.pop(gone, None)
        if (dropped := _pools.pop(gone, None)) is not None:
            _forget(dropped)
    async with _opening.setdefault(key, asyncio.Lock()):
        found = _pools.get(key)
        if found is None:
            # Each transaction is one or two short statements, so a few connections carry a loop's load; no
            # more are used at once than the gate lets through. Several loops (HTTP, gRPC) and `--workers`
            # multiply this against max_connections.
            size = max(1, get_settings().lease_db_concurrency)
            found = AsyncConnectionPool(url, min_size=min(WARM_CONNECTIONS, size), max_size=size, open=False,
                                        configure=_configure, name="warmpool-lease", timeout=10)
            await found.open(wait=True, timeout=10)  # on failure nothing is kept: the next call tries again
            _gates[found] = asyncio.Semaphore(size)
            _pools[key] = found
    return found


async def warm(statements: list[tuple[str, dict[str, Any]]] = ()) -> None:  # type: ignore[assignment]
    """Open this loop's pool and prepare `statements` (SQL, harmless parameters) on the connections it
    keeps open, so the first calls after start-up neither connect nor plan."""
    p = await pool()
    conns = []
    try:
        for _ in range(p.min_size):
            conns.append(await p.getconn())
        for conn in conns:
            async with conn.transaction(force_rollback=True):
                for sql, params in statements:
                    await conn.execute(sql, params, prepare=True)
    finally:
        for conn in conns:
            await p.putconn(conn)


async def close() -> None:
    """Close this loop's pool (shutdown)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _opening if k[0] is loop]:
        _opening.pop(key)
    for key in [k for k in _pools if k[0] is loop]:
        p = _pools.pop(key)
        for conn in _forget(p):
            await p.putconn(conn)
        await p.close()


def _forget(p: AsyncConnectionPool) -> list[psycopg.AsyncConnection]:
    """Drop what this module keeps of pool `p`; returns the connections that were parked on its loop."""
    _waiting.pop(p, None)
    _gates.pop(p, None)
    return _parked.pop(p, [])


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None) in RETRYABLE_SQLSTATES


async def transaction(fn: Callable[[psycopg.AsyncConnection], Awaitable[T]], *, attempts: int = ATTEMPTS) -> T:
    """`await fn(conn)` in one transaction: committed when it returns, rolled back when it raises, and run
    again from the start (after a short random pause) when PostgreSQL aborted it to break a deadlock or a
    serialization conflict; the last failure is raised."""
    return await _attempts(fn, attempts, explicit=True)


async def one_statement(fn: Callable[[psycopg.AsyncConnection], Awaitable[T]], *, attempts: int = ATTEMPTS) -> T:
    """`transaction` for a unit of work whose writes are one statement (PostgreSQL runs a statement as a
    transaction of its own): the same retries and error mapping, a third of the round trips. `fn` may read
    more afterwards (to explain a refusal), but whatever it raises after the write changes nothing."""
    return await _attempts(fn, attempts, explicit=False)


async def _attempts(fn: Callable[[psycopg.AsyncConnection], Awaitable[T]], attempts: int, *, explicit: bool) -> T:
    p = await pool()
    gate = _gates[p]
    for attempt in range(attempts):
        try:
            async with gate:  # released during the pause before a retry
                return await _once(p, fn, explicit)
        except psycopg.Error as exc:
            if not is_retryable(exc) or attempt == attempts - 1:
                mapped = as_domain_error(exc)
                if mapped is None:
                    raise
                raise mapped from exc
            await asyncio.sleep(random.uniform(0, 0.005 * 2 ** attempt))
    raise AssertionError("unreachable")


# Connections this loop took from its pool and keeps between units of work: the pool's own check-out and
# return (locks, stats, a reset check) cost about a third of what psycopg spends on a one-statement claim.
# Only a connection left idle goes back on the stack; any other (a statement cancelled mid-flight, a
# transaction left open, a broken socket) goes back to the pool, which resets or replaces it, and so does
# about one in RECYCLE_EVERY, so the pool's upkeep (max_lifetime) still reaches every connection.
_parked: dict[AsyncConnectionPool, list[psycopg.AsyncConnection]] = {}
RECYCLE_EVERY = 1000
_IDLE = psycopg.pq.TransactionStatus.IDLE


_waiting: dict[AsyncConnectionPool, int] = {}
"""Units of work of this loop waiting for the pool to hand them a connection: while there are any, a
finished unit's connection goes back to the pool (which hands it to the first of them), never on the
stack, where no waiter would see it."""


async def _once(p: AsyncConnectionPool, fn: Callable[[psycopg.AsyncConnection], Awaitable[T]], explicit: bool) -> T:
    parked = _parked.get(p)
    if parked is None:
        parked = _parked[p] = []
    if parked:
        conn = parked.pop()
    else:
        _waiting[p] = _waiting.get(p, 0) + 1
        try:
            conn = await p.getconn()
        finally:
            _waiting[p] = _waiting.get(p, 1) - 1
    try:
        if not explicit:
            return await fn(conn)
        async with conn.transaction():
            return await fn(conn)
    finally:
        if (conn.info.transaction_status == _IDLE and not _waiting.get(p) and not p.closed
                and random.random() * RECYCLE_EVERY >= 1):
            parked.append(conn)
        else:
            await p.putconn(conn)


def as_domain_error(exc: psycopg.Error) -> Any:
    """The domain error a driver error stands for, by the same rules as the sync path (app.db.domain_error_of,
    which reads SQLAlchemy's wrapping of the same driver): None for a bug."""
    return db.domain_error_of(sa.exc.DBAPIError.instance(None, None, exc, psycopg.Error))
