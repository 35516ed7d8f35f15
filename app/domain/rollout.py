"""Rollout control for snapshot rotation, as a pure function: from the pool's rollout policy, the state
the last pass left, what the instances look like now and the time, the next state and how far the
planner may rotate. No I/O; the reconciler stores the state and hands the limit to the planner.

Stages of one rotation (a rotation starts when the pool's snapshot changes while instances on another
snapshot are alive, and is complete when none are left):
- `canary`: at most `canary` fresh instances are made while the stale ones keep serving;
- `baking`: the canary is ready; rotation waits `bake_seconds` (or, with a negative bake time, for the
  operator's resume) before it goes on;
- `rolling`: stale instances are replaced, `max_surge` above max_size and `max_unavailable` below the
  target at a time (the planner enforces both);
- `complete`.
`paused` (the operator's) freezes the rotation where it is, in any stage, until resumed: no new fresh
instances beyond those already there, and no stale instance removed.

A rotation that makes no progress (no fresh instance became ready and no stale one went away) for
`progress_deadline_seconds` while it is meant to move (not paused, not baking) is `stalled`: the pool
turns DEGRADED with the reason, and, since stale instances are only removed as fresh ones become ready
(within max_unavailable), the old ones keep serving. Progress clears it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CANARY, BAKING, ROLLING, COMPLETE = "canary", "baking", "rolling", "complete"


class Policy(BaseModel):
    """A pool's rollout policy. `max_surge` is stored in the pool's `rotation_max_surge` column (it
    predates the rest); the others in its `rollout_policy`."""

    model_config = ConfigDict(extra="forbid")

    max_surge: int = Field(2, ge=0, le=1000, description="instances made above max_size while rotating")
    max_unavailable: int = Field(0, ge=0, le=1000, description="ready capacity the rotation may take below the target")
    canary: int = Field(0, ge=0, le=1000, description="fresh instances made first; 0: no canary")
    bake_seconds: int = Field(-1, ge=-1, le=7 * 86400,
                              description="wait after the canary is ready; -1: wait for the operator's resume")
    progress_deadline_seconds: int = Field(600, ge=1, le=7 * 86400,
                                           description="no progress for this long makes the pool DEGRADED")


@dataclass(frozen=True)
class Counts:
    """What the reconciler sees of the pool's free running side this pass."""

    want: int  # the running target the planner fills (leased instances already taken off with reuse)
    stale_live: int  # instances alive on another snapshot (either tier)
    fresh_ready: int  # running, unleased instances on the pool's snapshot
    fresh_live: int  # fresh instances on the running side, in flight included


@dataclass
class Decision:
    state: dict[str, Any]
    fresh_cap: int | None = None
    """How many fresh instances the running side may hold while stale ones remain; None: no limit."""
    stalled: str = ""
    changed: bool = field(default=False)


def _ts(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def step(policy: Policy, state: dict[str, Any] | None, *, snapshot_id: str | None, counts: Counts,
         now: datetime) -> Decision:
    before = dict(state or {})
    s = dict(before)
    paused = bool(s.get("paused"))
    if s.get("snapshot") != snapshot_id:
        # A new rotation (or the first look at this pool). A rollback skips the canary: it goes back
        # to what was serving before.
        canary = policy.canary > 0 and counts.stale_live > 0 and not s.get("rollback_to") == snapshot_id
        s = {"snapshot": snapshot_id, "stage": CANARY if canary else ROLLING, "paused": paused,
             "started_at": now.isoformat(), "progress_at": now.isoformat(),
             "fresh_ready": counts.fresh_ready, "stale_live": counts.stale_live}
    if counts.stale_live == 0:
        s.update(stage=COMPLETE, stalled="")
        s.pop("canary_ready_at", None)
        return _decided(before, s, None)

    if counts.fresh_ready > int(s.get("fresh_ready", 0)) or counts.stale_live < int(s.get("stale_live", counts.stale_live)):
        s["progress_at"] = now.isoformat()
    s["fresh_ready"], s["stale_live"] = counts.fresh_ready, counts.stale_live

    stage = s.get("stage", ROLLING)
    if stage == COMPLETE:  # a pool that finished and then found stale instances (a rollback, a restore)
        stage = ROLLING
    if stage == CANARY and counts.fresh_ready >= min(policy.canary, counts.want):
        stage = BAKING
        s["canary_ready_at"] = now.isoformat()
        s["progress_at"] = now.isoformat()
    if stage == BAKING and policy.bake_seconds >= 0 and not paused:
        ready_at = _ts(s.get("canary_ready_at")) or now
        if (now - ready_at).total_seconds() >= policy.bake_seconds:
            stage = ROLLING
            s["progress_at"] = now.isoformat()
    s["stage"] = stage

    if paused:
        cap: int | None = counts.fresh_live
    elif stage in (CANARY, BAKING):
        cap = policy.canary
    else:
        cap = None

    stalled = ""
    if not paused and stage in (CANARY, ROLLING):
        since = _ts(s.get("progress_at")) or now
        idle = (now - since).total_seconds()
        if idle >= policy.progress_deadline_seconds:
            stalled = (f"rollout to snapshot {snapshot_id} made no progress for {int(idle)} s "
                       f"(deadline {policy.progress_deadline_seconds} s); the previous instances keep serving")
    s["stalled"] = stalled
    return _decided(before, s, cap)


def _decided(before: dict[str, Any], after: dict[str, Any], cap: int | None) -> Decision:
    return Decision(state=after, fresh_cap=cap, stalled=after.get("stalled", ""), changed=after != before)


def pause(state: dict[str, Any] | None) -> dict[str, Any]:
    return {**(state or {}), "paused": True}


def resume(state: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """Unpause and, when the canary waits for the operator's go, give it; the deadline starts over."""
    s = {**(state or {}), "paused": False, "stalled": ""}
    if s.get("stage") == BAKING:
        s["stage"] = ROLLING
    s["progress_at"] = now.isoformat()
    return s


def rolled_back(state: dict[str, Any] | None, to_snapshot: str) -> dict[str, Any]:
    """The state after a rollback: unpaused, and the next rotation (back to `to_snapshot`) skips the canary."""
    return {"paused": False, "rollback_to": to_snapshot, "snapshot": None}
