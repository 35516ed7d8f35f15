"""The reconcile sweep's choice (app.domain.sweep) on SQLite, the database of `warmpool dev`: it takes every
pool that needs a pass, for each reason, and leaves converged ones alone; it never skips a pool the
reconciler would act on; the backstop and the per-organization share are bounded. PostgreSQL's run:
tests/integration/test_sweep_choice.py (and tests/security/test_fairness.py for the share under load)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, SQLModel

from app.db import make_engine
from app.models import utcnow
from tests import sweep_worlds as worlds


@pytest.fixture
def session(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'dev.sqlite3'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_each_reason_is_chosen_and_converged_pools_are_not(session):
    now = utcnow()
    w = worlds.named(worlds.organization(session), now)
    worlds.insert(w, session)
    session.commit()
    chosen = {w.ids[i] for i in worlds.choose(session, now)}
    assert chosen == {name for name, needs in w.expected.items() if needs}
    # Without the backstop, only pools that need work.
    needing = {w.ids[i] for i in worlds.choose(session, now, backstop_limit=0)}
    assert needing == {name for name, needs in w.expected.items() if needs} - worlds.BACKSTOP
    # The judge agrees on every named case: what it acts on is chosen, and no converged pool needs a pass.
    for p in w.pools:
        if worlds.acts(session, p.id, now):
            assert w.expected[p.name], f"{p.name}: the reconciler acts on it"
        elif not w.expected[p.name]:
            assert p.name.startswith("converged"), p.name


def test_never_skips_a_pool_the_reconciler_would_act_on(session):
    now = utcnow()
    w = worlds.random_world(worlds.organization(session), now, n=300, seed=11)
    worlds.insert(w, session)
    session.commit()
    chosen = set(worlds.choose(session, now, backstop_limit=0))
    acting = {p.id for p in w.pools if worlds.acts(session, p.id, now)}
    missed = sorted(w.ids[i] for i in acting - chosen)
    assert not missed, f"the sweep skipped pools the reconciler acts on: {missed}"
    # Both sides are exercised: pools that need work, and converged ones that are left alone.
    assert 30 < len(acting) < 270 and len(chosen) < len(w.pools) - 30, (len(acting), len(chosen))


def test_the_backstop_takes_the_oldest_first_and_stays_bounded(session):
    now = utcnow()
    w = worlds.World(worlds.organization(session))
    for k in range(6):  # converged, reconciled 1..6 hours ago
        w.pool(f"old{k}", now, reconciled_at=now - timedelta(hours=k + 1), expect=False)
    w.pool("recent", now, expect=False)
    w.pool("short", now, running=1, min_size=2, desired_size=2, expect=True)
    worlds.insert(w, session)
    session.commit()
    chosen = [w.ids[i] for i in worlds.choose(session, now, backstop_limit=2, backstop_after=1800)]
    assert chosen == ["short", "old5", "old4"]
    assert [w.ids[i] for i in worlds.choose(session, now, backstop_limit=2, backstop_after=5.5 * 3600)] == ["short", "old5"]


def test_each_organization_gets_a_bounded_share_flagged_first(session):
    now = utcnow()
    hog, small = worlds.World(worlds.organization(session)), worlds.World(worlds.organization(session))
    for k in range(10):  # the hog's: all short, reconciled oldest first by k; one flagged
        hog.pool(f"h{k}", now, running=0, min_size=1, desired_size=1, needs_reconcile=k == 7,
                 reconciled_at=now - timedelta(minutes=10 - k), expect=True)
    for k in range(2):
        small.pool(f"s{k}", now, running=0, min_size=1, desired_size=1, expect=True)
    worlds.insert(hog, session)
    worlds.insert(small, session)
    session.commit()
    names = {**hog.ids, **small.ids}
    chosen = [names[i] for i in worlds.choose(session, now, per_org=3)]
    assert chosen[:3] == ["h7", "h0", "h1"] and sorted(chosen[3:]) == ["s0", "s1"]
    assert len(worlds.choose(session, now, per_org=3, limit=4)) == 4  # the batch bound holds too
    assert len(worlds.choose(session, now)) == 12
