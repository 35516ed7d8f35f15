"""One active beat: `warmpool beat` sends its periodic sweeps only while it holds a Redis lock, so a second beat
(started by mistake, or a standby) waits instead of sending every sweep twice (DESIGN.md, Scaling out).

The lock is `warmpool:beat:lock` (SET NX PX, renewed on every tick by a compare-and-set on the holder's
token). A beat that cannot renew (Redis gone, flushed, or the lock taken) stops sending at once and tries
again on its next tick; a standby takes over within `LOCK_MS` of the holder's death. Two beats sending for
a moment (a flush lost the lock, both re-take it) is harmless: sweeps only enqueue idempotent tasks,
deduplicated by workers.inflight.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

import redis as redis_lib
from celery.beat import PersistentScheduler

log = logging.getLogger(__name__)

LOCK_KEY = "warmpool:beat:lock"
LOCK_MS = 5000
# Renew well within the lock's life, whatever the schedule's next entry is.
TICK_CAP_SECONDS = LOCK_MS / 1000 / 3
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


class BeatLock:
    """The beat lock of one beat process."""

    def __init__(self, client: redis_lib.Redis, key: str = LOCK_KEY, ttl_ms: int = LOCK_MS) -> None:
        self.r, self.key, self.ttl_ms = client, key, ttl_ms
        self.token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.held = False

    def hold(self) -> bool:
        """Take the lock if free, or renew it if ours; False if another beat holds it or Redis is unreachable."""
        try:
            held = bool(self.r.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))
        except redis_lib.RedisError as exc:
            held = False
            log.warning("beat lock unavailable (%s): not sending until it is held", exc)
        if held != self.held:
            log.warning("beat %s %s the beat lock", self.token, "holds" if held else "stands by: another beat holds")
        self.held = held
        return held

    def release(self) -> None:
        try:
            self.r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                        1, self.key, self.token)
        except redis_lib.RedisError:
            pass  # it expires on its own


class LockedScheduler(PersistentScheduler):
    """Celery's persistent scheduler, sending only while this beat holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        url = self.app.conf.broker_url
        self.lock = BeatLock(redis_lib.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.lock.hold():
            return TICK_CAP_SECONDS
        return min(super().tick(*args, **kwargs), TICK_CAP_SECONDS)

    def close(self) -> None:
        self.lock.release()
        super().close()
