"""Issue 11, fewer reconcile passes per fill: instances coming up running ask the planner for a pass only once
nothing else of their pool is in flight (or the pool is flagged: its creations were held back, or it is being
deleted), so a fill of N is one pass to make its rows and one after its last landing, not one per applier
batch; a fill held back by the organization's `max_creating` still goes on wave by wave, each wave's
landings asking for the next. Failures, stops and deletions always ask. Checked in the database (the pool's
`needs_reconcile`) and in the effects sent after commit, on both backends."""
from __future__ import annotations

import sqlalchemy as sa

from app import events as ev
from app.db import session_scope
from app.domain import instances, pools, quotas, reconciler
from app.domain.states import InstanceState as S, PoolKind
from app.models import Instance, Pool
from tests.integration import test_batched_apply as batched_apply


def make_pool(org_id: str, size: int, *, flagged: bool = False) -> tuple[str, list[str]]:
    return batched_apply.make_pool(org_id, f"p{size}{flagged}", size, flagged=flagged)


def apply(pool_id: str, *evs: tuple[str, str, int]) -> None:
    with session_scope() as s:
        instances.apply_events([ev.InstanceEvent(instance_id=i, pool_id=pool_id, state=state, seq=seq,
                                                 ref=f"ref-{i}") for i, state, seq in evs], session=s)


def passes_asked(effects_log: list, pool_id: str) -> int:
    return sum(1 for name, payload in effects_log if name == "reconcile_pool" and payload.get("pool_id") == pool_id)


def flagged(pool_id: str) -> bool:
    with session_scope() as s:
        return s.get(Pool, pool_id).needs_reconcile


def test_a_fill_asks_for_one_pass_when_its_last_instance_lands(any_org, effects_log):
    pool_id, ids = make_pool(any_org.org_id, 6)
    apply(pool_id, *[(i, "provisioning", 1) for i in ids])
    apply(pool_id, *[(i, "running", 2) for i in ids[:3]])  # three land, three still in flight
    apply(pool_id, (ids[3], "running", 2))
    assert passes_asked(effects_log, pool_id) == 0 and not flagged(pool_id)
    # The last two land in one batch, the very last after the other: in flight drops to 0 within the batch.
    apply(pool_id, (ids[4], "running", 2), (ids[5], "running", 2))
    assert passes_asked(effects_log, pool_id) == 1 and flagged(pool_id)


def test_a_landing_asks_while_its_pool_is_flagged_and_failures_always_ask(any_org, effects_log):
    pool_id, ids = make_pool(any_org.org_id, 4, flagged=True)
    apply(pool_id, (ids[0], "running", 1))  # three still requested, but a pass is owed
    assert passes_asked(effects_log, pool_id) == 1
    with session_scope() as s:
        s.get(Pool, pool_id).needs_reconcile = False
    apply(pool_id, (ids[1], "running", 1))
    assert passes_asked(effects_log, pool_id) == 1 and not flagged(pool_id)
    apply(pool_id, (ids[2], "failed", 1))  # the planner replaces it at once, whatever is in flight
    assert passes_asked(effects_log, pool_id) == 2 and flagged(pool_id)


def test_an_instance_that_lands_while_another_is_sent_back_in_flight_asks_as_one_event_at_a_time(any_org, effects_log):
    # a lands while b is still provisioning; then b lands and, in the same batch, a is started again after a
    # stop (starting is in flight): one at a time, b's landing saw nothing in flight and asked.
    pool_id, (a, b) = make_pool(any_org.org_id, 2)
    apply(pool_id, (a, "running", 1), (b, "provisioning", 1))
    assert passes_asked(effects_log, pool_id) == 0
    apply(pool_id, (a, "stopping", 2), (a, "stopped", 3))
    assert passes_asked(effects_log, pool_id) == 1  # a stop always asks
    with session_scope() as s:
        s.get(Pool, pool_id).needs_reconcile = False
    apply(pool_id, (b, "running", 2), (a, "starting", 4))
    assert passes_asked(effects_log, pool_id) == 2 and flagged(pool_id)


def test_a_fill_held_back_by_max_creating_goes_on_wave_by_wave(org, effects_log):
    """The reconciler flags a pool whose creations the quota held back; each landing of the wave then asks for
    the pass that makes the next wave, and the last wave's pass, held back no more, clears the flag."""
    quota = {"max_creating": 2, "max_pool_size": 6, "max_instances": 20}
    with session_scope() as s:
        quotas.set_quota(org.org_id, session=s, **quota)
        pool = pools.new_pool(org.org_id, kind=PoolKind.NAMED, name="waves", min_size=6, max_size=6)
        s.add(pool)
        pool_id = pool.id
    made: list[str] = []
    for wave in range(3):
        with session_scope() as s:
            reconciler.reconcile(pool_id, session=s)
        with session_scope() as s:
            new = [i for i in s.execute(sa.select(Instance.id).where(
                Instance.pool_id == pool_id, Instance.state == str(S.REQUESTED))).scalars()]
        assert len(new) == 2
        made += new
        assert flagged(pool_id) == (wave < 2)  # held back until the last wave
        asked = passes_asked(effects_log, pool_id)
        apply(pool_id, (new[0], "running", 1))
        # While held back, the first landing of a wave asks though its twin is still in flight; the last wave's
        # waits for its twin.
        assert passes_asked(effects_log, pool_id) == asked + (1 if wave < 2 else 0)
        apply(pool_id, (new[1], "running", 1))
        assert passes_asked(effects_log, pool_id) > asked
    assert len(made) == 6 and flagged(pool_id)  # the last landing asked for the pass that sees the pool full
    with session_scope() as s:
        assert reconciler.reconcile(pool_id, session=s).empty
    assert not flagged(pool_id)
