"""No lease left to nobody, on PostgreSQL and on SQLite: a Lease call that gives up (cancelled by its
client, or out of time) after its reservation was served, or after its first unit of work made a lease,
gives the instance back; an automatic reservation lives no longer than its caller; concurrent cold
leases never take a pool past max_size. Checked in the database."""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import adb, ratelimit
from app import events as ev
from app.api.vmpool import LeaseService, TooLate, wait_budget
from app.api.vmpool_background import _Watch
from app.db import session_scope
from app.domain import instances, leases, reservations
from app.domain.errors import ResourceExhausted, Unavailable
from app.models import Instance, Lease, Reservation, utcnow
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
from tests.conftest import make_catalog
from tests.leasing import add_ready, make_pool


class SilentWaiter:
    """A reservation waiter whose push never comes: a waiting call sits in its wait until it is
    cancelled or its time is up, so the test decides what happens meanwhile."""

    healthy = True

    @contextmanager
    def watch(self, channel: str) -> Iterator[_Watch]:
        yield _Watch(asyncio.get_running_loop())


class TimedWaiter(SilentWaiter):
    """SilentWaiter that records, in loop time, when each wait the server asks for would end: the answer
    time the server itself decided (the server's clock, not the client's)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    @contextmanager
    def watch(self, channel: str) -> Iterator[_Watch]:
        ends, watch = self.ends, _Watch(asyncio.get_running_loop())
        real_wait = watch.wait

        async def wait(timeout: float) -> None:
            ends.append(watch.loop.time() + timeout)
            await real_wait(timeout)

        watch.wait = wait  # type: ignore[method-assign]
        yield watch


class Call:
    """One LeaseService.lease call on its own event loop in a thread; cancel() is the client leaving.
    `sent` and `answered` are the loop's clock (time.monotonic) around the call."""

    def __init__(self, svc: LeaseService, token: str, req: pb.LeaseRequest, remaining: float | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.outcome: object = None
        self.sent = self.answered = 0.0
        self.task: asyncio.Task | None = None
        started = threading.Event()

        async def run() -> None:
            self.task = asyncio.current_task()
            started.set()
            self.sent = self.loop.time()
            try:
                self.outcome = await svc.lease(f"Bearer {token}", req, remaining)
            except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
                self.outcome = exc
            self.answered = self.loop.time()
            # A server's loop outlives the answer: this loop's database pool closes and what the call left on it
            # (a read, or a claim that commits after the answer time) ends before the loop does. A pool abandoned
            # on a closed loop is finalized by the garbage collector at any moment, even inside a failing test's
            # report (whose tracebacks then break pytest: "AST constructor recursion depth mismatch", 3.11).
            if adb.enabled():
                await adb.close()
            left = asyncio.all_tasks() - {asyncio.current_task()}
            if left:
                await asyncio.wait(left, timeout=10)

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(run()))
        self.thread.start()
        assert started.wait(5)

    def cancel(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)

    def join(self, timeout: float = 10) -> object:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the Lease call did not finish"
        self.loop.close()
        return self.outcome


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def rows(model, **where) -> list:
    with session_scope() as s:
        return list(s.query(model).filter_by(**where).all())


def nothing_leased_to_nobody(pool_id: str, delivered: set[str]) -> None:
    """Every active lease of the pool is one a caller received, and its instance points at it."""
    with session_scope() as s:
        active = s.execute(sa.select(Lease.id, Lease.instance_id).where(Lease.pool_id == pool_id,
                                                                        Lease.state == "active")).all()
        held = dict(s.execute(sa.select(Instance.id, Instance.lease_id).where(Instance.pool_id == pool_id)).all())
    assert {a.id for a in active} <= delivered, "a lease nobody received is active"
    assert {held[a.instance_id] for a in active} == {a.id for a in active}
    assert {v for v in held.values() if v} == {a.id for a in active}, "an instance points at an ended lease"


@pytest.fixture
def service(any_org) -> Iterator[LeaseService]:
    svc = LeaseService(executor=ThreadPoolExecutor(max_workers=4), waiter=SilentWaiter())
    yield svc
    svc.executor.shutdown(wait=True)


def serve_waiting(pool) -> str:
    """An instance becomes ready and the applier hands it to the oldest waiting reservation."""
    [iid] = add_ready(pool)
    with session_scope() as s:
        assert reservations.assign_ready_instance(iid, session=s)
    return iid


