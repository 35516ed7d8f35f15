"""The event applier (`warmpool events`): reads the instance event stream with a consumer group and
writes observed state to Postgres, acknowledging only after commit. It survives whatever Redis does.

- Several appliers may share the group; ordering across them is not guaranteed, so every apply is a
  compare-and-set (app.domain.instances) and a stale or duplicate event changes nothing.
- Entries are validated at decode (app.events.InstanceEvent.from_fields); a malformed one goes to the
  dead letters (`<stream>:dead`) at once.
- A batch of up to `events_batch` entries (one XREADGROUP) is applied in one transaction in a few
  statements (app.domain.observations) and acknowledged with one XACK after commit; its after-commit
  effects (reconciles, wake-ups) are deduplicated per batch and sent after the commit.
- A batch that fails is retried event by event; an event that fails `events_max_deliveries` times (here,
  or delivered that often to anyone) is dead-lettered and logged, so one poison event holds up nothing.
- The events of a pool another transaction holds (a reconcile pass holds its pool's row for the pass, and a
  niced engine's pass can take seconds under load) are held back, pending, and retried without waiting on
  each pass, so neither the rest of their batch nor the batches after it wait for that pass; held back
  longer than HOLD_MAX_SECONDS, they are applied in a transaction that waits for the lock.
- A lost stream or group (FLUSHALL, a Redis restart without persistence) is re-created; a lost
  connection, or an unreachable database, is retried with backoff. Nothing but a stop ends the loop.
- Entries a dead consumer left pending longer than `events_claim_idle_ms` are claimed (XAUTOCLAIM), and
  consumers idle longer than `events_dead_consumer_ms` with nothing pending are removed from the group.

The loop is a workers.loop.LoopService: a failed pass backs off (capped at `events_retry_max_seconds`)
and the next one first retries what the outage left in our own pending list.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import redis as redis_lib
from kombu import exceptions as kombu_exc
from sqlalchemy import exc as sa_exc

from app import events
from app.db import session_scope
from app.domain import effects, epochs, instances
from app.heap import freeze_startup_heap
from config.settings import get_settings
from workers.loop import LoopService

log = logging.getLogger(__name__)

# Errors that say "the database is unreachable", not "this event is bad": they never count toward a
# dead letter, they make the whole loop back off instead.
_STORE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)
_REDIS_DOWN = (redis_lib.ConnectionError, redis_lib.TimeoutError, kombu_exc.OperationalError)


HOLD_MAX_SECONDS = 1.0
"""How long a held pool's events are retried without waiting before the applier waits for the pool's lock."""
HELD_RETRY_MS = 50
"""The longest a read blocks while events are held back: the retry comes at least this often."""


def _lost_stream(exc: redis_lib.ResponseError) -> bool:
    """NOGROUP after a flush; UNBLOCKED when the key vanished under a blocked XREADGROUP."""
    text = str(exc)
    return "NOGROUP" in text or "UNBLOCKED" in text or "no longer exists" in text


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Applier(LoopService):
    backoff_base = 0.1

    def __init__(self, client: redis_lib.Redis | None = None, consumer: str | None = None,
                 after_commit: Callable[[list[effects.Effect]], None] = effects.dispatch) -> None:
        s = get_settings().engine
        self.after_commit = after_commit
        self.r = client or redis_lib.Redis.from_url(get_settings().redis_url, socket_connect_timeout=5,
                                                     socket_timeout=30, health_check_interval=10)
        self.stream, self.group = s.events_stream, s.events_group
        self.dead = f"{s.events_stream}:dead"
        self.max_deliveries = s.events_max_deliveries
        self.claim_idle_ms = s.events_claim_idle_ms
        self.dead_consumer_ms = s.events_dead_consumer_ms
        self.retry_max = self.backoff_max = s.events_retry_max_seconds
        self.batch = s.events_batch
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        super().__init__(f"applier-{self.consumer}")
        self.applied = 0
        self.dead_lettered = 0
        self.failures: dict[str, int] = {}  # entry id -> failed applies here, while it stays pending
        self.ticks = 0
        self.recheck_own = False  # an outage interrupted a pass: entries may sit in our pending list
        self.lost_events = False  # the stream was lost: runners need a new epoch (see new_epochs)
        self.held: list[tuple[Any, dict, events.InstanceEvent]] = []  # read, pending: their pools are held
        self.held_since = 0.0
        self.began = time.monotonic()
        try:
            self.ensure_group()
            self.prune_consumers()
        except _REDIS_DOWN as exc:  # the loop retries; starting must not need Redis up
            log.warning("redis unreachable at start (%s); will retry", exc)

    # --- the group -------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the stream and the group if either is missing; from id 0, so entries published into a
        re-created stream before the group came back are read too."""
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.group, self.stream)
        except redis_lib.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def prune_consumers(self) -> int:
        """Remove consumers of dead appliers: idle past the threshold with nothing pending (a dead
        consumer's pending entries are reclaimed first, so its pending count drops to 0)."""
        removed = 0
        for c in self.r.xinfo_consumers(self.stream, self.group):
            name = _text(c["name"])
            if name != self.consumer and int(c["pending"]) == 0 and int(c["idle"]) > self.dead_consumer_ms:
                self.r.xgroup_delconsumer(self.stream, self.group, name)
                removed += 1
                log.info("removed dead consumer %s from group %s", name, self.group)
        return removed

    def new_epochs(self) -> None:
        """Events were lost with the stream: begin a new epoch of every runner, so nothing is handed out
        until the observer's re-list has seen it running again (app.domain.epochs). Retried each pass
        until the database takes it."""
        with session_scope() as session:
            epochs.bump_all(session=session)
        self.lost_events = False
        log.warning("event stream lost: began a new epoch of every runner (instances wait for a re-list)")

    # --- applying --------------------------------------------------------------------------------

    def _decode(self, entry_id: Any, fields: dict | None) -> events.InstanceEvent | None:
        if not fields:  # trimmed away while pending: nothing to apply
            self.r.xack(self.stream, self.group, entry_id)
            return None
        try:
            return events.InstanceEvent.from_fields(fields)
        except events.MalformedEvent as exc:
            self._dead_letter(entry_id, fields, f"malformed: {exc}")
            return None

    def apply_one(self, entry_id: Any, fields: dict | None) -> bool:
        """Apply and acknowledge one entry; False (left pending for a retry) if applying failed. A database
        outage propagates (the loop backs off) and never counts as the event's failure."""
        event = self._decode(entry_id, fields)
        if event is None:
            return True
        key = _text(entry_id)
        try:
            with session_scope(after_commit=self.after_commit) as session:
                instances.apply_event(event, session=session)
        except _STORE_DOWN:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the applier
            count = self.failures.get(key, 0) + 1
            if count >= self.max_deliveries:
                self.failures.pop(key, None)
                self._dead_letter(entry_id, fields or {}, f"failed {count} times: {type(exc).__name__}: {exc}")
                return True
            self.failures[key] = count
            log.warning("applying event %s failed (%d of %d): %s", key, count, self.max_deliveries, exc)
            return False
        self.failures.pop(key, None)
        self.r.xack(self.stream, self.group, entry_id)
        self.applied += 1
        return True

    def _dead_letter(self, entry_id: Any, fields: dict, reason: str) -> None:
        payload = {_text(k): v for k, v in fields.items()}
        payload["reason"] = reason
        payload["entry_id"] = _text(entry_id)
        pipe = self.r.pipeline()
        pipe.xadd(self.dead, payload, maxlen=100_000, approximate=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        self.dead_lettered += 1
        log.error("event %s dead-lettered to %s: %s", _text(entry_id), self.dead, reason)

    def apply_batch(self, entries: list[tuple[Any, dict]]) -> int:
        """Apply many entries in one transaction and acknowledge them after its commit; if the batch
        fails, fall back to one entry per transaction so one poison entry cannot hold up the rest. The
        events of a pool another transaction holds (a reconcile pass), and those of a pool with events
        held back already (their order kept), are held back (`retry_held`): the rest, and the waiting
        calls they serve, do not wait for that pass."""
        decoded = [(entry_id, fields, ev) for entry_id, fields in entries
                   if (ev := self._decode(entry_id, fields)) is not None]
        held_pools = {ev.pool_id for _, _, ev in self.held}
        self._hold([d for d in decoded if d[2].pool_id in held_pools])
        return self._apply([d for d in decoded if d[2].pool_id not in held_pools], wait=False)

    def _apply(self, batch: list[tuple[Any, dict, events.InstanceEvent]], *, wait: bool) -> int:
        """Apply `batch` in one transaction: with `wait`, waiting for every pool's lock; else the events of
        the pools another transaction holds are held back. Acknowledges what it applied; if the transaction
        fails, applies the batch one entry per transaction. Returns how many were applied."""
        if not batch:
            return 0
        busy: set[str] = set()
        try:
            with session_scope(after_commit=self.after_commit) as session:
                if wait:
                    instances.apply_events([ev for _, _, ev in batch], session=session)
                else:
                    busy = instances.apply_events_free([ev for _, _, ev in batch], session=session)
        except _STORE_DOWN:
            raise
        except Exception:
            log.warning("a batch of %d events failed; applying them one by one", len(batch), exc_info=True)
            return sum(1 for entry_id, fields, _ in batch if self.apply_one(entry_id, fields))
        self._hold([d for d in batch if d[2].pool_id in busy])
        applied = [entry_id for entry_id, _, ev in batch if ev.pool_id not in busy]
        if applied:
            self.r.xack(self.stream, self.group, *applied)
            self.applied += len(applied)
        return len(applied)

    def _hold(self, held: list[tuple[Any, dict, events.InstanceEvent]]) -> None:
        if held and not self.held:
            self.held_since = time.monotonic()
        self.held += held

    def _held_ids(self) -> set[str]:
        return {_text(entry_id) for entry_id, _, _ in self.held}

    def retry_held(self) -> int:
        """Apply the held-back events of the pools no longer held, without waiting; once they have been held
        back HOLD_MAX_SECONDS, all of them, waiting for the locks (a pool never free between two passes
        still gets its events). Returns how many were applied."""
        if not self.held:
            return 0
        batch, since, self.held = self.held, self.held_since, []
        done = self._apply(batch, wait=time.monotonic() - since >= HOLD_MAX_SECONDS)
        if self.held:  # still held back: they have waited since they were first held
            self.held_since = since
        return done

    def on_stop(self) -> None:
        """Held-back events are applied before the applier ends, waiting for their pools' passes, rather than
        left pending for another applier to reclaim after `events_claim_idle_ms`."""
        batch, self.held = self.held, []
        self._apply(batch, wait=True)

    def retry_own(self, count: int = 100) -> int:
        """Apply again the entries that failed here (our own pending list, read from id 0)."""
        response = self.r.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
        done = 0
        held = self._held_ids()
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                if _text(entry_id) in held:  # pending on purpose: retry_held applies it
                    continue
                if self.apply_one(entry_id, fields):
                    done += 1
        return done

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
                info: dict[Any, int] = {p["message_id"]: int(p["times_delivered"]) for p in self.r.xpending_range(
                    self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 10, consumername=self.consumer)}
                held = self._held_ids()
                for entry_id, fields in claimed:
                    if fields is None or _text(entry_id) in held:  # held: retry_held applies it
                        continue
                    if info.get(entry_id, 0) > self.max_deliveries:
                        self._dead_letter(entry_id, fields, f"failed {info[entry_id]} deliveries")
                    elif self.apply_one(entry_id, fields):
                        done += 1
            if start in (b"0-0", "0-0") or not claimed:
                return done

    def poll(self, block_ms: int = 1000, count: int | None = None) -> int:
        """Read new entries (at most `events_batch`: a blocking read, then at once what else has come in)
        and apply them as one batch; returns how many were applied."""
        count = count or self.batch
        done = self.retry_held()
        if self.held:
            block_ms = min(block_ms, HELD_RETRY_MS)
        response: Any = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        entries = [e for _stream, got in response or [] for e in got]
        if entries and len(entries) < count:
            # Woken by the first entry of a burst (a publisher's pipeline is read by Redis a buffer at a time):
            # what came in meanwhile joins this batch rather than waiting for the next transaction.
            more: Any = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count - len(entries))
            entries += [e for _stream, got in more or [] for e in got]
        return done + (self.apply_batch(entries) if entries else 0)

    # --- the loop --------------------------------------------------------------------------------

    def run_once(self, block_ms: int = 1000) -> int:
        """One pass: retry our failures, read new entries, and now and then reclaim and prune. A lost stream
        or group is re-created at once; anything else propagates, and LoopService backs off."""
        try:
            done = 0
            if self.lost_events:
                self.new_epochs()
            if self.failures or self.recheck_own:
                done += self.retry_own()
                self.recheck_own = False
            done += self.poll(block_ms=block_ms)
            self.ticks += 1
            if self.ticks % 10 == 1:
                done += self.reclaim()
            if self.ticks % 60 == 1:
                self.prune_consumers()
            return done
        except redis_lib.ResponseError as exc:
            if not _lost_stream(exc):
                raise
            log.warning("the event stream or its group is gone (%s): re-creating it", exc)
            self.failures.clear()  # those entry ids died with the stream
            self.held = []
            self.lost_events = True
            self.ensure_group()
            return 0

    def step(self) -> bool:
        ok = super().step()
        if not ok:
            self.recheck_own = True  # an outage may have interrupted a pass after its read
        return ok

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, _REDIS_DOWN):
            return f"redis unreachable: {exc}"
        if isinstance(exc, _STORE_DOWN):
            return f"database unreachable: {exc}"
        return super().describe(exc)

    @property
    def _thread(self) -> Any:  # the name the tests and older callers know
        return self.thread

    def health(self) -> dict[str, Any]:
        """Healthy while a pass succeeded recently; what went wrong last otherwise."""
        age = time.time() - self.last_ok if self.last_ok is not None else time.monotonic() - self.began
        return {**super().health(), "healthy": age < max(10.0, 2 * self.retry_max), "seconds_since_ok": round(age, 1),
                "applied": self.applied, "dead_lettered": self.dead_lettered}

    def stop(self, wait: float | None = 5.0) -> None:
        super().stop(wait)


def main() -> None:
    from workers.celery_app import dispatch_effect, dispatch_effects

    effects.set_dispatcher(dispatch_effect)
    applier = Applier(after_commit=dispatch_effects)
    freeze_startup_heap()  # a full collection would hold up the wake-ups of the batch it lands in
    log.info("event applier %s reading %s (group %s), %d events a batch", applier.consumer, applier.stream,
             applier.group, applier.batch)

    def stop(*_: Any) -> None:
        applier.stop(wait=None)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    applier.run()
