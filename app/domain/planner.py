"""The pure planner: from a pool's spec, its instances and the time, the actions that move it toward
its desired state. No I/O; the reconciler applies the plan.

Rules (DESIGN.md flows 2, 7, 8):
- The running side (free instances whose desired state is running, in-flight ones included) is filled to
  the target: stopped instances are started first, new ones provisioned only beyond that.
- The stopped tier is refilled behind it, up to `stopped_size`.
- Nothing is created above `max_size` (running side) or `max_size + stopped_size` (all), except a bounded
  `surge` while stale instances are being replaced.
- Stale instances (old snapshot, or a base instance idle past `idle_recycle_reserved`) are replaced:
  new ones are made first, and a ready stale instance is removed only while ready capacity stays at or
  above the target less `max_unavailable`. Rollout control (app.domain.rollout) may cap the fresh
  instances on the running side (`fresh_cap`: a canary, or a paused rotation); ready stale instances
  beyond the cap are held: they count as capacity and are not replaced.
- Soft excess above the target is removed once idle past `idle_recycle_scaled` (-1: never); anything
  above `max_size` is removed at once. Leased instances are never touched.
- With `reuse` (pod-pool semantics) a leased instance still counts toward the pool; without it, a
  taken instance is replaced at once.
- Instances whose observed state lags their desired state for longer than `stuck_after` are kicked
  (their task enqueued again: provider calls are idempotent).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.domain.states import DesiredState, InstanceState as S

# Creations one pass decides; a bigger pool fills over several passes (each landing asks for the next).
# They go out as batched provider calls and one multi-row INSERT, so a pass's cost is that INSERT; a pool of
# a few thousand is made in one pass (organization quotas, `max_creating`, bound it for tenants).
MAX_CREATES_PER_PASS = 5000


@dataclass(frozen=True)
class PoolView:
    target: int
    max_size: int
    stopped_size: int = 0
    snapshot_id: str | None = None
    surge: int = 2
    max_unavailable: int = 0
    fresh_cap: int | None = None
    reuse: bool = False
    deleting: bool = False
    creation_allowed: bool = True
    idle_recycle_reserved: int = -1
    idle_recycle_scaled: int = -1
    stuck_after: float = 30.0


@dataclass
class InstanceView:
    """One instance as the planner sees it (never changed once made). Not frozen: a pass over a pool of
    thousands builds one per instance, and a frozen dataclass's __init__ costs eight times as much."""

    id: str
    state: str
    desired_state: str
    leased: bool = False
    snapshot_id: str | None = None
    draining: bool = False
    idle_since: datetime | None = None
    ready_at: datetime | None = None
    state_changed_at: datetime | None = None


@dataclass
class Plan:
    create_running: int = 0
    create_stopped: int = 0
    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    kick: list[tuple[str, str]] = field(default_factory=list)
    """(instance id, task) pairs: provision_instance / start_instance / stop_instance / delete_instance."""

    @property
    def empty(self) -> bool:
        return not (self.create_running or self.create_stopped or self.start or self.stop or self.delete or self.kick)


def idle_lease(i: InstanceView) -> bool:
    """A leased instance running as wanted: on a pool without `reuse` it changes nothing in a plan (leased ones
    count toward the pool only with reuse, and no kick applies to it), so the reconciler need not read it."""
    return i.leased and i.state == S.RUNNING and i.desired_state == DesiredState.RUNNING


def _idle_for(i: InstanceView, now: datetime) -> float:
    if i.idle_since is None or i.state != S.RUNNING:
        return 0.0
    return (now - i.idle_since).total_seconds()


def _stale(i: InstanceView, pool: PoolView, now: datetime) -> bool:
    if pool.snapshot_id and i.snapshot_id != pool.snapshot_id:
        return True
    return pool.idle_recycle_reserved > 0 and _idle_for(i, now) >= pool.idle_recycle_reserved


def _kicks(instances: list[InstanceView], pool: PoolView, now: datetime) -> list[tuple[str, str]]:
    out = []
    stuck = timedelta(seconds=pool.stuck_after)
    for i in instances:
        if i.desired_state == DesiredState.RUNNING and i.state == S.STOPPED:
            # Should run but is observed stopped (stopped behind our back, or a start not yet under way):
            # start it now rather than after stuck_after; a start is idempotent, so a duplicate is harmless.
            out.append((i.id, "start_instance"))
            continue
        if i.state_changed_at is None or (now - i.state_changed_at) < stuck:
            continue
        if i.desired_state == DesiredState.DELETED and i.state not in (S.DELETED,):
            out.append((i.id, "delete_instance"))
        elif i.state in (S.REQUESTED, S.PROVISIONING):
            out.append((i.id, "provision_instance"))
        elif i.desired_state == DesiredState.RUNNING and i.state in (S.STOPPED, S.STARTING):
            out.append((i.id, "start_instance"))
        elif i.desired_state == DesiredState.STOPPED and i.state in (S.RUNNING, S.STOPPING):
            out.append((i.id, "stop_instance"))
        elif i.draining and not i.leased and i.desired_state == DesiredState.RUNNING and i.state == S.RUNNING:
            out.append((i.id, "recycle_instance"))  # returned to a reuse pool, its reset not yet seen
    return out


