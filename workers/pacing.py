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

The gap lives in Redis as a key whose time to live is the gap (one clock, Redis's, for every worker); if Redis
forgets it, the next pass simply runs at once. The beat sweep's passes are not paced (the sweep skips a pool
with a pass queued or running) but they set the gap like any pass.
"""
from __future__ import annotations

import logging

import redis as redis_lib

from app import events
from config.settings import get_settings

log = logging.getLogger(__name__)

PREFIX = "warmpool:pace"


def key_for(pool_id: str) -> str:
    return f"{PREFIX}:{pool_id}"


def gap_after(seconds: float) -> float:
    """How long the pool's next pass waits after a pass that took `seconds` (0: no pacing)."""
    e = get_settings().engine
    if e.reconcile_pace <= 0:
        return 0.0
    return min(max(seconds, 0.0) * e.reconcile_pace, e.reconcile_pace_max_seconds)


def wait_before(pool_id: str, client: redis_lib.Redis | None = None) -> float:
    """Seconds until the pool's next pass may start (0: now, or Redis unreachable)."""
    if get_settings().engine.reconcile_pace <= 0:
        return 0.0
    try:
        ms = (client or events.redis_client()).pttl(key_for(pool_id))
    except redis_lib.RedisError:
        return 0.0
    return ms / 1000 if ms and ms > 0 else 0.0


def note_pass(pool_id: str, seconds: float, client: redis_lib.Redis | None = None) -> None:
    """A pass of the pool took `seconds`: hold its next one off for `gap_after(seconds)`."""
    gap = gap_after(seconds)
    if gap <= 0:
        return
    try:
        (client or events.redis_client()).set(key_for(pool_id), 1, px=max(int(gap * 1000), 1))
    except redis_lib.RedisError:
        log.warning("could not note the pace of pool %s; its next pass runs at once", pool_id, exc_info=True)
