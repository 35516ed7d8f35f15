"""Reconcile tasks: one pool per task, and the beat sweep that enqueues them (queue `reconcile`)."""
from __future__ import annotations

import logging
import time

from app.db import session_scope
from app.domain import pools, reconciler
from config.settings import get_settings
from workers.celery_app import celery_app

log = logging.getLogger(__name__)


@celery_app.task(name="warmpool.reconcile_pool", acks_late=True)
def reconcile_pool(pool_id: str) -> str:
    with session_scope() as session:
        plan = reconciler.reconcile(pool_id, session=session)
    return "gone" if plan is None else ("steady" if plan.empty else "acted")


@celery_app.task(name="warmpool.reconcile_sweep")
def reconcile_sweep() -> int:
    """Read-only and bounded: enqueue reconcile_pool for every live pool, least recently reconciled first."""
    began = time.monotonic()
    s = get_settings()
    with session_scope() as session:
        ids = pools.pools_to_sweep(s.engine.sweep_batch, session=session)
    for pool_id in ids:
        reconcile_pool.delay(pool_id)
    took = time.monotonic() - began
    if took > s.engine.reconcile_interval_seconds:
        log.warning("reconcile sweep took %.1fs, longer than its %.1fs interval", took, s.engine.reconcile_interval_seconds)
    return len(ids)
