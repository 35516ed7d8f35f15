"""No lease left to nobody on the async lease path (PostgreSQL): a claim that commits after the call's
answer time, or after its client went away, is given back. Checked in the database."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import adb
from app.api.vmpool import LeaseService, TooLate
from app.domain import leases, leases_async
from app.models import Instance, Lease
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
from tests.conftest import token_for
from tests.integration.test_lease_leaks import SilentWaiter, nothing_leased_to_nobody, rows
from tests.leasing import add_ready, make_pool

pytestmark = [pytest.mark.postgres]


async def _until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await asyncio.to_thread(predicate):
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def _slowed(monkeypatch, entered: asyncio.Event | None = None, delay: float = 0.6) -> None:
    real = leases_async.lease_named

    async def slow(*args, **kwargs):
        if entered is not None:
            entered.set()
        await asyncio.sleep(delay)  # a slow database: the claim commits after this
        return await real(*args, **kwargs)

    monkeypatch.setattr(leases_async, "lease_named", slow)


def _service() -> LeaseService:
    svc = LeaseService(executor=ThreadPoolExecutor(max_workers=4), waiter=SilentWaiter())
    assert svc.fast, "PostgreSQL takes the async path"
    return svc


def test_a_claim_committed_after_the_answer_time_goes_back(org, monkeypatch) -> None:
    token = token_for(org, "lease")
    pool = make_pool(org.org_id, "p", empty_policy="reject")
    [iid] = add_ready(pool)
    svc = _service()

    async def scenario() -> None:
        _slowed(monkeypatch)
        # The claim sleeps 0.6 s, past the answer time (wait_budget(0.4)), both timers on this loop: the
        # call answers TooLate on its own clock, without waiting for the claim (no wall-clock bound here:
        # how late an answer reaches its client under load is not this test's business).
        with pytest.raises(TooLate):
            await svc.lease(f"Bearer {token}", pb.LeaseRequest(pool="p"), 0.4)
        # The claim still commits (the loop keeps running, as a server's does), then goes back.
        [lease] = await _until(lambda: [r for r in rows(Lease, pool_id=pool.id) if r.state != "active"])
        assert lease.end_reason == leases.UNDELIVERED and lease.instance_id == iid
        await adb.close()

    try:
        asyncio.run(scenario())
    finally:
        svc.executor.shutdown(wait=True)
    assert rows(Instance, id=iid)[0].lease_id is None
    nothing_leased_to_nobody(pool.id, delivered=set())


def test_a_claim_whose_client_left_goes_back(org, monkeypatch) -> None:
    token = token_for(org, "lease")
    pool = make_pool(org.org_id, "p", empty_policy="reject")
    [iid] = add_ready(pool)
    svc = _service()

    async def scenario() -> None:
        entered = asyncio.Event()
        _slowed(monkeypatch, entered, delay=0.3)
        call = asyncio.ensure_future(svc.lease(f"Bearer {token}", pb.LeaseRequest(pool="p"), None))
        await asyncio.wait_for(entered.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        [lease] = await _until(lambda: [r for r in rows(Lease, pool_id=pool.id) if r.state != "active"])
        assert lease.end_reason == leases.UNDELIVERED and lease.instance_id == iid
        await adb.close()

    try:
        asyncio.run(scenario())
    finally:
        svc.executor.shutdown(wait=True)
    nothing_leased_to_nobody(pool.id, delivered=set())
