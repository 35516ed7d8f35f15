"""Paced reconcile passes: a pool's passes start at least `reconcile_pace` times its last pass's duration apart.

A pass reads the whole pool, and a burst of leases asks for one after every few commits (the api's after-commit
thread every 50 ms per process, the applier for every batch of `leased` events, each landing of a refill wave).
The dedupe key (workers.inflight) keeps one pass queued behind a running one, but that queued pass starts as
soon as the running one ends: on a pool of thousands, passes ran back to back for the whole burst and took a
core. Paced, a pass that comes too soon goes back on its queue with a countdown (its dedupe key still says
`queued`, so every ask meanwhile joins it) and, when it runs, replaces everything taken since the last pass
in one go (one multi-row INSERT, batched provider calls). So a pool's passes take at most about
1 / (1 + reconcile_pace) of a worker's time however fast it is asked, and never wait longer than
`reconcile_pace_max_seconds`; a small pool's pass takes milliseconds, so its pace is milliseconds too.

A write's pass also never starts while another pass of its pool runs: the pace key says `running` from a pass's
start to its end. Without that, each ask that came while a pass ran sent one more task (the dedupe key lets one
queue behind a running pass), which marked itself running and queued on the pool's row lock: under a burst the
worker's threads all waited there and then ran their passes one after another, holding the pool's lock (which
the event applier needs too) the whole time.

The key lives in Redis with the gap (or a running pass's hold) as its time to live: one clock, Redis's, for every
worker; if Redis forgets it, the next pass simply runs at once. The beat sweep's passes are not paced (the sweep
skips a pool with a pass queued or running) but they set the gap like any pass.
"""
from __future__ import annotations

import logging

import redis as redis_lib

from app import events
from config.settings import get_settings

log = logging.getLogger(__name__)

PREFIX = "warmpool:pace"
RUNNING_HOLD_SECONDS = 10.0
"""How long a pass's `running` mark lasts if its worker dies mid-pass (its end replaces it with the gap). A pass
that outlives it only lets a second one start, which then waits on the pool's row lock: slower, never wrong."""


def key_for(pool_id: str) -> str:
    return f"{PREFIX}:{pool_id}"


def gap_after(seconds: float) -> float:
    """How long the pool's next pass waits after a pass that took `seconds` (0: no pacing)."""
    e = get_settings().engine
    if e.reconcile_pace <= 0:
        return 0.0
    return min(max(seconds, 0.0) * e.reconcile_pace, e.reconcile_pace_max_seconds)


# Take the pool's pace key for a pass about to start (ARGV[1] ms) unless it is held: by a pass still running or
# by the last pass's gap. Returns 0 if taken, else the key's time to live in ms (at least 1).
_BEGIN = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then
  redis.call('SET', KEYS[1], 'running', 'PX', ARGV[1])
  return 0
end
if ttl < 1 then return 1 end
return ttl
"""


def wait_before(pool_id: str, client: redis_lib.Redis | None = None) -> float:
    """Seconds until the pool's next pass may start (0: now, or Redis unreachable)."""
    if get_settings().engine.reconcile_pace <= 0:
        return 0.0
    try:
        ms = (client or events.redis_client()).pttl(key_for(pool_id))
    except redis_lib.RedisError:
        return 0.0
    return ms / 1000 if ms and ms > 0 else 0.0


def begin(pool_id: str, client: redis_lib.Redis | None = None) -> float:
    """A pass of the pool is about to start: 0 if it may (the pool's key now says a pass is running, so a second
    task that comes meanwhile waits instead of queueing on the pool's row lock behind this one), else seconds to
    wait: the running pass's hold or the last pass's gap, at most `reconcile_pace_max_seconds` (a running pass
    has no known end: the waiting one looks again then). 0 without pacing or without Redis."""
    e = get_settings().engine
    if e.reconcile_pace <= 0:
        return 0.0
    hold_ms = int(RUNNING_HOLD_SECONDS * 1000)
    try:
        ms = int((client or events.redis_client()).eval(_BEGIN, 1, key_for(pool_id), hold_ms))
    except redis_lib.RedisError:
        return 0.0
    return 0.0 if ms <= 0 else min(ms / 1000, max(e.reconcile_pace_max_seconds, 0.001))


def note_pass(pool_id: str, seconds: float, client: redis_lib.Redis | None = None) -> None:
    """A pass of the pool took `seconds`: hold its next one off for `gap_after(seconds)` (and let go of the
    running mark `begin` took)."""
    if get_settings().engine.reconcile_pace <= 0:
        return
    gap = gap_after(seconds)
    try:
        r = client or events.redis_client()
        if gap > 0:
            r.set(key_for(pool_id), "gap", px=max(int(gap * 1000), 1))
        else:
            r.delete(key_for(pool_id))
    except redis_lib.RedisError:
        log.warning("could not note the pace of pool %s; it expires on its own", pool_id, exc_info=True)
