"""Process metrics (Prometheus): lease, reservation and provider-call histograms and counters, recorded
through one-line calls from the lease path and the provider base class, and multiprocess mode for
`warmpool api --workers N`. Gauges computed from the database and Redis at scrape time live in
app/metrics_collector.py.

Lease outcomes (`outcome` label): `warm` (a ready instance claimed at once), `reserved` (served through a
reservation queue), `cold` (created for this lease by the `cold` empty-pool policy), `rejected` (no
instance: ResourceExhausted or quota), `unavailable` (waited for a reservation until the call's deadline),
`error` (anything else: not found, bad input, permission). A call whose pool had no ready instance
(`reserved` after queueing, `cold`, `rejected`) also counts in `warmpool_pool_exhausted_total`.

Multiprocess: when PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is first imported, every
process writes its counters and histograms there and /metrics sums them (app/serve.py sets it for
`--workers N`: a per-run directory emptied at start).
"""
from __future__ import annotations

import functools
import glob
import os
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

T = TypeVar("T")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

LEASE_SECONDS = Histogram("warmpool_lease_seconds", "Lease call latency, from the request to the answer, by "
                          "transport and outcome (warm, reserved, cold, rejected, unavailable, error)",
                          ["transport", "outcome"], buckets=LATENCY_BUCKETS)
LEASES = Counter("warmpool_leases_total", "Instances handed out by Lease calls: warm (a ready instance, a warm hit), "
                 "reserved (through a reservation queue) or cold (created for the lease)", ["transport", "how"])
LEASE_CLAIMS = Counter("warmpool_lease_claims_total", "Named-pool Lease calls claimed on PostgreSQL (what=calls), and "
                       "the statements that claimed them (what=statements): calls that queue behind a pool's claim "
                       "share its next statement, so calls / statements is the mean batch", ["what"])
POOL_EXHAUSTED = Counter("warmpool_pool_exhausted_total", "Lease calls that found their pool without a ready "
                         "instance (then queued, created cold, or were rejected)", ["transport"])
RESERVATION_WAIT = Histogram("warmpool_reservation_wait_seconds", "How long Lease calls waited for a queued "
                             "reservation, by whether it was served before the call's deadline",
                             ["transport", "served"], buckets=WAIT_BUCKETS)
PROVIDER_SECONDS = Histogram("warmpool_provider_call_seconds", "Provider adapter call latency by provider and "
                             "operation", ["provider", "operation"], buckets=LATENCY_BUCKETS)
PROVIDER_ERRORS = Counter("warmpool_provider_errors_total", "Provider adapter calls that raised, by kind "
                          "(transient, permanent, unexpected)", ["provider", "operation", "kind"])
API_PROCESSES = Gauge("warmpool_api_processes", "Live processes of `warmpool api` whose metrics this scrape sums",
                      multiprocess_mode="livesum")
GRPC_CONNECTIONS = Gauge("warmpool_grpc_connections", "Open gRPC connections, per api process serving gRPC; "
                         "listener: shared (the workers of `warmpool api --workers N` take turns accepting from "
                         "one socket) or own", ["listener"], multiprocess_mode="liveall")
HTTP_CONNECTIONS = Gauge("warmpool_http_connections", "Open HTTP connections, per worker of `warmpool api --workers N` "
                         "(they take turns accepting from one socket: app.accept)", multiprocess_mode="liveall")


# ---- the lease path -------------------------------------------------------------------------------

TRANSPORT: ContextVar[str] = ContextVar("warmpool_lease_transport", default="connect")
"""The transport serving the current call; the gRPC handler sets "grpc" (each RPC runs in its own task)."""


class LeaseCall:
    """What one Lease call went through, filled in by `lease_step` and counted once by `timed_lease`."""

    __slots__ = ("transport", "how", "queued_at")

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.how: str | None = None
        self.queued_at: float | None = None

    def finish(self, error: BaseException | None, started: float) -> None:
        now = time.perf_counter()
        outcome = self.how if error is None and self.how else _failure(error)
        if self.queued_at is not None:
            RESERVATION_WAIT.labels(self.transport, str(error is None).lower()).observe(now - self.queued_at)
        if error is None and self.how:
            LEASES.labels(self.transport, self.how).inc()
        if self.queued_at is not None or outcome in ("cold", "rejected"):
            POOL_EXHAUSTED.labels(self.transport).inc()
        LEASE_SECONDS.labels(self.transport, outcome).observe(now - started)


