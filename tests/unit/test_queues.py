"""Lease expiry and the sweeps run on their own queue, which every worker command we ship consumes, and
each beat entry expires after its interval (issue 9: tenant work can never starve them)."""
from __future__ import annotations

from pathlib import Path

import yaml

from app.cli import build_parser
from config.celery import ALL_QUEUES, SYSTEM_QUEUE, TASK_ROUTES, celery_config
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_beat_entry_runs_on_the_system_queue_and_expires_after_its_interval():
    schedule = celery_config(Settings())["beat_schedule"]
    assert {e["task"] for e in schedule.values()} == {
        "warmpool.reconcile_sweep", "warmpool.rotate_snapshots", "warmpool.expire_leases", "warmpool.collect_orphans",
        "warmpool.apply_schedules"}
    for name, entry in schedule.items():
        assert TASK_ROUTES[entry["task"]]["queue"] == SYSTEM_QUEUE, name
        assert entry["options"]["expires"] == entry["schedule"], name
    tenant_work = [t for t, r in TASK_ROUTES.items() if t not in {e["task"] for e in schedule.values()}]
    assert tenant_work and all(TASK_ROUTES[t]["queue"] != SYSTEM_QUEUE for t in tenant_work)


def test_warmpool_worker_dev_and_compose_consume_every_queue():
    args = build_parser().parse_args(["worker"])
    assert set(args.queues.split(",")) == set(ALL_QUEUES)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]["command"]
    assert worker[:2] == ["warmpool", "worker"] and "--queues" not in worker and "-Q" not in worker
    dev = (ROOT / "app" / "devserver.py").read_text()
    assert '"worker": [exe, "worker", "--concurrency", "8"]' in dev  # the default queues, all of them