@pytest.mark.parametrize("someone_else_waits", [False, True], ids=["pool", "next-in-line"])
def test_a_cancelled_call_whose_reservation_was_served_gives_the_instance_back(any_org, service, someone_else_waits):
    pool = make_pool(any_org.org_id, "p", empty_policy="reserve")
    call = Call(service, any_org.token, pb.LeaseRequest(pool="p", service_tag="t"), remaining=30.0)
    [auto] = wait_for(lambda: rows(Reservation, state="waiting"))
    if someone_else_waits:
        with session_scope() as s:
            assert isinstance(leases.lease(any_org.org_id, "p", reservation_id="next", session=s), leases.Queued)
    iid = serve_waiting(pool)  # served to the automatic reservation, the oldest; its caller has not seen it yet
    served = rows(Reservation, id=auto.id)[0]
    assert served.state == "fulfilled" and served.instance_id == iid
    call.cancel()  # the client disconnects (or its deadline passes) before the wake-up reaches it
    assert isinstance(call.join(), asyncio.CancelledError)

    [given_back] = wait_for(lambda: [r for r in rows(Lease, id=served.lease_id) if r.state != "active"])
    assert (given_back.state, given_back.end_reason) == ("returned", leases.UNDELIVERED)
    inst = rows(Instance, id=iid)[0]
    if someone_else_waits:
        nxt = rows(Reservation, client_id="next")[0]
        assert nxt.state == "fulfilled" and nxt.instance_id == iid and inst.lease_id == nxt.lease_id
        nothing_leased_to_nobody(pool.id, delivered={nxt.lease_id})  # "next" gets it on its next call
    else:
        assert inst.lease_id is None and not inst.draining and inst.desired_state == "running"
        nothing_leased_to_nobody(pool.id, delivered=set())
        with session_scope() as s:  # back in the ready set: the next Lease gets it
            assert leases.lease(any_org.org_id, "p", session=s).instance_id == iid


def test_a_cancelled_waiting_call_withdraws_its_automatic_reservation(any_org, service):
    pool = make_pool(any_org.org_id, "p", empty_policy="reserve")
    call = Call(service, any_org.token, pb.LeaseRequest(pool="p"), remaining=30.0)
    [auto] = wait_for(lambda: rows(Reservation, state="waiting"))
    call.cancel()
    assert isinstance(call.join(), asyncio.CancelledError)
    wait_for(lambda: rows(Reservation, id=auto.id, state="cancelled"))
    [iid] = add_ready(pool)
    with session_scope() as s:
        assert reservations.assign_ready_instance(iid, session=s) is None  # nobody to serve: it stays ready
    nothing_leased_to_nobody(pool.id, delivered=set())


def test_a_lease_made_after_the_answer_time_goes_back(any_org, service):
    """The database is slow (the executor is busy): the call answers UNAVAILABLE at its answer time
    without waiting for its unit of work, and the lease that unit of work makes afterwards is given back."""
    service.fast = False  # the sync path's executor is what is slow here (the async path: test_lease_leaks_async)
    pool = make_pool(any_org.org_id, "p")
    [iid] = add_ready(pool)
    gate = threading.Event()
    blockers = [service.executor.submit(gate.wait, 30) for _ in range(4)]
    call = Call(service, any_org.token, pb.LeaseRequest(pool="p"), remaining=0.5)
    # The executor stays blocked until the call has answered: it answered on its own clock (TooLate), its
    # unit of work still queued. No wall-clock bound: how long that took depends on the machine's load.
    outcome = call.join()
    assert isinstance(outcome, TooLate), outcome
    assert call.answered - call.sent >= wait_budget(0.5), "answered before its answer time"
    # The unit of work was still queued at the answer time: it never runs, or what it made goes back.
    gate.set()
    for b in blockers:
        b.result(5)
    service.executor.shutdown(wait=True)
    wait_for(lambda: all(r.state != "active" for r in rows(Lease, pool_id=pool.id)), timeout=5)
    assert rows(Instance, id=iid)[0].lease_id is None
    nothing_leased_to_nobody(pool.id, delivered=set())


