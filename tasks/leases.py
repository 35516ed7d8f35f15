"""Lease and reservation expiry sweep (beat)."""
from __future__ import annotations

from app.db import session_scope
from app.domain import leases
from app.models import utcnow
from workers.celery_app import celery_app


@celery_app.task(name="warmpool.expire_leases")
def expire_leases() -> int:
    with session_scope() as session:
        return leases.expire_due(utcnow(), 500, session=session)
