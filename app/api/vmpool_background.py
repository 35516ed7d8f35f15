"""The lease service's two background helpers, one each per process: AfterCommit hands committed
effects to the dispatcher off the request path, and ReservationWaiter wakes Lease calls waiting for
their reservation when the event applier's push arrives on Redis pub/sub."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from app.domain import effects
from app.events import reservation_channel
from config.settings import get_settings

log = logging.getLogger(__name__)


class AfterCommit:
    """Hands committed effects to the process's dispatcher (app.domain.effects) on one background
    thread. Events go out in commit order within `gather` seconds, everything queued meanwhile in one
    burst (one Redis pipeline: workers.celery_app.dispatch_burst). A `reconcile_pool` waits `delay` seconds
    and absorbs every identical one committed meanwhile: a burst of leases on a pool asks for one backfill
    reconcile, not one Celery task per lease (reconcile is level-triggered, so the one sent after the
    burst's commits sees all of them). Destroys wait up to `delay` too, to leave in tasks of 50."""

    COALESCED = frozenset({"reconcile_pool"})
    BATCHED = frozenset({"delete_instance"})
    """Held like a reconcile, but together: the destroys asked within `delay` of the first go out as one
    burst (one task per 50), not one small task per gather window."""

    def __init__(self, delay: float = 0.05, gather: float = 0.005) -> None:
        self.delay = delay
        # After the first effect of a burst, wait this long for the commits right behind it: at a thousand
        # leases a second, one pipeline (and one wake-up of this thread, which takes the GIL from the
        # event loop) carries several leases' events instead of one each.
        self.gather = gather
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held: dict[tuple, tuple[float, str, dict]] = {}
        self._batch_due = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, committed: list[tuple[str, dict]]) -> None:
        if not committed:
            return
        self._start()
        for name, payload in committed:
            if name in self.COALESCED or name in self.BATCHED:
                key = (name, tuple(sorted(payload.items())))
                with self._lock:
                    if key not in self._held:
                        now = time.monotonic()
                        due, joined = now + self.delay, False
                        if name in self.BATCHED:
                            joined = self._batch_due > now  # the open batch's due time
                            due = self._batch_due = self._batch_due if joined else due
                        self._held[key] = (due, name, payload)
                        if not joined:
                            self._queue.put(None)  # wake the thread so it knows the new due time
            else:
                self._queue.put((name, payload))

    def flush(self, timeout: float = 5.0) -> bool:
        """Send everything submitted so far, held ones included, and wait for it (tests, shutdown)."""
        done = threading.Event()
        self._start()
        self._queue.put(("", done))
        return done.wait(timeout)

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="vmpool-after-commit", daemon=True)
                    self._thread.start()

    def _send_held(self, force: bool = False) -> float | None:
        """Send the held effects that are due; returns seconds until the next one is (None: none held)."""
        now = time.monotonic()
        with self._lock:
            due = [k for k, (at, _, _) in self._held.items() if force or at <= now]
            ready = [self._held.pop(k) for k in due]  # popped before sending: a later commit holds its own
            nxt = min((at for at, _, _ in self._held.values()), default=None)
        effects.dispatch_burst([(name, payload) for _, name, payload in ready])
        return None if nxt is None else max(0.0, nxt - now)

    def _run(self) -> None:
        wait: float | None = None
        while True:
            try:
                items = [self._queue.get(timeout=wait)]
                time.sleep(self.gather)
            except queue.Empty:
                items = []
            while True:  # whatever else is queued already goes out with it: one pipeline per burst
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            effects.dispatch_burst([item for item in items if item is not None and item[0]])
            flushes = [item[1] for item in items if item is not None and not item[0]]
            if flushes:
                self._send_held(force=True)
                for done in flushes:
                    done.set()
            wait = self._send_held()


AFTER_COMMIT = AfterCommit()
"""The process's one AfterCommit."""


class _Watch:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def fire(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # its loop has closed: nobody is waiting any more
            pass

    async def wait(self, timeout: float) -> None:
        # asyncio.wait, not wait_for: a cancellation arriving with the wake-up must not be swallowed (3.11).
        waiting = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({waiting}, timeout=timeout)
        finally:
            waiting.cancel()
        self.event.clear()


class ReservationWaiter:
    """One pattern subscription per process (on every reservation channel), started at the first wait,
    fanning each message out to the calls watching that channel, on whichever event loop they run.
    After a reconnect every watch is woken, so a message lost meanwhile costs a re-check, not a wait."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.healthy = False
        self._watches: dict[str, set[_Watch]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @contextmanager
    def watch(self, channel: str) -> Iterator[_Watch]:
        self.start()
        w = _Watch(asyncio.get_running_loop())
        with self._lock:
            self._watches.setdefault(channel, set()).add(w)
        try:
            yield w
        finally:
            with self._lock:
                ws = self._watches.get(channel)
                if ws is not None:
                    ws.discard(w)
                    if not ws:
                        del self._watches[channel]

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="reservation-waiter", daemon=True)
                self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the subscription is confirmed (tests and start-up use it)."""
        self.start()
        deadline = time.monotonic() + timeout
        while not self.healthy and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.healthy

    def close(self) -> None:
        self._stop.set()

    def _fire(self, channel: str | None) -> None:
        with self._lock:
            targets = [w for ws in self._watches.values() for w in ws] if channel is None else list(self._watches.get(channel, ()))
        for w in targets:
            w.fire()

    def _listen(self) -> None:
        pattern = reservation_channel("*")
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                client = redis.Redis.from_url(self.url or get_settings().redis_url, socket_connect_timeout=5,
                                              socket_keepalive=True, health_check_interval=15)
                pubsub = client.pubsub()
                pubsub.psubscribe(pattern)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    if msg["type"] == "psubscribe":
                        self.healthy, backoff = True, 0.1
                        self._fire(None)
                    elif msg["type"] == "pmessage":
                        channel = msg["channel"]
                        self._fire(channel.decode() if isinstance(channel, bytes) else channel)
            except Exception as exc:  # noqa: BLE001 - keep listening; waiters fall back to polling meanwhile
                if self.healthy:
                    log.warning("reservation wake-ups: lost Redis (%s); reconnecting", exc)
                self.healthy = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