def _failure(error: BaseException | None) -> str:
    from app.domain.errors import RateLimited

    code = getattr(error, "code", "")
    if isinstance(error, RateLimited):
        return "rate_limited"  # the organization's rate, not an exhausted pool
    if code == "resource_exhausted":
        return "rejected"
    if code == "unavailable":
        return "unavailable"
    return "error"


_CALL: ContextVar[LeaseCall | None] = ContextVar("warmpool_lease_call", default=None)


def timed_lease(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates the lease service's async `lease`: times the call and counts it by transport and outcome."""

    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        call = LeaseCall(TRANSPORT.get())
        token = _CALL.set(call)
        started = time.perf_counter()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            call.finish(exc, started)
            raise
        finally:
            _CALL.reset(token)
        call.finish(None, started)
        return result

    return timed


def lease_step(result: Any) -> None:
    """Tell the current Lease call what a unit of work gave it: a lease (its `how`: warm, cold, reserved)
    or a queued reservation (app.domain.claims.Queued). A no-op outside a timed call."""
    call = _CALL.get()
    if call is None:
        return
    how = getattr(result, "how", None)
    if how is not None:
        call.how = "reserved" if call.queued_at is not None else how
    elif call.queued_at is None:
        call.queued_at = time.perf_counter()


# ---- provider calls -------------------------------------------------------------------------------

_in_call = threading.local()


def timed_provider_call(operation: str, fn: Callable[..., T], kinds: dict[type, str]) -> Callable[..., T]:
    """Wrap an adapter method: its latency and its errors by provider and operation (`kinds`: exception class
    -> kind label; anything else is `unexpected`). A call made from inside another timed call of the same
    thread (the default `reset` calls `get`) is not counted twice."""

    @functools.wraps(fn)
    def timed(self: Any, *args: Any, **kwargs: Any) -> T:
        if getattr(_in_call, "active", False):
            return fn(self, *args, **kwargs)
        provider = self.name or type(self).__name__
        _in_call.active = True
        started = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:
            kind = next((k for cls, k in kinds.items() if isinstance(exc, cls)), "unexpected")
            PROVIDER_ERRORS.labels(provider, operation, kind).inc()
            raise
        finally:
            _in_call.active = False
            PROVIDER_SECONDS.labels(provider, operation).observe(time.perf_counter() - started)

    timed.__timed_provider_call__ = True
    return timed


def serve_process_metrics(port: int, host: str) -> None:
    """This process's metrics over HTTP on a thread of their own (`warmpool worker|observe --metrics-port`):
    provider call latency and errors are recorded where the calls run. Bind it to a private address: it
    carries no tenant data, but it has no authentication."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)


# ---- multiprocess mode ----------------------------------------------------------------------------

def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess(default: Path) -> Path:
    """Make PROMETHEUS_MULTIPROC_DIR (else `default`) this run's multiprocess directory, emptied of metric
    files (an earlier run's would be summed into this one's), and export it for the worker processes about
    to be spawned. Only `*.db` files are removed: the operator may have pointed it at a shared directory."""
    directory = Path(multiprocess_dir() or default).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def process_started() -> None:
    """A serving process is up: count it among the live ones (multiprocess mode)."""
    API_PROCESSES.set(1)


def process_stopped(pid: int | None = None) -> None:
    """A serving process is gone: its live gauges no longer count (its counters and histograms do)."""
    if multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid())


def mark_dead_processes() -> None:
    """Drop the live gauges of processes that died without saying so (killed): called before each scrape."""
    directory = multiprocess_dir()
    if directory is None:
        return
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1][:-3])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            process_stopped(pid)
        except PermissionError:  # alive, another user's
            pass
