"""The Intrinsic VMPoolLeaseService, implemented once (LeaseService) and served over Connect here;
app/api/vmpool_grpc.py serves the same object over gRPC.

Thin: check the request, call one domain function (app.domain.leases), map the result. The one thing
the edge adds is waiting: a Lease call whose reservation is queued waits for it, woken by a Redis
pub/sub push the moment the event applier assigns an instance (ReservationWaiter), until the caller's
deadline (capped by `lease_wait_seconds`), then answers UNAVAILABLE and the client calls again with
the same reservation id. Authentication: `authorization: Bearer <token>` (HTTP header or gRPC
metadata) of a token whose scope includes `lease` (else PERMISSION_DENIED). Ping is open over gRPC, like
a health check; over Connect the shared router (app.api.connect_common) authenticates every call before decoding it. Malformed requests are
INVALID_ARGUMENT; a reservation still waiting at the deadline is UNAVAILABLE. A Lease call that gives
up (cancelled, out of time) leaves nothing leased to nobody: see LeaseService.lease and the README's
"When a caller gives up".
"""
from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from app import adb, auth, metrics, ratelimit
from app.api import claim_batch
from app.api.connect_common import remaining_seconds, timestamp_parts
from app.api.core import connect_error
from app.api.hygiene import input_errors
from app.api.vmpool_background import AFTER_COMMIT, ReservationWaiter
from app.db import run_in_transaction
from app.domain import effects, leases, leases_async, reservations, reservations_async
from app.domain.errors import InvalidArgument, ResourceExhausted, Unavailable
from app.domain.tokens import Scope
from app.events import reservation_channel
from config.settings import get_settings
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb

log = logging.getLogger(__name__)
T = TypeVar("T")

def utcnow() -> datetime:
    return datetime.now(UTC)


MAX_NAME = 200  # pools.name and leases.service_tag are 200 characters
MAX_RESERVATION_ID = 64  # reservations.client_id
FALLBACK_POLL_SECONDS = 0.2  # only while the pub/sub listener is (re)connecting


# ---- request checks and message mapping ----------------------------------------------------------

