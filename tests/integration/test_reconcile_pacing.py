"""Paced reconcile passes (workers.pacing): a burst of leases on one pool asks for a pass after every lease, yet
costs a bounded number of passes, and the pass after the pace replaces everything taken meanwhile at once, so
the pool is back at its size. Real Redis (dedupe keys, the pace key) and the database on both backends; the
Celery worker is this test, running each task it was sent."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.domain import effects, leases, pools, quotas
from app.models import Instance
from config.settings import get_settings
from tasks.reconcile import reconcile_pool
from tests.conftest import make_catalog, make_org
from tests.leasing import add_ready
from workers import celery_app as celery_module, inflight, pacing

pytestmark = [pytest.mark.redis]

SIZE = 12


@pytest.fixture
def sent(redis_client, backend, monkeypatch):
    """Every task the process sends (name, kwargs, options), instead of the broker."""
    calls: list[tuple[str, dict, dict]] = []
    monkeypatch.setattr(celery_module.celery_app, "send_task",
                        lambda name, kwargs=None, **opts: calls.append((name, kwargs or {}, opts)))
    previous = effects.set_dispatcher(celery_module.dispatch_effect)
    yield calls
    effects.set_dispatcher(previous)


def paced(monkeypatch, max_seconds: float) -> None:
    # A pace so large that every pass holds the next one off for the whole cap, however fast it was.
    monkeypatch.setenv("WARMPOOL_ENGINE__RECONCILE_PACE", "1000000")
    monkeypatch.setenv("WARMPOOL_ENGINE__RECONCILE_PACE_MAX_SECONDS", str(max_seconds))
    get_settings.cache_clear()


def full_pool(name: str) -> tuple[str, str]:
    w = make_catalog(make_org(name))
    with session_scope() as s:
        quotas.set_quota(w.org_id, max_creating=100, session=s)
        pool = pools.insert_pool(pools.new_pool(w.org_id, kind="named", name="burst", min_size=SIZE, max_size=SIZE,
                                                runner_id=w.runner_id, idle_recycle_scaled=-1, stopped_size=0),
                                 session=s, conflict="exists")
    add_ready(pool, SIZE)
    return w.org_id, pool.id


def run_reconciles(sent: list, done: int) -> tuple[list[str], int]:
    """Run the reconcile tasks sent since `done` as a worker would (a countdown one only once it is due)."""
    outcomes = []
    while done < len(sent):
        name, kwargs, opts = sent[done]
        if name != "warmpool.reconcile_pool":
            done += 1
            continue
        if opts.get("countdown"):
            break  # not due yet: the caller runs it after the pace
        outcomes.append(reconcile_pool(**kwargs))
        done += 1
    return outcomes, done


def free_wanted(pool_id: str) -> int:
    """The pool's instances that are not leased and are wanted running (ready, or being made)."""
    with session_scope() as s:
        return s.execute(sa.select(sa.func.count()).select_from(Instance).where(
            Instance.pool_id == pool_id, Instance.lease_id.is_(None), Instance.desired_state == "running",
            Instance.state != "deleted")).scalar_one()


def test_a_burst_of_leases_costs_two_passes_and_the_pool_is_back_at_its_size(sent, monkeypatch):
    paced(monkeypatch, 1.5)
    org_id, pool_id = full_pool("pacing")
    burst = SIZE - 2
    outcomes: list[str] = []
    done = 0
    for _ in range(burst):
        with session_scope() as s:
            leases.lease(org_id, "burst", session=s, service_tag="t")
        got, done = run_reconciles(sent, done)
        outcomes += got
    # The first lease's pass ran at once; the next came within the pace and went back on its queue (with a
    # countdown, its dedupe key still `queued`), and every later ask joined it instead of being sent.
    assert outcomes == ["acted", "paced"], outcomes
    later = [(kw, opts) for name, kw, opts in sent[done:] if name == "warmpool.reconcile_pool"]
    assert len(later) == 1 and 0 < later[0][1]["countdown"] <= 1.5
    assert inflight.busy("reconcile_pool", {"pool_id": pool_id})
    assert free_wanted(pool_id) == SIZE - (burst - 1)  # only the first lease is replaced so far

    deadline = time.monotonic() + 10
    while pacing.wait_before(pool_id) > 0:  # the worker holds the countdown task until it is due
        assert time.monotonic() < deadline, "the pace never ran out"
        time.sleep(0.05)
    assert reconcile_pool(**later[0][0]) == "acted"
    # That one pass replaced every instance leased since the first: the pool is back at its size, in the database.
    assert free_wanted(pool_id) == SIZE
    provisions = [kw["instance_ids"] for name, kw, _ in sent if name == "warmpool.provision_instances"]
    assert [len(ids) for ids in provisions] == [1, burst - 1]
    assert not inflight.busy("reconcile_pool", {"pool_id": pool_id})


def test_without_pacing_every_ask_gets_its_pass(sent, monkeypatch):
    monkeypatch.setenv("WARMPOOL_ENGINE__RECONCILE_PACE", "0")
    get_settings.cache_clear()
    org_id, pool_id = full_pool("unpaced")
    outcomes: list[str] = []
    done = 0
    for _ in range(3):
        with session_scope() as s:
            leases.lease(org_id, "burst", session=s, service_tag="t")
        got, done = run_reconciles(sent, done)
        outcomes += got
    assert outcomes == ["acted"] * 3 and pacing.wait_before(pool_id) == 0
    assert free_wanted(pool_id) == SIZE


def test_a_paced_pass_that_cannot_go_back_on_its_queue_runs_at_once(sent, monkeypatch):
    paced(monkeypatch, 5)
    org_id, pool_id = full_pool("unsendable")
    with session_scope() as s:
        leases.lease(org_id, "burst", session=s, service_tag="t")
    assert reconcile_pool(pool_id) == "acted"
    with session_scope() as s:
        leases.lease(org_id, "burst", session=s, service_tag="t")

    def down(*_a, **_k):
        raise ConnectionError("broker down")

    monkeypatch.setattr(celery_module.celery_app, "send_task", down)
    assert pacing.wait_before(pool_id) > 0
    assert reconcile_pool(pool_id) == "acted"  # better a pass now than none
    assert free_wanted(pool_id) == SIZE


def test_a_pass_never_starts_while_another_pass_of_its_pool_runs(sent, monkeypatch):
    paced(monkeypatch, 0.5)
    org_id, pool_id = full_pool("exclusive")
    assert pacing.begin(pool_id) == 0  # another worker's pass of the pool is running
    with session_scope() as s:
        leases.lease(org_id, "burst", session=s, service_tag="t")
    # It waits instead of queueing on the pool's row lock, and looks again within the pace's cap.
    assert run_reconciles(sent, 0)[0] == ["paced"]
    again = [(kw, opts) for name, kw, opts in sent if name == "warmpool.reconcile_pool" and opts.get("countdown")]
    assert len(again) == 1 and 0 < again[0][1]["countdown"] <= 0.5
    pacing.note_pass(pool_id, 0.0)  # the other pass ended (instantly: no gap)
    assert reconcile_pool(**again[0][0]) == "acted"
    assert free_wanted(pool_id) == SIZE
