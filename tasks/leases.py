"""Lease and reservation expiry sweep (beat, queue `system`)."""
from __future__ import annotations

from app.db import session_scope
from app.domain import leases
from app.models import utcnow
from config.settings import get_settings
from workers import sweeps
from workers.celery_app import celery_app


@celery_app.task(name="warmpool.expire_leases")
def expire_leases() -> int:
    with sweeps.timed("lease expiry", get_settings().engine.lease_expiry_interval_seconds):
        with session_scope() as session:
            return leases.expire_due(utcnow(), 500, session=session)
