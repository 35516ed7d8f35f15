"""Scheduled sizing: a pool's cron entries (app.domain.cron decides which holds), stored, applied when set
and by beat when the next one fires.

- PUT replaces the list (an empty list removes the schedule) and applies the entry that holds now at
  once ("from then on" includes now); if the pool's rules or quota refuse that entry, the PUT fails.
- Beat (`apply_due_schedules`) reads only schedules whose `next_fire_at` has come (an index probe) and
  applies each in a unit of work of its own; the autoscaler then works inside the new min/max.
- An entry is applied once per firing (`applied_fired_at`), so a PATCH made after it holds until the next
  entry fires, as with a cloud's scheduled actions.
- Sizes go through the pool kind's rules and the organization's quota (pool_admin.set_sizes). A firing
  those refuse is recorded in `last_error` (and logged); the pool keeps its sizes until the next one.
- `desired_size` sets the autoscaler's running target at the firing (clamped to [min, max]); it then
  moves with demand as usual, one cooldown later at the earliest when going down.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from app.domain import cron, pool_admin, pools
from app.domain.errors import DomainError, FailedPrecondition, InvalidArgument
from app.domain.states import PoolPhase
from app.models import Pool, PoolSchedule, utcnow

log = logging.getLogger(__name__)


def entries_of(row: PoolSchedule | None) -> list[cron.Entry]:
    return [cron.Entry(**e) for e in (row.entries if row else [])]


def get_schedule(org_id: str, pool_id: str, *, session: Session) -> tuple[Pool, PoolSchedule | None]:
    pool = pools.get_pool(org_id, pool_id, session=session)
    return pool, session.get(PoolSchedule, pool.id)


def check_entries(pool: Pool, entries: list[cron.Entry], now: datetime) -> list[cron.Entry]:
    """Each entry well formed, firing some day, and within the pool kind's size bounds."""
    if len(entries) > cron.MAX_ENTRIES:
        raise InvalidArgument(f"a schedule has at most {cron.MAX_ENTRIES} entries, got {len(entries)}")
    checked = []
    for n, entry in enumerate(entries):
        try:
            checked.append(cron.check_entry(entry, now))
            pool_admin.check_kind_sizes(pool, entry.min_size, entry.max_size)
        except InvalidArgument as exc:
            raise InvalidArgument(f"entries[{n}]: {exc.message}") from None
    return checked


def put_schedule(org_id: str, pool_id: str, entries: list[cron.Entry], *, session: Session,
                 now: datetime | None = None) -> tuple[Pool, PoolSchedule | None]:
    """Replace the pool's schedule (empty: remove it) and apply the entry that holds now."""
    now = now or utcnow()
    pool = pools.get_pool(org_id, pool_id, session=session, for_update=True)
    if pool.deleted_at is not None:
        raise FailedPrecondition(f"pool {pool_id} is being deleted (phase {pool.phase}) and cannot be changed")
    checked = check_entries(pool, entries, now)
    row = session.get(PoolSchedule, pool.id)
    if not checked:
        if row is not None:
            session.delete(row)
            session.flush()
        return pool, None
    if row is None:
        row = PoolSchedule(pool_id=pool.id, organization_id=pool.organization_id)
    row.entries = [asdict(e) for e in checked]
    row.applied_index = row.applied_fired_at = None  # a new list: whatever holds now is applied afresh
    row.updated_at = now
    session.add(row)
    pool = _apply(pool, row, now, session=session, strict=True)
    return pool, row


def _apply(pool: Pool, row: PoolSchedule, now: datetime, *, session: Session, strict: bool = False) -> Pool:
    """Apply the holding entry if it fired after the one last applied; always set the next look. With
    `strict` (a PUT) a refused entry fails the call instead of being recorded."""
    entries = entries_of(row)
    window = cron.holding(entries, now)
    row.next_fire_at = cron.next_change(entries, now)
    if window is not None and (row.applied_fired_at is None or window.fired_at > row.applied_fired_at):
        row.applied_index, row.applied_fired_at = window.index, window.fired_at
        try:
            with session.begin_nested():  # a refused firing leaves the pool as it was, and is recorded
                pool = _size(pool, window.entry, now, session=session)
            row.last_error = ""
        except DomainError as exc:
            if strict:
                exc.message = f"entries[{window.index}] holds now and cannot be applied: {exc.message}"
                raise
            row.last_error = f"{window.fired_at.isoformat()} entries[{window.index}] ({window.entry.cron}): {exc.message}"
            log.warning("pool %s: scheduled sizing not applied: %s", pool.id, row.last_error)
    session.add(row)
    return pool


def _size(pool: Pool, entry: cron.Entry, now: datetime, *, session: Session) -> Pool:
    pool = pool_admin.set_sizes(pool, entry.min_size, entry.max_size, session=session)
    if entry.desired_size is not None:
        target = min(max(entry.desired_size, pool.min_size), pool.max_size)
        if target != pool.desired_size:
            log.info("pool %s: scheduled running target %d -> %d", pool.id, pool.desired_size, target)
            pool.desired_size = target
            # The autoscaler's cooldown counts from here: the scheduled target holds that long at least.
            pool.autoscale = {**(pool.autoscale or {}), "changed_at": now.isoformat()}
            pools.bump_status(pool)
            pools.request_reconcile(pool, session=session)
    return pool


def due_schedules(now: datetime, limit: int, *, session: Session) -> list[str]:
    """Bounded and read-only: ids of the pools whose schedule has a firing due, oldest first."""
    return list(session.exec(
        select(PoolSchedule.pool_id).where(col(PoolSchedule.next_fire_at).is_not(None), col(PoolSchedule.next_fire_at) <= now)
        .order_by(PoolSchedule.next_fire_at).limit(limit)
    ).all())


def apply_due(pool_id: str, *, session: Session, now: datetime | None = None) -> bool:
    """One pool's due firing, under the pool's row lock (checked again after locking); True if applied.
    A deleted pool's schedule is removed."""
    now = now or utcnow()
    pool = session.exec(select(Pool).where(Pool.id == pool_id).with_for_update()).first()
    row = session.get(PoolSchedule, pool_id)
    if row is None or row.next_fire_at is None or row.next_fire_at > now:
        return False
    if pool is None or pool.deleted_at is not None or pool.phase == PoolPhase.DELETED:
        session.delete(row)
        return False
    before = row.applied_fired_at
    _apply(pool, row, now, session=session)
    return row.applied_fired_at != before


def schedule_view(row: PoolSchedule | None, now: datetime | None = None) -> dict[str, Any]:
    """What GET shows: the entries, the one that holds now, the last one applied, the next firing."""
    now = now or utcnow()
    entries = entries_of(row)
    window = cron.holding(entries, now) if entries else None
    return {
        "entries": [asdict(e) for e in entries],
        "holding": None if window is None else {"index": window.index, "fired_at": window.fired_at},
        "applied": None if row is None or row.applied_fired_at is None
        else {"index": row.applied_index, "fired_at": row.applied_fired_at},
        "next_fire_at": row.next_fire_at if row else None,
        "last_error": row.last_error if row else "",
    }