def _held(stale_ready: list[InstanceView], fresh: list[InstanceView], want: int, cap: int | None) -> list[InstanceView]:
    """The ready stale instances a capped rotation keeps serving: as many as the target needs beyond
    the fresh instances the cap allows, the most recently ready first."""
    if cap is None or not stale_ready:
        return []
    keep = want - max(len(fresh), min(cap, want))
    return sorted(stale_ready, key=lambda i: (i.ready_at is None, -(i.ready_at.timestamp() if i.ready_at else 0), i.id))[:max(keep, 0)]


def plan(pool: PoolView, instances: list[InstanceView], now: datetime) -> Plan:
    p = Plan()
    p.kick = _kicks(instances, pool, now)
    live = [i for i in instances if i.desired_state != DesiredState.DELETED and i.state not in (S.DELETED, S.DELETING)]

    for i in [i for i in live if i.state == S.FAILED]:
        p.delete.append(i.id)
    live = [i for i in live if i.state != S.FAILED]

    if pool.deleting:
        p.delete.extend(i.id for i in live if not i.leased)
        p.kick = [k for k in p.kick if k[1] == "delete_instance"]
        return p

    leased = [i for i in live if i.leased]
    free = [i for i in live if not i.leased]
    counted_leased = len(leased) if pool.reuse else 0
    want_running = max(pool.target - counted_leased, 0)

    running_side = [i for i in free if i.desired_state == DesiredState.RUNNING]
    stopped_side = [i for i in free if i.desired_state == DesiredState.STOPPED]
    fresh_running = [i for i in running_side if not _stale(i, pool, now)]
    stale_running = [i for i in running_side if _stale(i, pool, now)]
    fresh_stopped = [i for i in stopped_side if not (pool.snapshot_id and i.snapshot_id != pool.snapshot_id)]
    stale_stopped = [i for i in stopped_side if i not in fresh_stopped]

    # Stopped instances on an old snapshot are not capacity, nor are stale ones not yet ready:
    # replace them (removing them costs no ready capacity).
    p.delete.extend(i.id for i in stale_stopped)
    p.delete.extend(i.id for i in stale_running if i.state != S.RUNNING)
    stale_running = [i for i in stale_running if i.state == S.RUNNING]
    held = _held(stale_running, fresh_running, want_running, pool.fresh_cap)
    held_ids = {i.id for i in held}
    stale_running = [i for i in stale_running if i.id not in held_ids]

    deficit = want_running - len(fresh_running) - len(held)
    if deficit > 0:
        # Backfill from the stopped tier first: a start takes seconds, a create minutes.
        startable = sorted(fresh_stopped, key=lambda i: (i.state != S.STOPPED, i.id))
        for i in startable[:deficit]:
            p.start.append(i.id)
        fresh_stopped = [i for i in fresh_stopped if i.id not in p.start]
        deficit -= len(p.start)
        cap = pool.max_size + (pool.surge if stale_running else 0)
        occupied = len(fresh_running) + len(p.start) + len(stale_running) + len(held) + counted_leased
        room = cap - occupied
        if pool.creation_allowed and deficit > 0 and room > 0:
            p.create_running = min(deficit, room, MAX_CREATES_PER_PASS)
    elif deficit < 0:
        hard_over = len(fresh_running) + len(stale_running) + len(held) + counted_leased - pool.max_size
        # Not-yet-ready ones go first (no ready capacity lost), then the longest idle.
        order = sorted(fresh_running, key=lambda i: (i.state == S.RUNNING, -_idle_for(i, now), i.id))
        removable: list[InstanceView] = []
        for i in order:
            if len(removable) >= -deficit:
                break
            forced = len(removable) < hard_over
            idle_ok = pool.idle_recycle_scaled >= 0 and _idle_for(i, now) >= pool.idle_recycle_scaled
            if forced or i.state != S.RUNNING or idle_ok:
                removable.append(i)
        room_stopped = pool.stopped_size - len(fresh_stopped)
        for i in removable:
            if room_stopped > 0 and i.state == S.RUNNING:
                p.stop.append(i.id)
                room_stopped -= 1
                fresh_stopped.append(i)
            else:
                p.delete.append(i.id)

    # Rotation: remove stale running instances while ready capacity stays at the target (less what
    # max_unavailable allows); held ones stay.
    fresh_ready = sum(1 for i in fresh_running if i.state == S.RUNNING and i.id not in p.delete and i.id not in p.stop)
    stale_ready = stale_running
    ready_total = fresh_ready + len(stale_ready) + len(held)
    floor = want_running - pool.max_unavailable
    for i in sorted(stale_ready, key=lambda i: (i.ready_at or now, i.id)):
        if ready_total - 1 >= floor:
            p.delete.append(i.id)
            ready_total -= 1

    # The stopped tier behind the running side.
    stopped_deficit = pool.stopped_size - len(fresh_stopped)
    if stopped_deficit > 0 and pool.creation_allowed:
        total_alive = len([i for i in free if i.id not in set(p.delete)]) + counted_leased + p.create_running
        room = pool.max_size + pool.stopped_size + (pool.surge if stale_running or held else 0) - total_alive
        p.create_stopped = max(0, min(stopped_deficit, room, MAX_CREATES_PER_PASS - p.create_running))
    elif stopped_deficit < 0:
        extra = sorted((i for i in fresh_stopped if i.id not in p.stop), key=lambda i: i.id)[: -stopped_deficit]
        p.delete.extend(i.id for i in extra)

    p.delete = list(dict.fromkeys(p.delete))
    planned = set(p.delete) | set(p.start) | set(p.stop)
    p.kick = [k for k in p.kick if k[0] not in planned]
    return p
