"""Reconcile tasks: one pool per task (queues `reconcile` and `sweep`), and the beat sweep (queue `system`)."""
from __future__ import annotations

import logging
import time

from app.db import session_scope
from app.domain import reconciler, sweep
from app.models import utcnow
from config.settings import get_settings
from workers import inflight, pacing, sweeps
from workers.celery_app import celery_app, enqueue_swept_reconciles

log = logging.getLogger(__name__)


@celery_app.task(name="warmpool.reconcile_pool", acks_late=True)
def reconcile_pool(pool_id: str, swept: bool = False) -> str:
    """One pass over one pool: asked for by a write (queue `reconcile`) or by the sweep (`swept`, queue `sweep`).
    A write's pass that comes while another pass of the pool runs, or sooner than the pool's pace after it
    (workers.pacing), goes back on its queue until then, still holding its dedupe key as `queued`, so the asks
    that come meanwhile join it."""
    key = "swept_reconcile" if swept else "reconcile_pool"
    if not swept:
        wait = pacing.begin(pool_id)
        if wait > 0 and _later(pool_id, wait):
            return "paced"
        # Marked running before reading the pool: a change committed from now on enqueues a pass of its own.
        inflight.mark_running(key, pool_id=pool_id)
    began = time.monotonic()
    try:
        with session_scope() as session:
            plan = reconciler.reconcile(pool_id, session=session)
    finally:
        pacing.note_pass(pool_id, time.monotonic() - began)
        if swept:
            inflight.forget(key, pool_id=pool_id)
        else:
            inflight.release(key, pool_id=pool_id)
    return "gone" if plan is None else ("steady" if plan.empty else "acted")


def _later(pool_id: str, wait: float) -> bool:
    """Send this pass again in `wait` seconds; False if it could not be sent (the pass then runs now)."""
    try:
        celery_app.send_task("warmpool.reconcile_pool", kwargs={"pool_id": pool_id}, countdown=wait)
    except Exception:  # the broker is unreachable: better a pass now than none
        log.warning("could not put the paced pass of pool %s back on its queue; running it now", pool_id,
                    exc_info=True)
        return False
    return True


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
