"""The Celery application of warmpool, and the dispatcher that turns committed domain effects into tasks."""
from __future__ import annotations

from typing import Any

from celery import Celery

from config.celery import EFFECT_TASKS, celery_config
from config.settings import get_settings


def make_celery() -> Celery:
    app = Celery("warmpool")
    app.conf.update(celery_config(get_settings()))
    app.conf.imports = ()
    return app


celery_app = make_celery()


def dispatch_effect(name: str, payload: dict[str, Any]) -> None:
    """app.domain.effects dispatcher: send the task that carries out `name`, by name, ids only."""
    task = EFFECT_TASKS.get(name)
    if task is None:
        raise ValueError(f"no task for effect {name!r}")
    celery_app.send_task(task, kwargs=payload)
