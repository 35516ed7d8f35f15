"""The edge core every transport shares: who is calling (from the token cache), one unit of work, and one
table from domain and database errors to each wire's status and body (DESIGN.md, "One edge core").

A façade parses its wire message, calls `run_as` (or `caller_async` then `run`), and answers whatever
it raised with `map_error(exc, wire)`. The wires:

- CONNECT: the Connect protocol (Gitpod services and the lease service); `connect_error` builds the
  ConnectError. A Gitpod answer also says whether a Stainless client may retry (`Refusal.final`).
- GRPC: the lease service over gRPC; `Refusal.code` is the grpc.StatusCode to abort with.
- NATIVE: the /v1 admin REST API, HTTP status + {"code": "<snake_case>", "message": "..."}.
- PODPOOLS: openYuanrong's meta service, HTTP status + {"code": <int>, "message": "..."}.

Database errors never reach a wire as such: app.db turns the ones a request's values cause into domain
errors (DataError -> invalid_argument, a unique violation -> already_exists, a lost race or a deadlock
still there after the retries -> aborted, the database unreachable -> unavailable); anything else is
`internal`, logged with its traceback and answered without one.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from starlette.concurrency import run_in_threadpool

from app import auth, db
from app.domain import effects
from app.domain.errors import DomainError
from app.domain.tokens import Scope

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT, GRPC, NATIVE, PODPOOLS = "connect", "grpc", "native", "podpools"
WIRES = (CONNECT, GRPC, NATIVE, PODPOOLS)

# openYuanrong codes (wire/openyuanrong-podpools.md): 4104 InvalidUserParam (upstream's TransToSnError wraps
# every validation and service error in it, with ". check input parameters"), 4120 PoolNotFound (the one
# answered with HTTP 404), 121049 AuthCheckError, 150500 internal system error.
PODPOOL_INVALID_USER_PARAM, PODPOOL_NOT_FOUND, PODPOOL_AUTH, PODPOOL_INTERNAL = 4104, 4120, 121049, 150500
PODPOOL_HINT = ". check input parameters"
INTERNAL_MESSAGE = "internal error; the server log has the details"
PODPOOL_INTERNAL_MESSAGE = "internal system error; the server log has the details"


@dataclass(frozen=True, slots=True)
class Row:
    """How one error code is answered on each wire."""

    connect: Code
    grpc: grpc.StatusCode
    http: int  # /v1 status; the body's code is the row's name
    podpool: int  # openYuanrong code
    podpool_http: int
    podpool_hint: bool  # upstream appends ". check input parameters" to what it wraps in 4104 / 4120
    final: bool  # a Stainless client must not retry (x-should-retry: false)


SC = grpc.StatusCode
# The one mapping. Keys are DomainError.code values, plus `unknown` (a DomainError whose code no row
# names: a server bug, answered as one everywhere) and `internal` (not a DomainError at all).
TABLE: dict[str, Row] = {
    "invalid_argument": Row(Code.INVALID_ARGUMENT, SC.INVALID_ARGUMENT, 400, PODPOOL_INVALID_USER_PARAM, 500, True, True),
    "not_found": Row(Code.NOT_FOUND, SC.NOT_FOUND, 404, PODPOOL_NOT_FOUND, 404, True, True),
    "already_exists": Row(Code.ALREADY_EXISTS, SC.ALREADY_EXISTS, 409, PODPOOL_INVALID_USER_PARAM, 500, True, True),
    "failed_precondition": Row(Code.FAILED_PRECONDITION, SC.FAILED_PRECONDITION, 409, PODPOOL_INVALID_USER_PARAM, 500,
                               True, True),
    "resource_exhausted": Row(Code.RESOURCE_EXHAUSTED, SC.RESOURCE_EXHAUSTED, 429, PODPOOL_INVALID_USER_PARAM, 500,
                              True, True),
    "aborted": Row(Code.ABORTED, SC.ABORTED, 409, PODPOOL_INVALID_USER_PARAM, 500, True, False),
    "permission_denied": Row(Code.PERMISSION_DENIED, SC.PERMISSION_DENIED, 403, PODPOOL_AUTH, 403, False, True),
    "unauthenticated": Row(Code.UNAUTHENTICATED, SC.UNAUTHENTICATED, 401, PODPOOL_AUTH, 401, False, True),
    "unavailable": Row(Code.UNAVAILABLE, SC.UNAVAILABLE, 503, PODPOOL_INTERNAL, 500, False, False),
    "provider_error": Row(Code.UNAVAILABLE, SC.UNAVAILABLE, 502, PODPOOL_INTERNAL, 500, False, False),
    "unknown": Row(Code.UNKNOWN, SC.UNKNOWN, 500, PODPOOL_INTERNAL, 500, False, False),
    "internal": Row(Code.INTERNAL, SC.INTERNAL, 500, PODPOOL_INTERNAL, 500, False, False),
}


# The Connect protocol's HTTP status of each code (connectrpc's runtime applies the same when a handler
# raises); for the answers the edge writes itself, before a handler runs.
CONNECT_HTTP: dict[Code, int] = {
    Code.CANCELED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400, Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409, Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400, Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500, Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error as one wire answers it. `code` is the wire's own: a connectrpc Code, a grpc.StatusCode,
    a snake_case string (/v1) or an openYuanrong integer. `http_status` is None on gRPC."""

    wire: str
    code: Any
    message: str
    http_status: int | None
    final: bool
    retry_after: int | None = None  # seconds; from a ResourceExhausted that knows when to come back

    def body(self) -> dict[str, Any]:
        """The JSON error body of an HTTP wire: {"code", "message"}."""
        code = self.code.value if isinstance(self.code, Code) else self.code
        return {"code": code, "message": self.message}

    def headers(self) -> dict[str, str]:
        """HTTP headers of the answer: the bearer challenge on /v1, and Retry-After (on every HTTP wire,
        Connect's included) when the refusal knows when to come back."""
        out = {"WWW-Authenticate": "Bearer"} if self.wire == NATIVE and self.http_status == 401 else {}
        if self.retry_after is not None and self.wire != GRPC:
            out["Retry-After"] = str(self.retry_after)
        return out

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """gRPC trailing metadata: the same hint as `retry-after` (seconds) and as gRPC's own retry
        pushback (`grpc-retry-pushback-ms`, which a client's retry policy honours)."""
        if self.retry_after is None:
            return ()
        return (("retry-after", str(self.retry_after)), ("grpc-retry-pushback-ms", str(self.retry_after * 1000)))


