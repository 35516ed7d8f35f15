"""The Celery application of warmpool, and the dispatcher that turns committed domain effects into tasks."""
from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init

from config.celery import EFFECT_TASKS, celery_config
from config.settings import get_settings


def make_celery() -> Celery:
    app = Celery("warmpool")
    app.conf.update(celery_config(get_settings()))
    app.conf.imports = ("tasks.reconcile", "tasks.provision", "tasks.snapshots", "tasks.leases", "tasks.gc", "tasks.schedules")
    return app


celery_app = make_celery()


def reconfigure() -> None:
    """Re-read the settings (tests point the process at other servers after import)."""
    config = celery_config(get_settings())
    if config["broker_url"] == celery_app.conf.broker_url:
        celery_app.conf.update(config)
        return
    celery_app.conf.update(config)
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def dispatch_effect(name: str, payload: dict[str, Any]) -> None:
    """app.domain.effects dispatcher, run after commit: a task name becomes a Celery task (ids only);
    `publish_event` goes to the instance event stream; `notify` is a best-effort pub/sub wake-up."""
    from app import events

    if name == "publish_event":
        events.publish(events.InstanceEvent(**payload))
        return
    if name == "notify":
        events.notify(payload["channel"], payload.get("message", ""))
        return
    enqueue(name, payload)


def enqueue(name: str, payload: dict[str, Any]) -> bool:
    """Send the task for effect `name` unless an identical one is already in flight (workers.inflight);
    True if it was sent. A write's reconcile also goes behind a running pass (that pass may have read
    the pool before the write)."""
    from workers import inflight

    task = EFFECT_TASKS.get(name)
    if task is None:
        raise ValueError(f"no task for effect {name!r}")
    if not inflight.claim(name, payload, behind_running=name == "reconcile_pool"):
        return False
    try:
        celery_app.send_task(task, kwargs=payload)
    except Exception:
        inflight.forget(name, **payload)  # not sent: the next ask must not be dropped
        raise
    return True


def enqueue_swept_reconcile(pool_id: str) -> bool:
    """The beat sweep's pass over one pool, on the `sweep` queue: skipped while a pass of the pool is
    queued or running anywhere, one at a time per pool. True if it was sent."""
    from config.celery import SWEEP_QUEUE
    from workers import inflight

    if inflight.busy("reconcile_pool", {"pool_id": pool_id}) or not inflight.claim("swept_reconcile", {"pool_id": pool_id}):
        return False
    try:
        celery_app.send_task("warmpool.reconcile_pool", kwargs={"pool_id": pool_id, "swept": True}, queue=SWEEP_QUEUE)
    except Exception:
        inflight.forget("swept_reconcile", pool_id=pool_id)
        raise
    return True


@worker_init.connect
def _install_dispatcher(**_: Any) -> None:
    """Inside a worker, effects deferred by the domain (reconcile -> provision, …) become tasks."""
    from app.domain import effects

    effects.set_dispatcher(dispatch_effect)