def test_a_lease_made_while_the_client_leaves_goes_back(any_org, service, monkeypatch):
    """The client goes away while the claim runs: the lease it made is given back once it commits."""
    service.fast = False  # the sync claim is what is slow here (the async path: test_lease_leaks_async)
    pool = make_pool(any_org.org_id, "p")
    [iid] = add_ready(pool)
    running, finish = threading.Event(), threading.Event()
    real = leases.lease

    def slow_lease(*args, **kwargs):
        running.set()
        finish.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(leases, "lease", slow_lease)
    call = Call(service, any_org.token, pb.LeaseRequest(pool="p"), remaining=None)
    assert running.wait(5)
    call.cancel()
    assert isinstance(call.join(), asyncio.CancelledError)
    finish.set()
    [lease] = wait_for(lambda: [r for r in rows(Lease, pool_id=pool.id) if r.state != "active"])
    assert lease.end_reason == leases.UNDELIVERED and lease.instance_id == iid
    nothing_leased_to_nobody(pool.id, delivered=set())


def test_an_automatic_reservation_expires_with_its_caller_even_if_nobody_withdraws_it(any_org):
    """The server died while its call waited: the reservation is never served after the caller's deadline."""
    pool = make_pool(any_org.org_id, "p", empty_policy="reserve", reservation_ttl_seconds=3600)
    now = utcnow()
    with session_scope() as s:
        queued = leases.lease(any_org.org_id, "p", session=s, now=now, wait_until=now + timedelta(seconds=2))
    assert isinstance(queued, leases.Queued) and queued.automatic
    assert rows(Reservation, id=queued.reservation_id)[0].expires_at == now + timedelta(seconds=2)
    [iid] = add_ready(pool)
    with session_scope() as s:
        assert reservations.assign_ready_instance(iid, session=s, now=now + timedelta(seconds=3)) is None
    # A named reservation keeps the pool's TTL: its caller comes back with the same id.
    with session_scope() as s:
        named = leases.lease(any_org.org_id, "p", reservation_id="mine", session=s, now=now,
                             wait_until=now + timedelta(seconds=2))
    assert isinstance(named, leases.LeaseView)  # the free instance serves it at once


def test_the_call_answers_unavailable_before_its_deadline_under_a_busy_server(any_org, monkeypatch):
    """Every step counts against the same deadline, measured from the call's arrival: a wait that starts
    late ends at the answer time fixed when the call arrived, not a full budget after it started. Checked
    on the server's own clock (the end of the waits it asked for), not on how long the client waited:
    under load an answer can reach its client late, and that is the margin's business (wait_budget)."""
    waiter = TimedWaiter()
    service = LeaseService(executor=ThreadPoolExecutor(max_workers=4), waiter=waiter)
    make_pool(any_org.org_id, "p", empty_policy="reserve")
    admitted: list[float] = []  # after the server fixed its answer time, before its first unit of work
    real_admit = ratelimit.admit

    async def admit(org_id: str) -> None:
        admitted.append(asyncio.get_running_loop().time())
        await real_admit(org_id)

    monkeypatch.setattr(ratelimit, "admit", admit)
    # A busy server: the sync path's first step waits 0.3 s for the executor (the async path on PostgreSQL
    # does not, and the check below holds there too). The deadline leaves generous room for that step.
    blockers = [service.executor.submit(time.sleep, 0.3) for _ in range(4)]
    remaining = 2.0
    try:
        call = Call(service, any_org.token, pb.LeaseRequest(pool="p", reservation_id="late"), remaining=remaining)
        outcome = call.join()
        for b in blockers:
            b.result(5)
    finally:
        service.executor.shutdown(wait=True)
    # The server answered UNAVAILABLE itself, from its wait (the reservation keeps its place), not TooLate
    # from a first step that overran, and not the client giving up (DEADLINE_EXCEEDED).
    assert isinstance(outcome, Unavailable) and not isinstance(outcome, TooLate), outcome
    assert "keeps its place in the queue" in str(outcome), outcome
    [arrived_by] = admitted
    budget = wait_budget(remaining)
    assert waiter.ends, "the call never waited on its reservation"
    # Every wait ends at one answer time, fixed between the call's sending and its admission: a wait whose
    # budget restarted when it began would end after admission + budget, since it begins after the first step.
    answer_time = waiter.ends[0]
    assert max(waiter.ends) - min(waiter.ends) < 1e-6, f"waits ending at different times: {waiter.ends}"
    fixed_after_sending = answer_time - (call.sent + budget)
    fixed_by_admission = (arrived_by + budget) - answer_time
    assert fixed_after_sending > -1e-6, f"answer time {-fixed_after_sending:.3f} s before the call was sent + budget"
    assert fixed_by_admission > -1e-6, f"answer time {-fixed_by_admission:.3f} s after admission + budget"
    assert call.answered >= answer_time, "answered before its answer time"


