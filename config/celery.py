"""Celery configuration: queues, routing, reliability and the beat schedule (DESIGN.md, Processes)."""
from __future__ import annotations

from typing import Any

from kombu import Queue

from config.settings import Settings

RECONCILE_QUEUE = "reconcile"
PROVIDER_QUEUE = "provider"
# Lease expiry and the sweeps have a queue of their own, consumed by every worker command we ship, so
# no backlog of tenant work (reconcile, provider calls) can delay them. A worker takes from its queues
# in turn (kombu rotates them), so a long queue delays the others by one task at a time, not its length.
SYSTEM_QUEUE = "system"
# The reconcile sweep's own passes (level-triggered re-checks): a queue apart from `reconcile`, so the
# passes writes ask for (a lease's backfill) never wait behind one tenant's thousands of swept pools.
SWEEP_QUEUE = "sweep"
ALL_QUEUES = (RECONCILE_QUEUE, PROVIDER_QUEUE, SYSTEM_QUEUE, SWEEP_QUEUE)

# Task name -> queue. Names are explicit and stable: they are the wire format between processes.
TASK_ROUTES = {
    "warmpool.reconcile_pool": {"queue": RECONCILE_QUEUE},
    "warmpool.reconcile_sweep": {"queue": SYSTEM_QUEUE},
    "warmpool.rotate_snapshots": {"queue": SYSTEM_QUEUE},
    "warmpool.expire_leases": {"queue": SYSTEM_QUEUE},
    "warmpool.provision_instance": {"queue": PROVIDER_QUEUE},
    "warmpool.provision_instances": {"queue": PROVIDER_QUEUE},
    "warmpool.start_instance": {"queue": PROVIDER_QUEUE},
    "warmpool.stop_instance": {"queue": PROVIDER_QUEUE},
    "warmpool.delete_instance": {"queue": PROVIDER_QUEUE},
    "warmpool.delete_instances": {"queue": PROVIDER_QUEUE},
    "warmpool.recycle_instance": {"queue": PROVIDER_QUEUE},
    "warmpool.run_prebuild": {"queue": PROVIDER_QUEUE},
    "warmpool.collect_orphans": {"queue": SYSTEM_QUEUE},
    "warmpool.delete_snapshot": {"queue": PROVIDER_QUEUE},
    "warmpool.apply_schedules": {"queue": SYSTEM_QUEUE},
}

# Effects deferred by the domain (app.domain.effects) -> the Celery task that carries them out.
EFFECT_TASKS = {
    "reconcile_pool": "warmpool.reconcile_pool",
    "provision_instance": "warmpool.provision_instance",
    "provision_instances": "warmpool.provision_instances",  # batches of ids: workers.celery_app.enqueue_provision
    "start_instance": "warmpool.start_instance",
    "stop_instance": "warmpool.stop_instance",
    "delete_instance": "warmpool.delete_instance",
    "recycle_instance": "warmpool.recycle_instance",
    "run_prebuild": "warmpool.run_prebuild",
    "delete_snapshot": "warmpool.delete_snapshot",
}


def celery_config(settings: Settings) -> dict[str, Any]:
    e = settings.engine
    return {
        "broker_url": settings.redis_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_acks_late": True,  # every task is idempotent, so a redelivery after a crash is harmless
        "task_reject_on_worker_lost": True,
        # Celery's default. At 1, with kombu 5.6 and a threads pool, a worker whose slots were all taken
        # refilled them only about once a second: one tenant's burst of short tasks kept another's
        # backfill waiting 2-5 s (tests/security/test_fairness.py); at 4 it takes about 0.6 s. A SIGKILLed
        # worker's reserved tasks still come back after the visibility timeout, like the running ones.
        "worker_prefetch_multiplier": 4,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
        "task_default_queue": RECONCILE_QUEUE,
        "task_queues": [Queue(q) for q in ALL_QUEUES],
        "task_routes": TASK_ROUTES,
        "broker_connection_retry_on_startup": True,
        # A SIGKILLed worker's tasks come back after the visibility timeout, so it is short (seconds);
        # that is safe because no countdown reaches it (workers.operations.backoff caps them) and every
        # task is idempotent (a slow one delivered twice is harmless). Long waits live in Postgres.
        "broker_transport_options": {"visibility_timeout": e.broker_visibility_seconds},
        "timezone": "UTC",
        # Only the beat holding a Redis lock sends (workers/beat.py): a second beat stands by.
        "beat_scheduler": "workers.beat:LockedScheduler",
        "beat_schedule": {
            "reconcile-sweep": {
                "task": "warmpool.reconcile_sweep", "schedule": e.reconcile_interval_seconds,
                "options": {"expires": e.reconcile_interval_seconds},
            },
            "rotate-snapshots": {
                "task": "warmpool.rotate_snapshots", "schedule": e.rotation_interval_seconds,
                "options": {"expires": e.rotation_interval_seconds},
            },
            "expire-leases": {
                "task": "warmpool.expire_leases", "schedule": e.lease_expiry_interval_seconds,
                "options": {"expires": e.lease_expiry_interval_seconds},
            },
            "collect-orphans": {
                "task": "warmpool.collect_orphans", "schedule": e.orphan_interval_seconds,
                "options": {"expires": e.orphan_interval_seconds},
            },
            "apply-schedules": {
                "task": "warmpool.apply_schedules", "schedule": e.schedule_interval_seconds,
                "options": {"expires": e.schedule_interval_seconds},
            },
        },
    }
