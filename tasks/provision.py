"""Provider tasks (queue `provider`): provision, start, stop, delete, recycle one instance; provision many."""
from __future__ import annotations

from celery import Task

import logging

from workers import inflight, operations, provisioning
from workers.celery_app import celery_app

log = logging.getLogger(__name__)


def _run(task, fn, instance_id: str) -> str:  # type: ignore[no-untyped-def]
    """Run the operation holding its (instance, operation) dedupe key: refreshed while it runs and
    across a retry, released when it ends."""
    name = task.name.removeprefix("warmpool.")
    inflight.mark_running(name, instance_id=instance_id)
    try:
        result = fn(instance_id, task.request.retries)
    except operations.Failed as exc:
        inflight.mark_running(name, exc.countdown, instance_id=instance_id)
        raise task.retry(countdown=exc.countdown, max_retries=None) from exc
    except BaseException:
        inflight.release(name, instance_id=instance_id)
        raise
    inflight.release(name, instance_id=instance_id)
    return result


@celery_app.task(name="warmpool.provision_instance", bind=True, acks_late=True)
def provision_instance(self: Task, instance_id: str) -> str:
    return _run(self, operations.provision, instance_id)


@celery_app.task(name="warmpool.start_instance", bind=True, acks_late=True)
def start_instance(self: Task, instance_id: str) -> str:
    return _run(self, operations.start, instance_id)


@celery_app.task(name="warmpool.stop_instance", bind=True, acks_late=True)
def stop_instance(self: Task, instance_id: str) -> str:
    return _run(self, operations.stop, instance_id)


@celery_app.task(name="warmpool.delete_instance", bind=True, acks_late=True)
def delete_instance(self: Task, instance_id: str) -> str:
    return _run(self, operations.delete, instance_id)


@celery_app.task(name="warmpool.delete_instances", bind=True, acks_late=True)
def delete_instances(self: Task, instance_ids: list[str]) -> int:
    """Destroy several instances (the API sends one such task per burst of returned leases), each as
    delete_instance would; one whose provider asks for a retry goes on as its own delete_instance task.
    Returns how many were handled here."""
    done = 0
    for instance_id in instance_ids:
        inflight.mark_running("delete_instance", instance_id=instance_id)
        try:
            operations.delete(instance_id, 0)
        except operations.Failed as exc:
            inflight.mark_running("delete_instance", exc.countdown, instance_id=instance_id)
            celery_app.send_task("warmpool.delete_instance", kwargs={"instance_id": instance_id},
                                 countdown=exc.countdown)
            continue
        except Exception:
            inflight.release("delete_instance", instance_id=instance_id)
            log.exception("could not delete instance %s", instance_id)
            continue
        inflight.release("delete_instance", instance_id=instance_id)
        done += 1
    return done


@celery_app.task(name="warmpool.recycle_instance", bind=True, acks_late=True)
def recycle_instance(self: Task, instance_id: str) -> str:
    return _run(self, operations.recycle, instance_id)


@celery_app.task(name="warmpool.provision_instances", bind=True, acks_late=True)
def provision_instances(self: Task, instance_ids: list[str]) -> dict[str, int]:
    """Many instances with batched provider calls (workers.provisioning), each holding its own
    `provision_instance` dedupe key; a transient failure retries the failed ids only."""
    inflight.mark_running_many("provision_instance", "instance_id", instance_ids)
    try:
        outcome = provisioning.provision_many(instance_ids, self.request.retries)
    except operations.Failed as exc:
        again = exc.instance_ids
        inflight.release_many("provision_instance", "instance_id", [i for i in instance_ids if i not in set(again)])
        inflight.mark_running_many("provision_instance", "instance_id", again, exc.countdown)
        raise self.retry(kwargs={"instance_ids": again}, countdown=exc.countdown, max_retries=None) from exc
    except BaseException:
        inflight.release_many("provision_instance", "instance_id", instance_ids)
        raise
    inflight.release_many("provision_instance", "instance_id", instance_ids)
    counts: dict[str, int] = {}
    for result in outcome.values():
        counts[result] = counts.get(result, 0) + 1
    return counts
