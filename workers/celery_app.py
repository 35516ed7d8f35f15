"""The Celery application of warmpool, and the dispatcher that turns committed domain effects into tasks."""
from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready

from config.celery import EFFECT_TASKS, celery_config
from config.settings import get_settings


def make_celery() -> Celery:
    app = Celery("warmpool")
    app.conf.update(celery_config(get_settings()))
    app.conf.imports = ("tasks.reconcile", "tasks.provision", "tasks.snapshots", "tasks.leases", "tasks.gc", "tasks.schedules")
    return app


celery_app = make_celery()
log = logging.getLogger(__name__)


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


DESTROYS_PER_TASK = 50


def dispatch_burst(effects: list[tuple[str, dict[str, Any]]]) -> None:
    """A burst of committed effects (the lease path's after-commit thread): the events (leased and returned
    once per pool: app.domain.events.one_per_pool) and wake-ups in one Redis pipeline, the destroys of
    returned instances in one warmpool.delete_instances task per 50 (each deduplicated as its own
    delete_instance would be, all in one round trip), every other effect as `dispatch_effect` sends it."""
    from app import events
    from workers import inflight

    events.publish_many(events.one_per_pool([events.InstanceEvent(**p) for n, p in effects if n == "publish_event"]),
                        notices=[(p["channel"], p.get("message", "")) for n, p in effects if n == "notify"])
    asked: list[str] = []
    for name, payload in effects:
        if name in ("publish_event", "notify"):
            continue
        if name == "delete_instance":
            if payload.get("instance_id"):
                asked.append(payload["instance_id"])
            continue
        try:
            enqueue(name, payload)
        except Exception:
            log.warning("could not enqueue %s(%s); the next sweep will pick it up", name, payload, exc_info=True)
    doomed = inflight.claim_many("delete_instance", "instance_id", list(dict.fromkeys(asked)))
    for i in range(0, len(doomed), DESTROYS_PER_TASK):
        chunk = doomed[i:i + DESTROYS_PER_TASK]
        try:
            celery_app.send_task("warmpool.delete_instances", kwargs={"instance_ids": chunk})
        except Exception:
            for instance_id in chunk:  # not sent: the next ask must not be dropped
                inflight.forget("delete_instance", instance_id=instance_id)
            raise


def enqueue(name: str, payload: dict[str, Any]) -> bool:
    """Send the task for effect `name` unless an identical one is already in flight (workers.inflight);
    True if it was sent. A write's reconcile also goes behind a running pass (that pass may have read
    the pool before the write)."""
    from workers import inflight

    if name == "provision_instances":
        return enqueue_provision(payload["instance_ids"])
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


def enqueue_provision(instance_ids: list[str]) -> bool:
    """A reconcile pass's new instances: `provision_instances` tasks of `engine.provision_batch` ids each (at
    1, one `provision_instance` task per instance, as before batching), without the ids whose provision is
    already queued or running. True if anything was sent."""
    from workers import inflight

    size = get_settings().engine.provision_batch
    if size <= 1:
        return any([enqueue("provision_instance", {"instance_id": i}) for i in instance_ids])
    sent = False
    for n in range(0, len(instance_ids), size):
        ids = inflight.claim_many("provision_instance", "instance_id", instance_ids[n:n + size])
        if not ids:
            continue
        try:
            celery_app.send_task("warmpool.provision_instances", kwargs={"instance_ids": ids})
        except Exception:
            inflight.forget_many("provision_instance", "instance_id", ids)  # not sent: the next ask must not be dropped
            raise
        sent = True
    return sent


