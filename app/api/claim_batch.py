"""Group commit for the Lease of a named pool: the calls on one pool that arrive while its claim is in the
database go together in the next one (app.domain.leases_async.lease_named_many, one statement).

Each event loop keeps, per (organization, pool name), a queue and at most `lease_db_concurrency` claims in
the database (lanes). A call that finds a lane free is claimed at once, alone as before (lease_named):
nothing waits for company. Under load the calls that queue while every lane is in the database share the
next claim: one round trip, one statement and one commit for all of them, in the api and in PostgreSQL,
where each call used to pay its own.

What a call gets is what lease_named gives it: its lease with its after-commit effects, None (no ready
instance left for it) or its own refusal (NotFound, Aborted). A failure of the statement itself (the
database unreachable, after app.adb's retries) is every call's of that batch. A batch runs to its end once
started, whoever stops waiting for it: the caller undoes what a call that went away got (app.api.vmpool).
"""
from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime
from typing import Any

from app import adb, metrics
from app.domain import effects, leases_async
from app.domain.leases_async import Want
from config.settings import get_settings

MAX_BATCH = 32
"""Calls claimed in one statement at most; more wait for the next."""

_STATEMENTS, _CALLS = metrics.LEASE_CLAIMS.labels("statements"), metrics.LEASE_CLAIMS.labels("calls")

Key = tuple[str, str]
Claimed = tuple[Any, list]  # (LeaseView | None, the lease's after-commit effects)


class _Lane:
    """One pool's calls waiting for a claim, and the drains claiming for them."""

    __slots__ = ("queue", "drains", "busy")

    def __init__(self) -> None:
        self.queue: deque[tuple[Want, asyncio.Future]] = deque()
        self.drains = 0  # running
        self.busy = 0  # of them, in the database now


class ClaimBatcher:
    """One event loop's queues (app.api.vmpool keeps one per loop). `lanes`: claims of one pool in the database
    at once (default: the loop's lease_db_concurrency): a call that arrives while all of them are there waits
    for the first back, with the others that arrive meanwhile."""

    def __init__(self, lanes: int | None = None) -> None:
        self.lanes = lanes or max(1, get_settings().lease_db_concurrency)
        self._lanes: dict[Key, _Lane] = {}
        self._drains: set[asyncio.Task] = set()
        self.batches = 0  # statements run, and the calls they carried (also warmpool_lease_claims_total)
        self.calls = 0

    async def lease(self, org_id: str, pool_name: str, service_tag: str, wished_expiry: datetime | None) -> Claimed:
        """lease_named for this call, in the pool's next claim; returns (the lease or None, its effects)."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        key = (org_id, pool_name)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.queue.append((Want(service_tag=service_tag, wished_expiry=wished_expiry), fut))
        if lane.busy == lane.drains < self.lanes:  # none free to take it: one more, up to the limit
            lane.drains += 1
            drain = asyncio.ensure_future(self._drain(key, lane))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await fut

    async def _drain(self, key: Key, lane: _Lane) -> None:
        """Claim for the lane's calls, a batch at a time, until none waits; the last drain out removes the lane."""
        try:
            while lane.queue:
                await asyncio.sleep(0)  # the calls parsed in this pass of the loop join the batch too
                batch = [lane.queue.popleft() for _ in range(min(len(lane.queue), MAX_BATCH))]
                batch = [(want, fut) for want, fut in batch if not fut.done()]  # gone before its turn
                if batch:
                    lane.busy += 1
                    try:
                        await self._claim(key, batch)
                    finally:
                        lane.busy -= 1
        finally:
            lane.drains -= 1
            if lane.drains == 0:
                if self._lanes.get(key) is lane:
                    del self._lanes[key]
                for _, fut in lane.queue:  # only if this drain was cancelled (the loop's end)
                    fut.cancel()

    async def _claim(self, key: Key, batch: list[tuple[Want, asyncio.Future]]) -> None:
        org_id, pool_name = key
        wants = [want for want, _ in batch]
        self.batches += 1
        self.calls += len(batch)
        _STATEMENTS.inc()
        _CALLS.inc(len(batch))
        try:
            if len(wants) == 1:
                got = [await adb.one_statement(lambda conn: leases_async.lease_named(
                    org_id, pool_name, wants[0], conn=conn, now=datetime.now(UTC)))]
            else:
                got = await adb.one_statement(lambda conn: leases_async.lease_named_many(
                    org_id, pool_name, wants, conn=conn, now=datetime.now(UTC)))
        except asyncio.CancelledError:
            for _, fut in batch:
                fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the statement raised is each caller's to raise
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (want, fut), result in zip(batch, got, strict=True):
            if fut.done():  # its waiter was cancelled (app.api.vmpool never cancels it: the loop's end)
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result((result, effects.take(want.unit)))


_batchers: dict[tuple, ClaimBatcher] = {}


def batcher() -> ClaimBatcher:
    """This event loop's batcher (the HTTP and the gRPC server may each run a loop of their own)."""
    return adb.loop_local(_batchers, ClaimBatcher)

