"""The event applier's unit of work: a batch of instance events written in a few statements, with the
outcome of applying them one at a time in stream order (DESIGN.md flow 4).

- A state event is a compare-and-set through the instance machine (transitions.INSTANCE), decided on the
  instance's last applied sequence (`event_seq`, issued by the database): a newer observation applies, an
  older one only if it moves the instance forward within one leg of its lifecycle (states.progresses);
  duplicates and stale events change nothing.
- Every instance the batch names is read in one SELECT; each event is decided in stream order on what the
  events before it left, and the moves are written in rounds (Machine.move_many: one UPDATE per round and
  shape of change): round k holds each instance's (k+1)-th move, compared with the state and sequence its
  k-th left. A fill's provisioning-then-running is two rounds however the events interleave. Events
  that change nothing cost no write.
- What a move sets off (lost leases ended, reservations served, failures counted, reconciles asked for)
  runs once the batch is written, in stream order; reservations are looked up once per batch and offered
  only instances still ready and free by then (one that became ready and failed in the same batch is not).
- Each pool is locked once (in id order, so concurrent appliers cannot deadlock) and recounted once (one
  query for all of them); its after-commit effects (reconcile, wake-up) are deferred once per batch.
- Leased and returned events only ask their pool for a pass (one per batch), which recounts it; they are
  published once per pool and burst (events.one_per_pool).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, select

from app.domain import events as ev
from app.domain import effects, epochs, leases, reservations, transitions
from app.domain.events import pool_channel
from app.domain.instances import note_failure, note_success, recount, state_counts
from app.domain.pools import bump_status, request_reconcile
from app.domain.states import LOST, DesiredState, InstanceState as S, progresses, reachable
from app.models import Instance, Pool, utcnow

# What a decision reads of an instance (and its runner's epoch), and what a move returns of the columns others
# write (read after the write, under its row lock: a lease taken meanwhile is seen, and ended if the instance
# was lost).
_READ = (Instance.id, Instance.state, Instance.event_seq, Instance.address, Instance.failure_count,
         Instance.seen_epoch, epochs.runner_epoch_of(Instance.pool_id).label("runner_epoch"))
_AFTER = (Instance.state, Instance.lease_id, Instance.draining, Instance.desired_state, Instance.boot_ms,
          Instance.requested_at, Instance.ready_at)
# Observed states after which the planner may have something new to do.
_REPLAN = frozenset({S.RUNNING, S.STOPPED, S.FAILED, S.DELETED})
# Instances on their way to running or stopped: each will land (or fail) with an event of its own.
_IN_FLIGHT = frozenset({S.REQUESTED, S.PROVISIONING, S.STARTING})


def decide(row: dict[str, Any], event: Any, now: datetime) -> tuple[str | None, dict[str, Any]] | None:
    """Pure: what a state event does to an instance last seen as `row` (its runner's current epoch as
    `runner_epoch`). None: nothing (stale, duplicate or impossible); else (the new state, or None if it
    stays, and the columns to write)."""
    previous, state = row["state"], event.state
    if event.seq <= row["event_seq"] and not progresses(previous, state):
        return None  # older than what was applied, and a turn (or nothing): it would undo a newer observation
    values: dict[str, Any] = {"event_seq": max(event.seq, row["event_seq"])}
    if event.ref:
        values["provider_ref"] = event.ref
    if state != previous and reachable(previous, state):
        if state == S.RUNNING:
            # Seen running at the event's epoch, or the current one (app.domain.epochs). The current epoch was
            # read with the batch: a bump committed since makes it stale, which only keeps the claim away.
            values.update(ready_at=now, idle_since=now, address=event.address or row["address"],
                          seen_epoch=event.epoch if event.epoch is not None else row["runner_epoch"])
            if event.boot_ms is not None:
                values["boot_ms"] = event.boot_ms
        elif state == S.STOPPED:
            values.update(address="", draining=False, idle_since=None)
        elif state == S.FAILED:
            values.update(last_error=event.message[:2000], failure_count=row["failure_count"] + 1)
        return state, values
    if state == previous and event.address:
        values["address"] = event.address
    if state == previous == S.RUNNING and event.epoch is not None and event.epoch > row["seen_epoch"]:
        values["seen_epoch"] = event.epoch  # seen running again, in a newer epoch (app.domain.epochs)
    return None, values  # no state change: only the sequence (and the reference, the address) move on


class LostRace(RuntimeError):
    """A move of the batch lost its compare-and-set while later moves of the same instance were decided on
    it. The pool locks make this all but impossible (only appliers write observed state, one pool at a
    time); the applier then applies the batch again one event at a time, where a lost race simply means
    the other writer's event won."""


