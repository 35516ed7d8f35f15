"""Provider tasks: provision, start, stop, delete one instance (queue `provider`)."""
from __future__ import annotations

from workers import operations
from workers.celery_app import celery_app


def _run(task, fn, instance_id: str) -> str:  # type: ignore[no-untyped-def]
    try:
        return fn(instance_id, task.request.retries)
    except operations.Failed as exc:
        raise task.retry(countdown=exc.countdown, max_retries=None) from exc


@celery_app.task(name="warmpool.provision_instance", bind=True, acks_late=True)
def provision_instance(self, instance_id: str) -> str:
    return _run(self, operations.provision, instance_id)


@celery_app.task(name="warmpool.start_instance", bind=True, acks_late=True)
def start_instance(self, instance_id: str) -> str:
    return _run(self, operations.start, instance_id)


@celery_app.task(name="warmpool.stop_instance", bind=True, acks_late=True)
def stop_instance(self, instance_id: str) -> str:
    return _run(self, operations.stop, instance_id)


@celery_app.task(name="warmpool.delete_instance", bind=True, acks_late=True)
def delete_instance(self, instance_id: str) -> str:
    return _run(self, operations.delete, instance_id)
