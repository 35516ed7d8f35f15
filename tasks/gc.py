"""Orphan collection task (queue `provider`)."""
from __future__ import annotations

from workers import gc
from workers.celery_app import celery_app


@celery_app.task(name="warmpool.collect_orphans")
def collect_orphans() -> dict:
    return gc.collect()
