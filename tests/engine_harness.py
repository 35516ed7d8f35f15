"""An in-process engine for integration tests: committed effects are queued and carried out by calling
the task bodies directly (as Celery's docs advise for unit-level tests), and the event applier is
polled in between, on real PostgreSQL and real Redis, until nothing is left to do. What the observer
process does (workers/observer.py) is done in between too, one full listing of each fake or local
runner at a time, and settling waits for the fake cloud's pending boots to fall due."""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from sqlmodel import select

from app import events
from app.db import session_scope
from app.domain import effects, reconciler
from app.models import Runner
from config.settings import get_settings
from workers import gc, operations, prebuild, provisioning
from workers.events import Applier
from workers.observer import RunnerObserver
from workers.providers.base import Sighting
from workers.providers.registry import provider_for

OBSERVED_INLINE = ("fake", "local")

OPERATIONS = {
    "provision_instance": operations.provision,
    "start_instance": operations.start,
    "stop_instance": operations.stop,
    "delete_instance": operations.delete,
    "recycle_instance": operations.recycle,
}


class InlineEngine:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.queue: deque[tuple[str, dict]] = deque()
        self.ran: list[tuple[str, dict]] = []
        self.failures: list[tuple[str, dict, float]] = []
        self.previous = effects.set_dispatcher(lambda name, payload: self.queue.append((name, payload)))
        self.applier = Applier(client=client, consumer="test-applier")
        self.watchers: dict[str, RunnerObserver] = {}

    def close(self) -> None:
        effects.set_dispatcher(self.previous)

    def step(self) -> bool:
        """Carry out one queued effect or apply pending events; False when there was nothing."""
        if self.queue:
            name, payload = self.queue.popleft()
            self.ran.append((name, payload))
            self.run(name, payload)
            return True
        return self.applier.poll(block_ms=1) > 0 or self.observe_once() > 0

    def observe_once(self) -> int:
        """One full listing of every fake or local runner through its RunnerObserver; returns events published."""
        with session_scope() as s:
            runners = [(r.id, r.provider, dict(r.settings or {}))
                       for r in s.exec(select(Runner).where(Runner.provider.in_(OBSERVED_INLINE))).all()]
        published = 0
        for runner_id, name, settings in runners:
            watcher = self.watchers.get(runner_id)
            if watcher is None:
                watcher = self.watchers[runner_id] = RunnerObserver(
                    runner_id, provider_for(name, settings, key=runner_id), get_settings().owner,
                    publish=lambda e: events.publish(e, client=self.client))
            published += watcher.pump(Sighting(watcher.provider.list(watcher.owner), full=True))
        return published

    def next_due(self) -> float | None:
        """Seconds until the fake cloud's next pending move (0 if one is due), or None if nothing is pending."""
        dues = [w.provider.cloud.next_due() for w in self.watchers.values() if hasattr(w.provider, "cloud")]
        dues = [d for d in dues if d is not None]
        return max(min(dues) / 1000 - time.time(), 0.0) if dues else None

    def run(self, name: str, payload: dict) -> Any:
        if name == "reconcile_pool":
            with session_scope() as s:
                return reconciler.reconcile(payload["pool_id"], session=s)
        if name == "provision_instances":
            try:
                return provisioning.provision_many(payload["instance_ids"])
            except operations.Failed as exc:
                self.failures.append((name, {"instance_ids": exc.instance_ids}, exc.countdown))
                return None
        if name in OPERATIONS:
            try:
                return OPERATIONS[name](payload["instance_id"])
            except operations.Failed as exc:
                self.failures.append((name, payload, exc.countdown))
                return None
        if name == "run_prebuild":
            try:
                return prebuild.run(payload["prebuild_id"])
            except operations.Failed as exc:
                self.failures.append((name, payload, exc.countdown))
                return None
        if name == "delete_snapshot":
            return prebuild.delete_snapshot(payload["runner_id"], payload["snapshot_id"])
        if name == "publish_event":
            return events.publish(events.InstanceEvent(**payload), client=self.client)
        if name == "notify":
            return events.notify(payload["channel"], payload.get("message", ""), client=self.client)
        raise AssertionError(f"unexpected effect {name}")

    def settle(self, limit: int = 2000) -> int:
        """Run until quiet; returns the number of steps. Fails loudly if the engine never settles."""
        for n in range(limit):
            if not self.step():
                wait = self.next_due()
                if wait is None:
                    return n
                time.sleep(min(wait, 5.0) + 0.001)  # until the fake cloud's next boot falls due
        raise AssertionError(f"engine did not settle in {limit} steps; last effects: {self.ran[-10:]}")

    def retry_failures(self) -> None:
        """Re-run the operations that asked for a retry (what Celery would do after the countdown)."""
        pending, self.failures = self.failures, []
        for name, payload, _ in pending:
            self.queue.append((name, payload))

    def collect_orphans(self) -> dict:
        return gc.collect(client=self.client)
