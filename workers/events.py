"""The event applier (`warmpool events`): reads the instance event stream with a consumer group and
writes observed state to Postgres, one event per transaction, acknowledging only after commit.

- Several appliers may share the group; ordering across them is not guaranteed, so every apply is a
  compare-and-set (app.domain.instances) and a stale or duplicate event changes nothing.
- Entries a dead consumer left pending longer than `events_claim_idle_ms` are claimed (XAUTOCLAIM).
- An entry delivered `events_max_deliveries` times without success goes to `<stream>:dead`.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any

import redis as redis_lib

from app import events
from app.db import session_scope
from app.domain import effects, instances
from config.settings import get_settings

log = logging.getLogger(__name__)


class Applier:
    def __init__(self, client: redis_lib.Redis | None = None, consumer: str | None = None) -> None:
        s = get_settings().engine
        self.r = client or redis_lib.Redis.from_url(get_settings().redis_url)
        self.stream, self.group = s.events_stream, s.events_group
        self.dead = f"{s.events_stream}:dead"
        self.max_deliveries = s.events_max_deliveries
        self.claim_idle_ms = s.events_claim_idle_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = threading.Event()
        self.applied = 0
        self.ensure_group()

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis_lib.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def apply_one(self, entry_id: Any, fields: dict) -> bool:
        """Apply and acknowledge one entry; False (left pending for a retry) if applying failed."""
        try:
            event = events.InstanceEvent.from_fields(fields)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("undecodable event %s (%s): dead-lettered", entry_id, exc)
            self._dead_letter(entry_id, fields, f"undecodable: {exc}")
            return True
        try:
            with session_scope() as session:
                instances.apply_event(event, session=session)
        except Exception:  # noqa: BLE001 - one bad event must not stop the applier
            log.exception("applying event %s failed; it stays pending for a retry", entry_id)
            return False
        self.r.xack(self.stream, self.group, entry_id)
        self.applied += 1
        return True

    def _dead_letter(self, entry_id: Any, fields: dict, reason: str) -> None:
        payload = dict(fields)
        payload[b"reason" if isinstance(next(iter(fields), b""), bytes) else "reason"] = reason
        pipe = self.r.pipeline()
        pipe.xadd(self.dead, payload, maxlen=100_000, approximate=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()

    def reclaim(self) -> int:
        """Take over entries idle too long (a dead consumer's, or our own failures); dead-letter the
        ones delivered too often. Returns how many were applied."""
        done = 0
        start = "0-0"
        while True:
            result = self.r.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms, start, count=100)
            start, claimed = result[0], result[1]
            if claimed:
                ids = [eid for eid, _ in claimed]
                info = {p["message_id"]: p["times_delivered"] for p in self.r.xpending_range(
                    self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 10, consumername=self.consumer)}
                for entry_id, fields in claimed:
                    if fields is None:
                        continue
                    if info.get(entry_id, 0) > self.max_deliveries:
                        self._dead_letter(entry_id, fields, f"failed {info[entry_id]} deliveries")
                    elif self.apply_one(entry_id, fields):
                        done += 1
            if start in (b"0-0", "0-0") or not claimed:
                return done

    def apply_batch(self, entries: list[tuple[Any, dict]]) -> int:
        """Apply many entries in one transaction and acknowledge them after its commit; if the batch
        fails, fall back to one entry per transaction so one poison entry cannot hold up the rest."""
        decoded = []
        for entry_id, fields in entries:
            try:
                decoded.append((entry_id, events.InstanceEvent.from_fields(fields)))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("undecodable event %s (%s): dead-lettered", entry_id, exc)
                self._dead_letter(entry_id, fields, f"undecodable: {exc}")
        if not decoded:
            return 0
        try:
            with session_scope() as session:
                instances.apply_events([e for _, e in decoded], session=session)
        except Exception:  # noqa: BLE001 - retried entry by entry below
            log.warning("a batch of %d events failed; applying them one by one", len(decoded), exc_info=True)
            by_id = dict(entries)
            return sum(1 for entry_id, _ in decoded if self.apply_one(entry_id, by_id[entry_id]))
        self.r.xack(self.stream, self.group, *[entry_id for entry_id, _ in decoded])
        self.applied += len(decoded)
        return len(decoded)

    def poll(self, block_ms: int = 1000, count: int = 200) -> int:
        """Read new entries once and apply them as one batch; returns how many were applied."""
        response = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        return sum(self.apply_batch(entries) for _stream, entries in response or [] if entries)

    def run(self) -> None:
        log.info("event applier %s reading %s (group %s)", self.consumer, self.stream, self.group)
        ticks = 0
        while not self.stopping.is_set():
            try:
                self.poll()
                ticks += 1
                if ticks % 10 == 1:
                    self.reclaim()
            except redis_lib.ConnectionError as exc:
                log.warning("redis unreachable (%s); retrying", exc)
                self.stopping.wait(1.0)
            except redis_lib.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self.ensure_group()
                else:
                    raise


def main() -> None:
    from workers.celery_app import dispatch_effect

    effects.set_dispatcher(dispatch_effect)
    applier = Applier()

    def stop(*_: Any) -> None:
        applier.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    applier.run()
