"""Provider tasks: provision, start, stop, delete, recycle one instance (queue `provider`)."""
from __future__ import annotations

from workers import inflight, operations
from workers.celery_app import celery_app


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


@celery_app.task(name="warmpool.recycle_instance", bind=True, acks_late=True)
def recycle_instance(self, instance_id: str) -> str:
    return _run(self, operations.recycle, instance_id)