def classify(exc: BaseException) -> tuple[str, str]:
    """(row name in TABLE, message) for any exception: a DomainError by its code, a database error by
    what its cause says (app.db.domain_error_of), anything else `internal`."""
    if not isinstance(exc, DomainError):
        mapped = db.domain_error_of(exc)
        if mapped is None:
            return "internal", ""
        exc = mapped
    return (exc.code if exc.code in TABLE else "unknown"), exc.message


def map_error(exc: BaseException, wire: str, *, what: str = "") -> Refusal:
    """How `wire` answers `exc`. An unexpected exception is logged here, with `what` (the call) and its
    traceback; the answer never carries one."""
    name, message = classify(exc)
    row = TABLE[name]
    hint = getattr(exc, "retry_after", None)
    retry_after = int(math.ceil(hint)) if name == "resource_exhausted" and hint is not None else None
    if name == "internal":
        log.error("unexpected error in %s", what or "a call", exc_info=(type(exc), exc, exc.__traceback__))
        message = PODPOOL_INTERNAL_MESSAGE if wire == PODPOOLS else INTERNAL_MESSAGE
    elif name == "unknown":
        log.error("domain error with no wire mapping (code %r) in %s: %s", getattr(exc, "code", None),
                  what or "a call", message)
    elif not isinstance(exc, DomainError) and name == "unavailable":  # the caller is told less than the log
        log.warning("the database is unavailable (%s): %s", what or "a call", exc)
    if wire == CONNECT:
        return Refusal(wire, row.connect, message, CONNECT_HTTP[row.connect], row.final, retry_after)
    if wire == GRPC:
        return Refusal(wire, row.grpc, message, None, row.final, retry_after)
    if wire == NATIVE:
        return Refusal(wire, name, message, row.http, row.final, retry_after)
    if wire == PODPOOLS:
        return Refusal(wire, row.podpool, message + PODPOOL_HINT if row.podpool_hint else message,
                       row.podpool_http, row.final, retry_after)
    raise ValueError(f"unknown wire {wire!r}; one of {', '.join(WIRES)}")


def connect_error(exc: BaseException, *, what: str = "") -> ConnectError:
    """`exc` as the ConnectError to raise (a ConnectError passes through unchanged)."""
    if isinstance(exc, ConnectError):
        return exc
    refusal = map_error(exc, CONNECT, what=what)
    return ConnectError(refusal.code, refusal.message)


# ---- who is calling ------------------------------------------------------------------------------

def caller(authorization: str | None, needed: Scope, what: str) -> auth.Caller:
    """The caller of an `Authorization: Bearer …` value whose scope includes `needed` (`what` names the call
    in a refusal). Unauthenticated / PermissionDenied otherwise. Blocking on a token-cache miss."""
    return auth.require(auth.bearer_from_header(authorization), needed, what)


async def caller_async(authorization: str | None, needed: Scope, what: str) -> auth.Caller:
    """`caller` for the event loop: a cached token never leaves it; a miss reads the database on a thread."""
    return await auth.require_async(auth.bearer_from_header(authorization), needed, what)


# ---- one unit of work ----------------------------------------------------------------------------

def transaction(fn: Callable[..., T], *args: Any,
                after_commit: Callable[[list[effects.Effect]], None] = effects.dispatch, **kwargs: Any) -> T:
    """`fn(*args, session=…, **kwargs)` in one unit of work: committed on success (then its deferred effects
    go to `after_commit`), run again from the start when PostgreSQL aborted it to break a deadlock or a
    serialization conflict, and database errors the request's values caused raised as domain errors.
    Blocking: call it from a worker thread (or use `run`)."""
    with db.errors_as_domain():
        return db.run_in_transaction(lambda session: fn(*args, session=session, **kwargs), after_commit=after_commit)


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`transaction` on a worker thread, for the event loop."""
    return await run_in_threadpool(transaction, fn, *args, **kwargs)


async def run_as(authorization: str | None, needed: Scope, what: str, fn: Callable[..., T], *args: Any,
                 **kwargs: Any) -> T:
    """Authenticate (`caller_async`), then `fn(org_id, *args, session=…, **kwargs)` in one unit of work."""
    org_id = (await caller_async(authorization, needed, what)).organization_id
    return await run(fn, org_id, *args, **kwargs)
