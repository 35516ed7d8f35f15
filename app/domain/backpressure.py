"""Backpressure hints: how long a caller refused for want of a ready instance should wait before it asks
again, estimated from what the pool has measured (pure; no I/O).

A pool learns its refill time (request to ready, an exponentially weighted mean kept by the event
applier in `Pool.refill_seconds`). A refusal says: retry after about one refill, plus whatever is left
of a creation back-off the pool is in (a provider that keeps failing), so a crowd of callers comes
back when an instance can be there rather than in a stampede at once. Bounded to [1, 300] s and rounded
up to whole seconds, as HTTP's Retry-After wants them.
"""
from __future__ import annotations

import math
from datetime import datetime

UNMEASURED_REFILL_SECONDS = 5.0  # a pool that has never refilled yet
MIN_SECONDS, MAX_SECONDS = 1, 300


def retry_after(refill_seconds: float, *, now: datetime, next_attempt_at: datetime | None = None) -> int:
    wait = refill_seconds if refill_seconds > 0 else UNMEASURED_REFILL_SECONDS
    if next_attempt_at is not None and next_attempt_at > now:
        wait += (next_attempt_at - now).total_seconds()
    return int(min(max(math.ceil(wait), MIN_SECONDS), MAX_SECONDS))


def of_pool(pool: object, now: datetime) -> int:
    """`retry_after` for a Pool row."""
    return retry_after(float(getattr(pool, "refill_seconds", 0.0) or 0.0), now=now,
                       next_attempt_at=getattr(pool, "next_attempt_at", None))
