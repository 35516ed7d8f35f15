"""Reconcile tasks: one pool per task (queues `reconcile` and `sweep`), and the beat sweep (queue `system`)."""
from __future__ import annotations

from app.db import session_scope
from app.domain import reconciler, sweep
from app.models import utcnow
from config.settings import get_settings
from workers import inflight, sweeps
from workers.celery_app import celery_app, enqueue_swept_reconciles


@celery_app.task(name="warmpool.reconcile_pool", acks_late=True)
def reconcile_pool(pool_id: str, swept: bool = False) -> str:
    """One pass over one pool: asked for by a write (queue `reconcile`) or by the sweep (`swept`, queue `sweep`)."""
    key = "swept_reconcile" if swept else "reconcile_pool"
    if not swept:
        # Marked running before reading the pool: a change committed from now on enqueues a pass of its own.
        inflight.mark_running(key, pool_id=pool_id)
    try:
        with session_scope() as session:
            plan = reconciler.reconcile(pool_id, session=session)
    finally:
        if swept:
            inflight.forget(key, pool_id=pool_id)
        else:
            inflight.release(key, pool_id=pool_id)
    return "gone" if plan is None else ("steady" if plan.empty else "acted")


@celery_app.task(name="warmpool.reconcile_sweep")
def reconcile_sweep() -> int:
    """Read-only and bounded: a pass for the live pools that need one (app.domain.sweep: one set-based
    query; a converged pool gets none) plus a few not reconciled for `sweep_backstop_seconds`, at most
    `sweep_per_org` per organization, on the `sweep` queue, so however many pools one tenant has, the
    passes its writes ask for (queue `reconcile`) never wait behind the sweep's. Pools with a pass
    queued or running are skipped. Returns how many were enqueued."""
    e = get_settings().engine
    with sweeps.timed("reconcile", e.reconcile_interval_seconds):
        with session_scope() as session:
            ids = sweep.choose(session=session, now=utcnow(), limit=e.sweep_batch, per_org=e.sweep_per_org,
                               stuck_after=e.stuck_after_seconds, backstop_after=e.sweep_backstop_seconds,
                               backstop_limit=e.sweep_backstop_batch)
        return enqueue_swept_reconciles(ids)