def test_concurrent_cold_leases_never_take_the_pool_past_max_size(any_org):
    world = make_catalog(any_org)
    pool = make_pool(any_org.org_id, "cold", runner_id=world.runner_id, empty_policy="cold", max_size=5)
    clients = 16
    barrier = threading.Barrier(clients)
    results: list[object] = [None] * clients

    def client(i: int) -> None:
        barrier.wait()
        try:
            with session_scope() as s:
                results[i] = leases.lease(any_org.org_id, "cold", service_tag=f"c{i}", session=s)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    kinds = Counter(type(r).__name__ for r in results)
    # Cold instances are created until the pool holds max_size of them; everyone else is told to retry.
    assert kinds == {"LeaseView": 5, "ResourceExhausted": clients - 5}, kinds
    assert all("max_size=5" in str(r) for r in results if isinstance(r, ResourceExhausted))
    with session_scope() as s:
        booting = s.execute(sa.select(sa.func.count()).select_from(Instance).where(
            Instance.pool_id == pool.id, Instance.state == "requested")).scalar_one()
    assert booting == 5


# ---- reuse pools: back in the ready set only once clean -------------------------------------------

def recycled(pool, iid: str) -> None:
    """The provider reset the instance (operations.recycle): the applier gets `recycled`."""
    with session_scope() as s:
        instances.apply_event(ev.InstanceEvent(instance_id=iid, pool_id=pool.id, kind=ev.KIND_RECYCLED), session=s)


def test_a_returned_instance_of_a_reuse_pool_is_leased_again_only_after_its_reset(any_org, effects_log):
    pool = make_pool(any_org.org_id, "pods", reuse=True, empty_policy="reject")
    [iid] = add_ready(pool)
    with session_scope() as s:
        first = leases.lease(any_org.org_id, "pods", service_tag="t", session=s)
    with session_scope() as s:
        assert leases.lease(any_org.org_id, "pods", reservation_id="next", session=s).reservation_id
    with session_scope() as s:
        leases.return_lease(any_org.org_id, iid, service_tag="t", session=s)
    inst = rows(Instance, id=iid)[0]
    assert inst.lease_id is None and inst.draining and inst.desired_state == "running"
    assert ("recycle_instance", {"instance_id": iid}) in effects_log
    assert rows(Reservation, client_id="next")[0].state == "waiting"  # not handed over dirty
    with session_scope() as s, pytest.raises(ResourceExhausted):
        leases.lease(any_org.org_id, "pods", session=s)
    recycled(pool, iid)
    nxt = rows(Reservation, client_id="next")[0]
    assert nxt.state == "fulfilled" and nxt.instance_id == iid and nxt.lease_id != first.lease_id
    assert not rows(Instance, id=iid)[0].draining


def test_a_returned_instance_of_a_non_reuse_pool_is_never_leased_again(any_org, effects_log):
    pool = make_pool(any_org.org_id, "vms", empty_policy="reject")
    [iid] = add_ready(pool)
    with session_scope() as s:
        leases.lease(any_org.org_id, "vms", service_tag="t", session=s)
    with session_scope() as s:
        leases.return_lease(any_org.org_id, iid, service_tag="t", session=s)
    recycled(pool, iid)  # a stray reset changes nothing
    inst = rows(Instance, id=iid)[0]
    assert inst.desired_state == "deleted" and inst.draining and inst.lease_id is None
    with session_scope() as s, pytest.raises(ResourceExhausted):
        leases.lease(any_org.org_id, "vms", session=s)
    assert ("delete_instance", {"instance_id": iid}) in effects_log


def test_an_instance_given_back_and_leased_again_is_returned_by_its_new_holder(any_org):
    """A call that queued for the write lock stamps its lease with the time it started: the new lease on
    a given-back instance may be stamped before the undelivered one. Return acts on the active lease."""
    pool = make_pool(any_org.org_id, "p")
    [iid] = add_ready(pool)
    t0 = utcnow()
    with session_scope() as s:
        lost = leases.lease(any_org.org_id, "p", service_tag="gone", session=s, now=t0 + timedelta(seconds=1))
    with session_scope() as s:
        assert leases.give_back(any_org.org_id, lost.lease_id, session=s)
    with session_scope() as s:
        held = leases.lease(any_org.org_id, "p", service_tag="holder", session=s, now=t0)
    assert held.instance_id == iid
    with session_scope() as s:
        assert leases.get_lease(any_org.org_id, iid, session=s).lease_id == held.lease_id
        leases.return_lease(any_org.org_id, iid, service_tag="holder", session=s)
    nothing_leased_to_nobody(pool.id, delivered=set())
