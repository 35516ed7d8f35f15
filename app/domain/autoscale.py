"""The pure autoscaler: a pool's running target from its claim rate and refill time.

target = ceil(claims_per_second x refill_seconds x (1 + headroom)) + min_size, clamped to
[min_size, max_size]. Up moves happen at once (demand is waiting); down moves one step per
`cooldown` seconds, so `status.desiredSize` is a stable decision and not a flickering count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Decision:
    target: int
    changed_at: datetime


def wanted(min_size: int, max_size: int, claims_per_second: float, refill_seconds: float, headroom: float = 0.5) -> int:
    """The instantaneous target before hysteresis."""
    if max_size <= min_size:
        return max(min_size, 0)
    demand = math.ceil(max(claims_per_second, 0.0) * max(refill_seconds, 0.0) * (1.0 + headroom))
    return max(min_size, min(max_size, min_size + demand))


def decide(
    current: int, changed_at: datetime | None, now: datetime, *, min_size: int, max_size: int,
    claims_per_second: float, refill_seconds: float, headroom: float = 0.5, cooldown: float = 60.0,
) -> Decision:
    goal = wanted(min_size, max_size, claims_per_second, refill_seconds, headroom)
    current = min(max(current, min_size), max_size)
    if goal > current:
        return Decision(goal, now)
    if goal < current:
        if changed_at is None or (now - changed_at).total_seconds() >= cooldown:
            return Decision(current - 1, now)
    return Decision(current, changed_at or now)
