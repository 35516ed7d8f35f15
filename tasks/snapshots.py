"""Prebuild and snapshot-rotation tasks."""
from __future__ import annotations

from celery import Task

from app.db import session_scope
from app.domain import prebuilds
from config.settings import get_settings
from workers import operations, prebuild, sweeps
from workers.celery_app import celery_app


@celery_app.task(name="warmpool.run_prebuild", bind=True, acks_late=True)
def run_prebuild(self: Task, prebuild_id: str) -> str:
    try:
        return prebuild.run(prebuild_id, self.request.retries)
    except operations.Failed as exc:
        raise self.retry(countdown=exc.countdown, max_retries=None) from exc


@celery_app.task(name="warmpool.rotate_snapshots")
def rotate_snapshots() -> int:
    with sweeps.timed("snapshot rotation", get_settings().engine.rotation_interval_seconds):
        with session_scope() as session:
            return prebuilds.rotate_all(1000, session=session)


@celery_app.task(name="warmpool.delete_snapshot", bind=True, acks_late=True)
def delete_snapshot(self: Task, runner_id: str, snapshot_id: str) -> str:
    try:
        return prebuild.delete_snapshot(runner_id, snapshot_id, self.request.retries)
    except operations.Failed as exc:
        raise self.retry(countdown=exc.countdown, max_retries=None) from exc
