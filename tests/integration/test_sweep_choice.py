"""The reconcile sweep on PostgreSQL: its one query (app.domain.sweep) takes a pool for each reason it may
need a pass and leaves converged ones alone, never skips a pool the reconciler would act on, and the beat
task (`reconcile_sweep`, called as beat calls it) enqueues exactly those passes on the real broker, once.
SQLite's run: tests/unit/test_sweep_sqlite.py."""
from __future__ import annotations

import base64
import json

import pytest
from sqlmodel import Session

from app.db import get_engine, session_scope
from app.models import utcnow
from config.celery import SWEEP_QUEUE
from config.settings import get_settings
from tests import sweep_worlds as worlds


@pytest.fixture
def broker(db, redis_client, monkeypatch):
    """This process sends real Celery tasks to the test Redis (nothing consumes them)."""
    monkeypatch.setenv("WARMPOOL_ENGINE__SWEEP_PER_ORG", "1000")
    monkeypatch.setenv("WARMPOOL_LOG_LEVEL", "WARNING")
    from workers import celery_app as capp

    get_settings.cache_clear()
    capp.reconfigure()
    yield redis_client


def swept(client) -> list[str]:
    """The pool ids of the passes waiting in the sweep queue (kombu keeps a Redis list per queue)."""
    out = []
    for raw in client.lrange(SWEEP_QUEUE, 0, -1):
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["task"] == "warmpool.reconcile_pool" and kwargs["swept"] is True
        out.append(kwargs["pool_id"])
    return out


def test_each_reason_is_chosen_and_converged_pools_are_not_on_postgresql(db):
    now = utcnow()
    with Session(get_engine()) as s:
        w = worlds.named(worlds.organization(s), now)
        worlds.insert(w, s)
        s.commit()
        assert {w.ids[i] for i in worlds.choose(s, now)} == {name for name, needs in w.expected.items() if needs}
        assert {w.ids[i] for i in worlds.choose(s, now, backstop_limit=0)} == \
            {name for name, needs in w.expected.items() if needs} - worlds.BACKSTOP
        for p in w.pools:
            if worlds.acts(s, p.id, now):
                assert w.expected[p.name], f"{p.name}: the reconciler acts on it"


def test_never_skips_a_pool_the_reconciler_would_act_on_on_postgresql(db):
    now = utcnow()
    with Session(get_engine()) as s:
        w = worlds.random_world(worlds.organization(s), now, n=300, seed=7)
        worlds.insert(w, s)
        s.commit()
        chosen = set(worlds.choose(s, now, backstop_limit=0))
        acting = {p.id for p in w.pools if worlds.acts(s, p.id, now)}
        assert not sorted(w.ids[i] for i in acting - chosen), "the sweep skipped pools the reconciler acts on"
        assert 30 < len(acting) < 270 and len(chosen) < len(w.pools) - 30, (len(acting), len(chosen))


def test_the_beat_sweep_enqueues_one_pass_per_pool_that_needs_one(broker):
    from tasks.reconcile import reconcile_sweep

    with session_scope() as s:
        w = worlds.named(worlds.organization(s), utcnow())
        worlds.insert(w, s)
    wanted = {name for name, needs in w.expected.items() if needs}
    assert reconcile_sweep() == len(wanted)
    assert sorted(w.ids[i] for i in swept(broker)) == sorted(wanted)
    # Beat ticking again before any pass ran: nothing stacks behind the queued passes.
    assert reconcile_sweep() == 0 and len(swept(broker)) == len(wanted)