def dispatch_effects(effects: list[tuple[str, dict[str, Any]]]) -> None:
    """`dispatch_effect` for a whole transaction's effects (the event applier's batches): the wake-ups go in
    one pipeline and each task's dedupe keys are taken in one, so a batch costs a few round trips, not a
    few per pool. Like app.domain.effects.dispatch, a failure is logged, never raised."""
    import logging

    import redis as redis_lib

    from app import events

    log = logging.getLogger(__name__)
    wakeups = [p for name, p in effects if name == "notify"]
    if wakeups:
        try:
            pipe = events.redis_client().pipeline(transaction=False)
            for p in wakeups:
                pipe.publish(p["channel"], p.get("message", ""))
            pipe.execute()
        except redis_lib.RedisError:
            log.warning("could not send %d wake-ups (best effort)", len(wakeups), exc_info=True)
    tasks: dict[str, list[dict[str, Any]]] = {}
    for name, p in effects:
        if name != "notify":
            tasks.setdefault(name, []).append(p)
    for name, payloads in tasks.items():
        try:
            enqueue_many(name, payloads)
        except Exception:  # the data is committed; the sweep finds what still needs a pass
            log.warning("could not enqueue %d %s; the next sweep will pick them up", len(payloads), name, exc_info=True)


def enqueue_many(name: str, payloads: list[dict[str, Any]]) -> int:
    """`enqueue` for many payloads of one effect, their dedupe keys taken in one round trip; how many were sent."""
    from workers import inflight

    field = inflight.KEYED.get(name)
    if field is None or not all(p.get(field) for p in payloads):  # not deduplicated by one id: one at a time
        for p in payloads:
            dispatch_effect(name, p)
        return len(payloads)
    task = EFFECT_TASKS[name]
    taken = set(inflight.claim_many(name, field, [p[field] for p in payloads],
                                    behind_running=name == "reconcile_pool"))
    sent = 0
    for p in payloads:
        if p[field] not in taken:
            continue
        try:
            celery_app.send_task(task, kwargs=p)
        except Exception:
            inflight.forget(name, **p)  # not sent: the next ask must not be dropped
            raise
        sent += 1
    return sent


def enqueue_swept_reconciles(pool_ids: list[str]) -> int:
    """The beat sweep's passes, on the `sweep` queue, in a few Redis round trips: a pool is skipped while
    a pass of it is queued or running anywhere, one at a time per pool. Returns how many were sent."""
    from config.celery import SWEEP_QUEUE
    from workers import inflight

    idle = [p for p, busy in zip(pool_ids, inflight.busy_many("reconcile_pool", "pool_id", pool_ids)) if not busy]
    taken = inflight.claim_many("swept_reconcile", "pool_id", idle)
    for n, pool_id in enumerate(taken):
        try:
            celery_app.send_task("warmpool.reconcile_pool", kwargs={"pool_id": pool_id, "swept": True}, queue=SWEEP_QUEUE)
        except Exception:
            inflight.forget_many("swept_reconcile", "pool_id", taken[n:])
            raise
    return len(taken)


@worker_init.connect
def _install_dispatcher(**_: Any) -> None:
    """Inside a worker, effects deferred by the domain (reconcile -> provision, …) become tasks."""
    from app.domain import effects

    effects.set_dispatcher(dispatch_effect)


# kombu's Redis transport gives a dead worker's unacknowledged tasks back only when some worker restores
# them: at its start (only tasks already older than the visibility timeout then), and afterwards on every
# tenth check of a 10 s timer, about every 100 s. So a task a SIGKILLed worker held came back after one to
# two minutes, not after the visibility timeout. Each worker restores them itself, often (kombu's mutex
# makes one worker at a time do it), so they come back within a second or so of the visibility timeout.


def restore_every() -> float:
    return max(min(get_settings().engine.broker_visibility_seconds / 4, 5.0), 0.5)


def restore_unacked(limit: int = 500) -> None:
    """Put back on their queues the unacknowledged tasks older than the visibility timeout (a dead worker's)."""
    with celery_app.connection_for_write() as conn:
        qos = getattr(conn.default_channel, "qos", None)
        if qos is not None and hasattr(qos, "restore_visible"):  # the Redis transport (memory has none)
            qos.restore_visible(num=limit, interval=1)


def _restore_loop(stop: threading.Event) -> None:
    while not stop.wait(restore_every()):
        try:
            restore_unacked()
        except Exception as exc:  # noqa: BLE001 - Redis may be down: the next round tries again
            log.warning("could not restore unacknowledged tasks: %s", exc)


@worker_ready.connect
def _start_restoring(**_: Any) -> None:
    threading.Thread(target=_restore_loop, args=(threading.Event(),), name="restore-unacked", daemon=True).start()