class _Batch:
    def __init__(self, session: Session, pools: dict[str, Pool], now: datetime) -> None:
        self.session, self.pools, self.now = session, pools, now
        self.rows: dict[str, dict[str, Any]] = {}
        self.rounds: list[dict[str, transitions.Move]] = []  # round k: each instance's (k+1)-th move
        self.depth: dict[str, int] = {}  # instance -> its moves in the rounds so far
        self.steps: list[tuple[Any, Pool, int]] = []  # events to follow up, in stream order, with their round
        self.ready: list[tuple[str, Pool]] = []  # instances that became ready and free: reservations may want them
        self.changed: set[str] = set()
        self.replan: dict[str, Pool] = {}  # pools the planner may have something new for: asked once per batch
        # per pool, each state change in stream order: (change in instances in flight, whether it came up running)
        self.flight: dict[str, list[tuple[int, bool]]] = {}
        self.applied = 0

    def load(self, instance_ids: set[str]) -> None:
        if not instance_ids:
            return
        ids = sorted(instance_ids)
        if self.session.get_bind().dialect.name == "postgresql":  # one parameter, one prepared statement
            wanted = Instance.id.in_(sa.select(sa.func.jsonb_array_elements_text(
                sa.cast(sa.bindparam("ids", json.dumps(ids), type_=sa.String), JSONB))).scalar_subquery())
        else:
            wanted = Instance.id.in_(ids)
        for r in self.session.execute(sa.select(*_READ).where(wanted)):
            self.rows[r.id] = {"state": r.state, "event_seq": r.event_seq, "address": r.address,
                               "failure_count": r.failure_count, "seen_epoch": r.seen_epoch,
                               "runner_epoch": r.runner_epoch}

    def add(self, event: Any) -> None:
        pool = self.pools.get(event.pool_id)
        if pool is None:
            return
        if event.kind in (ev.KIND_RECYCLED, ev.KIND_SEEN):  # written at once: it compares with what earlier
            self.flush()                                         # events wrote
            if _back_in_service(event, pool, session=self.session, now=self.now):
                self.applied += 1
                self.changed.add(pool.id)
                row = self.rows.get(event.instance_id)
                if event.kind == ev.KIND_SEEN and row is not None:  # what later decisions of the batch compare with
                    row["seen_epoch"] = max(row["seen_epoch"], event.epoch)
            return
        if event.kind != ev.KIND_STATE:
            self.steps.append((event, pool, -1))
            return
        row = self.rows.get(event.instance_id)
        decision = decide(row, event, self.now) if row is not None else None
        if row is None or decision is None:
            return
        to, values = decision
        k = self.depth.get(event.instance_id, 0)
        self.depth[event.instance_id] = k + 1
        if k == len(self.rounds):
            self.rounds.append({})
        self.rounds[k][event.instance_id] = transitions.Move(
            event.instance_id, expect=row["state"], to=to, where={"event_seq": row["event_seq"]}, values=values)
        row.update(values, **({"state": to} if to else {}))  # what the next decision of this batch sees
        self.steps.append((event, pool, k))

    def flush(self) -> None:
        """Write the moves round by round (an instance's second move compares with what its first wrote),
        then follow up each event, in stream order."""
        rounds, steps = self.rounds, self.steps
        self.rounds, self.steps, self.depth = [], [], {}
        written: list[dict[str, Any]] = []
        for k, moves in enumerate(rounds):
            moved = transitions.INSTANCE.move_many(self.session, list(moves.values()), now=self.now, returning=_AFTER)
            lost = {i for i in moves if i not in moved}
            if any(i in later for later in rounds[k + 1:] for i in lost):
                raise LostRace(f"instances {sorted(lost)} were written by another applier during this batch")
            self.load(lost)  # the winner's event stands; later decisions of this batch read what it wrote
            written.append(moved)
        for event, pool, k in steps:
            if k < 0:
                if event.kind in ev.POOL_ONLY:
                    # Backfill what was taken, recycle what came back: one ask per pool and batch (the pass
                    # reads the whole pool), however many leases the batch carries. The instance the event
                    # names is not read (a burst publishes one per pool). Nor is the pool recounted here:
                    # the pass this asks for recounts it and announces the change (app.domain.reconciler),
                    # so a lease storm costs one recount per pass, not one more per applier batch.
                    self.replan[pool.id] = pool
                    self.applied += 1
                    continue
                if not _pool_event(event, pool, now=self.now):
                    continue
                self.applied += 1
                self.changed.add(pool.id)
                continue
            after = written[k].get(event.instance_id)
            move = rounds[k][event.instance_id]
            if after is not None and move.to is not None:
                self.flight.setdefault(pool.id, []).append(
                    (int(move.to in _IN_FLIGHT) - int(move.expect in _IN_FLIGHT), move.to == S.RUNNING))
                self._moved(event, pool, after)
                self.applied += 1
                self.changed.add(pool.id)

    def _moved(self, event: Any, pool: Pool, inst: Any) -> None:
        """What an instance's new observed state sets off (its row `inst` as the move left it)."""
        if inst.state in (S.RUNNING, S.STOPPED):
            note_success(pool)
        if inst.state == S.RUNNING:
            _learn_refill(pool, inst, self.now)
            if inst.lease_id is None and not inst.draining and inst.desired_state == DesiredState.RUNNING:
                self.ready.append((event.instance_id, pool))
        if inst.state == S.FAILED and inst.ready_at is None:
            # It never came up (an image that does not boot): a failed creation, backed off like a failed
            # call, or the planner would replace it at once, forever.
            note_failure(pool, event.message or "instance failed before it was ready", now=self.now)
        elif inst.state == S.FAILED:
            pool.failure_message = (event.message or "instance failed")[:2000]
            bump_status(pool)
        if inst.state in LOST and inst.lease_id is not None:
            leases.end_for_lost_instance(event.instance_id, session=self.session, now=self.now)
        if inst.state in _REPLAN and inst.state != S.RUNNING:  # coming up running: see _landing_asks
            self.replan[pool.id] = pool

    def serve_reservations(self) -> None:
        """Hand newly ready instances to their pools' oldest waiting reservations: one query finds the pools
        with any waiting, and only their instances are offered (each offer re-checks that it is ready)."""
        if not self.ready:
            return
        pool_ids = sorted({pool.id for _, pool in self.ready})
        waiting = set(self.session.execute(
            sa.select(reservations.Reservation.pool_id)
            .where(reservations.Reservation.pool_id.in_(pool_ids), reservations.WAITING).distinct()
        ).scalars())
        for instance_id, pool in self.ready:
            if pool.id in waiting:
                reservations.assign_ready_instance(instance_id, session=self.session)