def text(value: str, field: str, *, limit: int = MAX_NAME, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > limit:
        raise InvalidArgument(f"{field} is at most {limit} characters, got {len(value)}")
    if any(ord(c) < 32 for c in value):
        raise InvalidArgument(f"{field} must not contain control characters")
    return value


def wished_time(msg: Any, field: str) -> datetime | None:
    """A Timestamp field as an aware datetime; unset, zero or before 1970 -> None (the server decides)."""
    if not msg.HasField(field):
        return None
    ts = getattr(msg, field)
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(f"{field}.nanos must be between 0 and 999999999, got {ts.nanos}")
    if ts.seconds < 0 or (ts.seconds == 0 and ts.nanos == 0):
        return None
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{field} is not a valid timestamp (seconds={ts.seconds})") from None


def lease_message(v: leases.LeaseView) -> pb.Lease:
    msg = pb.Lease(instance=v.instance_id, pool=v.pool_name, zone=v.zone)
    msg.expires.seconds, msg.expires.nanos = timestamp_parts(v.expires_at)
    return msg


MAX_MARGIN = 0.5  # seconds kept before the caller's deadline for the answer to travel back
MARGIN_SHARE = 0.3  # of the time the caller gave, for short deadlines


def wait_budget(remaining: float | None) -> float:
    """Seconds from now by which a Lease call answers: up to the caller's deadline (as measured from
    the request's arrival) less a margin (30% of it, at most MAX_MARGIN) for the answer to reach the
    client, so it sees UNAVAILABLE rather than its own DEADLINE_EXCEEDED; capped by `lease_wait_seconds`."""
    cap = get_settings().lease_wait_seconds
    if remaining is None:
        return cap
    return max(0.0, min(cap, remaining - min(MAX_MARGIN, remaining * MARGIN_SHARE)))


def _unit_of_work(authorization: str | None, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    """One unit of work whose committed effects go to AFTER_COMMIT instead of being dispatched on this
    thread: a Lease answers without waiting for the broker."""
    token = auth.bearer_from_header(authorization)
    org_id = auth.require(token, Scope.LEASE, "the VMPoolLeaseService").organization_id
    with input_errors():
        # A deadlock between racing claims and returns is PostgreSQL choosing a victim: run it again.
        return run_in_transaction(lambda session: fn(org_id, *args, session=session, **kwargs),
                                  after_commit=AFTER_COMMIT.submit)


def _quietly(authorization: str | None, fn: Callable[..., Any], *args: Any) -> None:
    """A clean-up unit of work nobody waits for: its failure is logged, not raised."""
    try:
        _unit_of_work(authorization, fn, args, {})
    except Exception:
        log.exception("could not %s %s", getattr(fn, "__name__", fn), args)


def _retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _unanswered(reservation_id: str | None) -> Callable[[Any], tuple[Callable[..., Any], str] | None]:
    """What to undo when a Lease call gives up after its first unit of work produced `result`: a lease
    made for a call without a reservation id goes back (leases.give_back); an automatic reservation is
    withdrawn (and whatever it was served goes back). A lease or a queued place of a named reservation is
    kept: the next Lease call with the same reservation id gets it."""
    def undo(result: Any) -> tuple[Callable[..., Any], str] | None:
        if isinstance(result, leases.LeaseView) and reservation_id is None:
            return leases.give_back, result.lease_id
        if isinstance(result, leases.Queued) and result.automatic:
            return leases.withdraw, result.reservation_id
        return None

    return undo


async def _org_of(authorization: str | None) -> str:
    """The caller's organization, from the token cache (the database only on a miss)."""
    token = auth.bearer_from_header(authorization)
    return (await auth.require_async(token, Scope.LEASE, "the VMPoolLeaseService")).organization_id


async def _committed(work: Any) -> Any:
    """Await an async unit of work returning (result, effects); the effects go to AFTER_COMMIT once it
    committed, so the answer never waits for the broker."""
    result, committed = await work
    AFTER_COMMIT.submit(committed)
    return result


class TooLate(Unavailable):
    """The answer time came while a unit of work was still queued or running."""


# ---- the service, transport-neutral -------------------------------------------------------------

class LeaseService:
    """Each method takes the caller's Authorization value, the request message and the seconds left
    before the caller's deadline (None: no deadline), and returns the response message or raises a
    DomainError that the transport maps to its status."""

    def __init__(self, executor: ThreadPoolExecutor | None = None, waiter: ReservationWaiter | None = None) -> None:
        # Blocking database work runs here, sized like the connection pool (pool_size + overflow).
        self.executor = executor or ThreadPoolExecutor(max_workers=2 * get_settings().db_pool_size,
                                                       thread_name_prefix="vmpool-db")
        self.waiter = waiter or ReservationWaiter()
        self._fast: bool | None = None

    @property
    def fast(self) -> bool:
        """Whether Lease, Return, ExtendTo and GetLease run on the event loop (app.domain.leases_async): on
        PostgreSQL, unless a test switched it off to exercise the sync path's own give-back there."""
        return adb.enabled() if self._fast is None else self._fast

    @fast.setter
    def fast(self, value: bool) -> None:
        self._fast = value

    async def _run(self, authorization: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(_unit_of_work, authorization, fn, args, kwargs))

    async def _run_until(
        self, answer_by: float, undo: Callable[[Any], tuple[Callable[..., Any], str] | None],
        authorization: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any,
    ) -> T:
        """`_run`, but answer UNAVAILABLE at `answer_by` (loop time) if the unit of work is still queued or
        running then, and if the caller goes away (cancelled) or the time is up, whatever the unit of work
        still produces is undone (`undo(result)` names the domain function and the id) instead of being
        left to nobody."""
        loop = asyncio.get_running_loop()
        work = self.executor.submit(_unit_of_work, authorization, fn, args, kwargs)
        waited = asyncio.wrap_future(work)
        waited.add_done_callback(_retrieved)  # an outcome nobody awaits any more is not an "unretrieved" error
        try:
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives as
            # the work finishes, and a client that left would then be waited for until its deadline.
            done, _ = await asyncio.wait({waited}, timeout=max(0.0, answer_by - loop.time()))
        except asyncio.CancelledError:
            self._undo_when_done(work, undo, authorization)
            raise
        if not done:
            self._undo_when_done(work, undo, authorization)
            raise TooLate("the server could not answer before the call's deadline; retry")
        return waited.result()

    def _undo_when_done(self, work: Future, undo: Callable[[Any], tuple[Callable[..., Any], str] | None],
                        authorization: str | None) -> None:
        if work.cancel():  # never started: nothing to undo
            return

        def done(finished: Future) -> None:
            if finished.cancelled() or finished.exception() is not None:
                return
            step = undo(finished.result())
            if step is not None:
                self._in_background(authorization, *step)

        work.add_done_callback(done)

    def _in_background(self, authorization: str | None, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.executor.submit(_quietly, authorization, fn, *args)
        except RuntimeError:  # the executor is shutting down (process exit): do it on this thread
            _quietly(authorization, fn, *args)

    async def ping(self, authorization: str | None, req: Any, remaining: float | None) -> pb.PingResponse:
        return pb.PingResponse(msg="pong")

    async def pools(self, authorization: str | None, req: pb.PoolsRequest, remaining: float | None) -> pb.PoolsResponse:
        rows = await self._run(authorization, leases.leasable_pools)
        return pb.PoolsResponse(pools=[
            pb.Pool(name=name, labels=[pb.Label(key=k, value=v) for k, v in labels]) for name, labels in rows
        ])

    @metrics.timed_lease
    async def lease(self, authorization: str | None, req: pb.LeaseRequest, remaining: float | None) -> pb.LeaseResponse:
        """`remaining`: seconds left before the caller's deadline, measured from the request's arrival.
        Every step, the first unit of work included, ends by the answer time (wait_budget); a call that
        gives up (deadline or cancellation) leaves nothing leased to nobody (_unanswered)."""
        loop = asyncio.get_running_loop()
        budget = wait_budget(remaining)
        answer_by = loop.time() + budget
        pool = text(req.pool, "pool")
        tag = text(req.service_tag, "service_tag")
        reservation_id = None
        if req.HasField("reservation_id"):
            reservation_id = text(req.reservation_id, "reservation_id", limit=MAX_RESERVATION_ID, required=True)
        wished = wished_time(req, "expires")
        org_id = await _org_of(authorization)  # once per call: each look-up hashes the token
        await ratelimit.admit(org_id)  # the organization's Lease rate (app.ratelimit)
        # An automatic reservation lives no longer than its caller (its deadline, or the longest this call
        # waits), even if this process dies before withdrawing it.
        caller_left = budget + MAX_MARGIN if remaining is None else min(remaining, budget + MAX_MARGIN)
        wait_until = datetime.now(UTC) + timedelta(seconds=caller_left)
        result: Any = None
        if reservation_id is None and self.fast:
            # On PostgreSQL, on this loop: a ready instance, a refusal, or an automatic reservation queued.
            result = await self._lease_fast(authorization, org_id, answer_by, pool, tag, wished, wait_until)
        elif self.fast:
            result = await self._lease_reserved_fast(org_id, answer_by, pool, tag, wished, reservation_id)
        if result is None:
            result = await self._run_until(answer_by, _unanswered(reservation_id), authorization, leases.lease, pool,
                                           service_tag=tag, wished_expiry=wished, reservation_id=reservation_id,
                                           wait_until=wait_until)
        metrics.lease_step(result)
        if isinstance(result, leases.Queued):
            result = await self._wait(authorization, result, answer_by)
            metrics.lease_step(result)
        return pb.LeaseResponse(lease=lease_message(result))

    async def _lease_fast(self, authorization: str | None, org_id: str, answer_by: float, pool: str, tag: str,
                          wished: datetime | None, wait_until: datetime) -> leases.LeaseView | leases.Queued | None:
        """A Lease without a reservation id in one async unit of work, answered by `answer_by`: the named pool's
        ready instance, claimed with the calls queued beside this one (app.api.claim_batch), or the fullest
        pool's (reservations_async.lease_any), else the pool's empty-pool policy (reservations_async.empty_pool:
        a refusal, or an automatic reservation to wait on; each path writes in one statement); None: the `cold`
        policy, which the sync path applies. As `_run_until`: what a call that went away or ran out of time got
        is undone, never left to nobody."""
        loop = asyncio.get_running_loop()

        async def claim(conn: Any) -> tuple[leases.LeaseView | leases.Queued | None, list]:
            unit = leases_async.Unit()
            now = utcnow()
            got: leases.LeaseView | leases.Queued | None = None
            chosen = ""
            if not pool:
                got, chosen = await reservations_async.lease_any(org_id, conn=conn, unit=unit, service_tag=tag,
                                                                 wished_expiry=wished, now=now)
            if got is None:
                got = await reservations_async.empty_pool(org_id, conn=conn, pool_name=pool, pool_id=chosen,
                                                          service_tag=tag, wished_expiry=wished, now=now,
                                                          wait_until=wait_until)
            return got, effects.take(unit)

        async def unit_of_work() -> tuple[leases.LeaseView | leases.Queued | None, list]:
            if pool:  # a named pool's ready instance, claimed with the calls queued beside this one
                got, committed = await claim_batch.batcher().lease(org_id, pool, tag, wished)
                if got is not None:
                    return got, committed
            return await adb.one_statement(claim)

        work = asyncio.ensure_future(_committed(unit_of_work()))
        work.add_done_callback(_retrieved)
        try:
            done, _ = await asyncio.wait({work}, timeout=max(0.0, answer_by - loop.time()))
        except asyncio.CancelledError:
            self._undo_fast_when_done(work, authorization)
            raise
        if not done:
            self._undo_fast_when_done(work, authorization)
            raise TooLate("the server could not answer before the call's deadline; retry")
        return work.result()

    async def _lease_reserved_fast(self, org_id: str, answer_by: float, pool: str, tag: str,
                                   wished: datetime | None, reservation_id: str) -> leases.LeaseView | leases.Queued | None:
        """reservations_async.lease_reserved in one async transaction, answered by `answer_by`; None: the sync
        path answers. Nothing is undone for a call that gives up: a named reservation keeps its lease or its
        place for the next call with the same id (_unanswered)."""
        loop = asyncio.get_running_loop()

        async def reserve(conn: Any) -> tuple[leases.LeaseView | leases.Queued | None, list]:
            unit = leases_async.Unit()
            got = await reservations_async.lease_reserved(org_id, pool, reservation_id, conn=conn, unit=unit,
                                                          service_tag=tag, wished_expiry=wished, now=utcnow())
            return got, effects.take(unit)

        work = asyncio.ensure_future(_committed(adb.transaction(reserve)))
        work.add_done_callback(_retrieved)
        done, _ = await asyncio.wait({work}, timeout=max(0.0, answer_by - loop.time()))
        if not done:
            raise TooLate("the server could not answer before the call's deadline; retry")
        return work.result()

    def _undo_fast_when_done(self, work: asyncio.Future, authorization: str | None) -> None:
        undo = _unanswered(None)

        def done(finished: asyncio.Future) -> None:
            if finished.cancelled() or finished.exception() is not None:
                return
            if (step := undo(finished.result())) is not None:
                self._in_background(authorization, *step)

        work.add_done_callback(done)

    async def _outcome(self, authorization: str | None, reservation_id: str, answer_by: float) -> leases.LeaseView | None:
        """reservations.outcome by `answer_by` (TooLate after): on this loop on PostgreSQL, one statement."""
        if not self.fast:
            return await self._run_until(answer_by, lambda _: None, authorization, reservations.outcome, reservation_id)
        org_id = await _org_of(authorization)
        loop = asyncio.get_running_loop()
        work = asyncio.ensure_future(adb.one_statement(
            lambda conn: reservations_async.outcome(org_id, reservation_id, conn=conn, now=utcnow())))
        work.add_done_callback(_retrieved)
        done, _ = await asyncio.wait({work}, timeout=max(0.0, answer_by - loop.time()))
        if not done:  # a read: nothing to undo (and not cancelled mid-statement, which would cost the connection)
            raise TooLate("the server could not answer before the call's deadline; retry")
        return work.result()

    async def _wait(self, authorization: str | None, queued: leases.Queued, answer_by: float) -> leases.LeaseView:
        loop = asyncio.get_running_loop()
        undo = _unanswered(None)
        try:
            with self.waiter.watch(reservation_channel(queued.reservation_id)) as wake:
                while True:
                    # Checked after the watch is registered, so a wake-up between the two is not lost.
                    try:
                        served = await self._outcome(authorization, queued.reservation_id, answer_by)
                    except TooLate:
                        break
                    if served is not None:
                        return served
                    left = answer_by - loop.time()
                    if left <= 0:
                        break
                    await wake.wait(left if self.waiter.healthy else min(left, FALLBACK_POLL_SECONDS))
        except (asyncio.CancelledError, Unavailable):
            # The caller went away, or the time is up: an automatic reservation goes with it.
            if (step := undo(queued)) is not None:
                self._in_background(authorization, *step)
            raise
        if (step := undo(queued)) is not None:
            # Withdrawn without waiting for it: the answer is due now. Whatever was served in the last
            # moment goes back to the pool rather than risk an answer after the caller's deadline.
            self._in_background(authorization, *step)
            raise Unavailable(f"no instance of pool {queued.pool_name!r} became ready before the call's deadline; "
                              "retry, or send a reservation_id to keep a place in the queue")
        raise Unavailable(f"no instance of pool {queued.pool_name!r} became ready before the call's deadline; "
                          f"reservation {queued.client_id!r} keeps its place in the queue until "
                          f"{queued.expires_at.isoformat(timespec='seconds')}: call Lease again with the same reservation_id")

    async def get_lease(self, authorization: str | None, req: pb.GetLeaseRequest, remaining: float | None) -> pb.GetLeaseResponse:
        instance = text(req.instance, "instance", required=True)
        if self.fast:
            org_id = await _org_of(authorization)
            found = await adb.one_statement(lambda conn: leases_async.get_lease(org_id, instance, conn=conn, now=utcnow()))
        else:
            found = await self._run(authorization, leases.get_lease, instance)
        return pb.GetLeaseResponse(lease=lease_message(found))

    async def extend_to(self, authorization: str | None, req: pb.ExtendToRequest, remaining: float | None) -> pb.ExtendToResponse:
        instance = text(req.instance, "instance", required=True)
        tag = text(req.service_tag, "service_tag")
        to = wished_time(req, "to")
        if to is None:
            raise InvalidArgument("to is required: the time to extend the lease to")
        if self.fast:
            org_id = await _org_of(authorization)
            extended = await adb.transaction(lambda conn: leases_async.extend_to(
                org_id, instance, to, conn=conn, service_tag=tag, extend_only=req.extend_only, now=utcnow()))
        else:
            extended = await self._run(authorization, leases.extend_to, instance, to, service_tag=tag,
                                       extend_only=req.extend_only)
        return pb.ExtendToResponse(lease=lease_message(extended))

    async def return_(self, authorization: str | None, req: pb.ReturnRequest, remaining: float | None) -> pb.ReturnResponse:
        instance = text(req.instance, "instance", required=True)
        tag = text(req.service_tag, "service_tag")
        if not self.fast:
            await self._run(authorization, leases.return_lease, instance, service_tag=tag)
            return pb.ReturnResponse()
        org_id = await _org_of(authorization)

        async def give_back(conn: Any) -> tuple[None, list]:
            unit = leases_async.Unit()
            await leases_async.return_lease(org_id, instance, conn=conn, unit=unit, service_tag=tag, now=utcnow())
            return None, effects.take(unit)

        await _committed(adb.one_statement(give_back))
        return pb.ReturnResponse()


WARM_SECONDS = 10.0


async def warm_up() -> None:
    """Ready this event loop for its first Lease (start-up, on each loop that serves the lease service):
    the async pool open with every statement prepared on every connection, the sync engine connected
    (the empty-pool and reservation paths), the executor's threads started and the wake-up subscription
    confirmed. A failure is logged, not raised: the server still starts, and the first calls pay."""
    service = default_service()

    def sync_side() -> None:
        from app.db import get_engine

        with get_engine().connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        service.waiter.wait_ready(WARM_SECONDS / 2)

    try:
        threads = [asyncio.get_running_loop().run_in_executor(service.executor, lambda: None)
                   for _ in range(service.executor._max_workers)]
        work = [asyncio.to_thread(sync_side), *threads]
        if adb.enabled():
            work.append(adb.warm(leases_async.warm_statements(utcnow()) + reservations_async.warm_statements(utcnow())))
        await asyncio.wait_for(asyncio.gather(*work), WARM_SECONDS)
    except Exception as exc:  # noqa: BLE001 - start anyway; the first calls open what is missing
        log.warning("lease service warm-up did not finish (%s); the first calls may be slow", exc)


@functools.lru_cache(maxsize=1)
def default_service() -> LeaseService:
    """The process's one LeaseService: both transports share its executor and its waiter."""
    return LeaseService()


# ---- Connect ------------------------------------------------------------------------------------

class VMPoolLeaseConnect:
    """intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService over Connect (mounted under /api)."""

    def __init__(self, service: LeaseService | None = None) -> None:
        self._service = service

    @property
    def service(self) -> LeaseService:
        return self._service or default_service()

    async def _call(self, ctx: Any, method: Callable[..., Any], req: Any) -> Any:
        remaining = remaining_seconds(ctx)
        try:
            return await method(ctx.request_headers.get("authorization"), req, remaining)
        except Exception as exc:  # noqa: BLE001 - every outcome is a Connect answer (app.api.core's table)
            if isinstance(exc, ResourceExhausted) and exc.retry_after is not None:
                ctx.response_headers["retry-after"] = str(math.ceil(exc.retry_after))
            raise connect_error(exc, what=f"VMPoolLeaseService/{ctx.method.name}") from None

    async def ping(self, req: Any, ctx: Any) -> pb.PingResponse:
        return await self._call(ctx, self.service.ping, req)

    async def lease(self, req: pb.LeaseRequest, ctx: Any) -> pb.LeaseResponse:
        return await self._call(ctx, self.service.lease, req)

    async def return_(self, req: pb.ReturnRequest, ctx: Any) -> pb.ReturnResponse:
        return await self._call(ctx, self.service.return_, req)

    async def extend_to(self, req: pb.ExtendToRequest, ctx: Any) -> pb.ExtendToResponse:
        return await self._call(ctx, self.service.extend_to, req)

    async def pools(self, req: pb.PoolsRequest, ctx: Any) -> pb.PoolsResponse:
        return await self._call(ctx, self.service.pools, req)

    async def get_lease(self, req: pb.GetLeaseRequest, ctx: Any) -> pb.GetLeaseResponse:
        return await self._call(ctx, self.service.get_lease, req)
