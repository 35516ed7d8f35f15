"""Orphan collection task (beat, queue `system`)."""
from __future__ import annotations

from config.settings import get_settings
from workers import gc, sweeps
from workers.celery_app import celery_app


@celery_app.task(name="warmpool.collect_orphans")
def collect_orphans() -> dict:
    with sweeps.timed("orphan collection", get_settings().engine.orphan_interval_seconds):
        return gc.collect()