def apply(batch: list[Any], *, session: Session, now: datetime | None = None) -> int:
    """Apply a batch of InstanceEvents in one transaction (see the module docstring). Idempotent: a
    duplicate or stale event changes nothing. Returns how many events changed something."""
    return _apply(batch, _lock(batch, session=session, wait=True), session=session, now=now)


def apply_free(batch: list[Any], *, session: Session, now: datetime | None = None) -> set[str]:
    """`apply` for the events of the pools no other transaction holds right now (a reconcile pass holds its
    pool's row for the whole pass, up to half a second on a pool of thousands); returns the pools left out,
    whose events the caller applies later (workers.events.Applier holds them back and retries them). So one
    busy pool holds up neither the other pools' events nor the reservations they serve, another
    organization's included."""
    locked = _lock(batch, session=session, wait=False)
    busy = {e.pool_id for e in batch if e.pool_id not in locked}
    if busy:  # a pool that is gone is not busy: its events change nothing wherever they are applied
        busy = set(session.execute(sa.select(Pool.id).where(Pool.id.in_(sorted(busy)))).scalars())
    _apply([e for e in batch if e.pool_id not in busy], locked, session=session, now=now)
    return busy


def _lock(batch: list[Any], *, session: Session, wait: bool) -> dict[str, Pool]:
    """The batch's pools, locked in id order (concurrent appliers cannot deadlock); `wait` False: only those
    no other transaction holds (SKIP LOCKED)."""
    pool_ids = sorted({e.pool_id for e in batch})
    # NO KEY UPDATE: the applier's lock must not hold up the foreign-key checks of leases on these pools.
    return {p.id: p for p in session.exec(select(Pool).where(Pool.id.in_(pool_ids)).order_by(Pool.id)
                                          .with_for_update(key_share=True, skip_locked=not wait)).all()}


