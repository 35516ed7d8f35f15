"""Scheduled sizing's beat pass (queue `system`): apply the pool schedules whose next firing has come."""
from __future__ import annotations

import logging

from app.db import session_scope
from app.domain import schedules
from app.models import utcnow
from config.settings import get_settings
from workers import sweeps
from workers.celery_app import celery_app

log = logging.getLogger(__name__)


@celery_app.task(name="warmpool.apply_schedules")
def apply_schedules() -> int:
    """A bounded read of the due schedules, then each pool in a unit of work of its own (one short locked
    update per pool, cheaper than a task per pool; a failure skips that pool until the next pass).
    Idempotent: a firing already applied is not applied again. Returns how many pools changed sizes."""
    e = get_settings().engine
    applied = 0
    with sweeps.timed("schedule", e.schedule_interval_seconds):
        now = utcnow()
        with session_scope() as session:
            due = schedules.due_schedules(now, e.schedule_batch, session=session)
        for pool_id in due:
            try:
                with session_scope() as session:
                    applied += schedules.apply_due(pool_id, session=session, now=now)
            except Exception:
                log.exception("scheduled sizing of pool %s failed; the next pass retries it", pool_id)
    return applied
