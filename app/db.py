"""The engine and the unit of work: whoever opens a session commits or rolls it back; and which database
errors are domain errors (a bad value, a lost race, the database unreachable), told apart here, where the
driver is known, so no façade needs to import it."""
from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.domain import effects
from app.domain.errors import Aborted, AlreadyExists, DomainError, InvalidArgument, Unavailable
from config.settings import get_settings


# A \uD800-\uDFFF escape in stored JSON text: the only way a lone surrogate can be in the database.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _valid_unicode(value: Any) -> Any:
    if isinstance(value, str):
        # Lone surrogates become U+FFFD; a proper pair (written as two escapes) becomes its character.
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_unicode(v) for v in value]
    return value


def read_json(text: str | bytes) -> Any:
    """How JSON columns are read: a lone surrogate stored before the edge refused them (a JSON escape
    json.loads turns into a str no encoder takes) comes back as U+FFFD, so no read of old rows fails."""
    value = json.loads(text)
    if _SURROGATE_ESCAPE.search(text if isinstance(text, str) else text.decode("utf-8", "replace")):
        return _valid_unicode(value)
    return value


def make_engine(url: str, pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                  json_deserializer=read_json)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # pysqlite would open its own deferred transaction at the first write, after the reads that
            # decided it: take transaction control from it, and begin every transaction ourselves below.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn):  # type: ignore[no-untyped-def]
            # SQLite has no row locks (FOR UPDATE SKIP LOCKED is a no-op): the write lock taken at BEGIN
            # makes a probe and the update it decides one critical section, so two claims never both see
            # the same free instance. Transactions are short, so serialising them costs little on the one
            # machine SQLite is for (`warmpool dev`).
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                            json_deserializer=read_json)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    s = get_settings()
    if s.is_sqlite:
        s.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(s.database_url, s.db_pool_size)


def reset_engine() -> None:
    """Drop the cached engine (tests that switch databases call this)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()


@contextmanager
def session_scope(
    after_commit: Callable[[list[effects.Effect]], None] = effects.dispatch,
) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception. The effects the domain
    deferred go to `after_commit` once the commit succeeded (by default the process's dispatcher;
    the lease path hands them to a background thread so an answer never waits for the broker)."""
    session = Session(get_engine(), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        effects.take(session)
        raise
    finally:
        session.close()
    after_commit(effects.take(session))


T = TypeVar("T")

# PostgreSQL's "deadlock detected" and "could not serialize access": the database aborted the whole
# transaction to resolve a conflict with a concurrent one, so running it again from the start is safe.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def is_retryable(exc: BaseException) -> bool:
    """True for a transaction the database aborted to resolve a conflict (deadlock, serialization)."""
    return isinstance(exc, sa.exc.OperationalError) and getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def run_in_transaction(
    fn: Callable[[Session], T], *, attempts: int = 3,
    after_commit: Callable[[list[effects.Effect]], None] = effects.dispatch,
) -> T:
    """`fn(session)` in one unit of work, run again from the start (after a short random pause) when the
    database aborted it to resolve a conflict. Nothing of an aborted attempt survives: its transaction
    rolled back and session_scope dropped the effects it deferred. The last failure is raised."""
    for attempt in range(attempts):
        try:
            with session_scope(after_commit=after_commit) as session:
                return fn(session)
        except sa.exc.OperationalError as exc:
            if not is_retryable(exc) or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0, 0.005 * 2 ** attempt))
    raise AssertionError("unreachable")  # the loop returns or raises


# ---- database errors as domain errors ------------------------------------------------------------

# PostgreSQL SQLSTATEs / SQLite message prefixes of integrity errors that only a bad value causes.
_BAD_VALUE_STATES = {"23502": "a required value is missing", "23514": "a value breaks a rule of its field",
                     "23503": "a value refers to an object that does not exist"}
# The unique partial index that allows one active lease per instance (migration 0002_lease_invariant).
ACTIVE_LEASE_INDEX = "uq_leases_active_instance"
_SQLITE_BAD_VALUE = {"NOT NULL": "a required value is missing", "CHECK": "a value breaks a rule of its field",
                     "FOREIGN KEY": "a value refers to an object that does not exist"}
DATABASE_UNAVAILABLE = "the database is unavailable right now; retry later"


def domain_error_of(exc: BaseException) -> DomainError | None:
    """The domain error a database failure stands for, else None (a bug: the edge answers `internal`).
    A value the request carried -> InvalidArgument or AlreadyExists; a conflict PostgreSQL resolved by
    aborting us, still there after the retries -> Aborted; the database unreachable or refusing work
    (an OperationalError) -> Unavailable, whose message names no host."""
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).splitlines()
    reason = lines[0] if lines else type(exc).__name__
    state = getattr(orig, "sqlstate", None) or ""
    if state in RETRYABLE_SQLSTATES:
        # The database aborted the transaction to resolve a conflict (deadlock, serialization) and our
        # retries ran out: a lost race the caller may retry, like any compare-and-set that lost.
        return Aborted("the request conflicted with a concurrent one; retry the call")
    if isinstance(exc, sa.exc.DataError) or (isinstance(exc, sa.exc.OperationalError) and state.startswith("54")):
        # Class 54 (program limit exceeded, e.g. an index row too large) comes from a value, too.
        return InvalidArgument(f"a value in the request cannot be stored: {reason}")
    if isinstance(exc, sa.exc.IntegrityError):
        constraint = getattr(getattr(orig, "diag", None), "constraint_name", None) or ""
        if constraint == ACTIVE_LEASE_INDEX or "UNIQUE constraint failed: leases.instance_id" in reason:
            # The database's backstop against a second active lease: a lost race, not a bad value.
            return Aborted("the instance was leased concurrently; retry the call")
        if state == "23505" or "UNIQUE constraint failed" in reason:
            return AlreadyExists(f"an object with these values already exists ({reason})")
        what = _BAD_VALUE_STATES.get(state) or next(
            (v for k, v in _SQLITE_BAD_VALUE.items() if f"{k} constraint failed" in reason), None)
        return InvalidArgument(f"{what}: {reason}") if what else None
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
        return Unavailable(DATABASE_UNAVAILABLE)  # TimeoutError: every pooled connection busy
    if isinstance(exc, sa.exc.StatementError) and isinstance(orig, (UnicodeError, ValueError)):
        return InvalidArgument(f"a value in the request cannot be stored: {reason}")
    return None


@contextmanager
def errors_as_domain() -> Iterator[None]:
    """Around a unit of work: database errors that stand for a domain error (domain_error_of) are raised as
    that domain error; any other is raised as it is."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        mapped = domain_error_of(exc)
        if mapped is None:
            raise
        raise mapped from None