def _apply(batch: list[Any], locked: dict[str, Pool], *, session: Session, now: datetime | None) -> int:
    now = now or utcnow()
    run = _Batch(session, locked, now)
    with session.no_autoflush:  # the pools are written once, at commit
        run.load({e.instance_id for e in batch if e.kind == ev.KIND_STATE and e.pool_id in locked})
        for event in batch:
            run.add(event)
        run.flush()
        run.serve_reservations()
        # Only pools an event changed: their counters cannot have moved otherwise (a reconcile pass recounts
        # its pool itself, and a lease or a return asks for one: see flush).
        counts = state_counts(sorted(run.changed), session=session)
        for pool_id, changes in run.flight.items():
            if _landing_asks(locked[pool_id], changes, counts.get(pool_id, [])):
                run.replan[pool_id] = locked[pool_id]
        for pool in run.replan.values():
            request_reconcile(pool, session=session)
        for pool_id in sorted(run.changed):
            recount(locked[pool_id], session=session, rows=counts.get(pool_id, []))
            pool = locked[pool_id]
            effects.defer(session, "notify", channel=pool_channel(pool.organization_id, pool_id), message=pool.phase)
    return run.applied


def _landing_asks(pool: Pool, changes: list[tuple[int, bool]], rows: list[Any]) -> bool:
    """Whether instances coming up running ask the planner for a pass: each landing of a fill would otherwise
    ask for one, and a pass reads the whole pool (a pool of thousands filled with a pass per applier batch).
    A landing asks when nothing else of the pool is in flight right after it (the last of a wave: the planner
    sees what the wave left), when the pool is flagged (a pass is owed: the reconciler flags a pool its quota,
    its per-pass cap or a creation backoff held back, so each landing of a throttled fill asks for the next
    wave, as before), or when the pool is being deleted. In flight right after each change is counted back from
    `rows` (app.domain.instances.state_counts, after the batch), so any split of the events into batches asks
    as applying them one at a time would. Failures, stops and deletions always ask (`_moved`)."""
    if not any(running for _, running in changes):
        return False
    if pool.needs_reconcile or pool.deleted_at is not None:
        return True
    in_flight = sum(count for state, *_, count in rows if state in _IN_FLIGHT)
    for delta, running in reversed(changes):
        if running and in_flight == 0:
            return True
        in_flight -= delta
    return False


def _pool_event(event: Any, pool: Pool, *, now: datetime) -> bool:
    """An event about the pool rather than an instance's state (leased and returned aside: _Batch.flush);
    True if it changed something."""
    if event.kind == ev.KIND_FAILURE:
        note_failure(pool, event.message or "provider call failed", now=now)
        return True
    if event.kind == ev.KIND_SUCCESS:
        note_success(pool)
        return True
    return event.kind == ev.KIND_POOL  # a kind this applier does not know changes nothing


def _back_in_service(event: Any, pool: Pool, *, session: Session, now: datetime) -> bool:
    """The instance may be handed out again: a returned instance of a `reuse` pool was reset by its
    provider (compare-and-set on the recycling marks leases.end left: draining, free, wanted running,
    running), or a re-list saw it running in its runner's new epoch (app.domain.epochs.confirm). A waiting
    reservation may take it at once."""
    instance_id = event.instance_id
    if event.kind == ev.KIND_SEEN:
        if event.epoch is None or not epochs.confirm(instance_id, event.epoch, session=session):
            return False
        reservations.assign_ready_instance(instance_id, session=session)
        return True
    back = session.execute(
        sa.update(Instance).where(
            Instance.id == instance_id, Instance.draining == sa.true(), Instance.lease_id.is_(None),
            Instance.desired_state == str(DesiredState.RUNNING), Instance.state == str(S.RUNNING),
        ).values(draining=False, idle_since=now).execution_options(synchronize_session=False)
    ).rowcount
    if back:
        reservations.assign_ready_instance(instance_id, session=session)
        request_reconcile(pool, session=session)
    return bool(back)


def _learn_refill(pool: Pool, inst: Any, now: datetime) -> None:
    """Exponentially weighted refill time (request or start -> running), the autoscaler's input."""
    began = inst.requested_at if inst.boot_ms is None else now - timedelta(milliseconds=inst.boot_ms)
    seconds = max((now - began).total_seconds(), 0.0)
    pool.refill_seconds = seconds if pool.refill_seconds <= 0 else 0.7 * pool.refill_seconds + 0.3 * seconds
