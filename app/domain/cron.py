"""Pure schedule arithmetic: which sizing entry holds at an instant, and when the next one fires (no I/O).

An entry is a 5-field cron expression read in an IANA timezone; the entry whose latest firing is the most
recent at `now` holds from then on. Cron fields are wall-clock times, so daylight saving time is handled
the way cron users expect (the rule robfig/cron and Kubernetes CronJobs follow):

- a wall-clock time the clock skips (spring forward, e.g. 02:30 in Europe/Berlin on the last Sunday of
  March) fires once, at the instant the clock jumps over it (03:00 local);
- a wall-clock time the clock passes twice (fall back, 02:30 on the last Sunday of October) fires once,
  at its first occurrence.

Entries firing at the same instant: the later one in the list wins. Instants are timezone-aware UTC.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from croniter import croniter
from croniter.croniter import CroniterError

from app.domain.errors import InvalidArgument

MAX_ENTRIES = 50
MAX_CRON_LENGTH = 100
# Plain cron only: numbers, ranges, steps, lists, L/W/# and month or day names. Not croniter's extras
# (H hashing, R random, a seconds or year field), whose meaning a reader of the schedule cannot see.
_NAMES = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT"
_FIELD = re.compile(rf"^(?:[0-9*/,\-LW#?]|{_NAMES})+$", re.IGNORECASE)
_SLACK = timedelta(hours=3)  # more than any UTC offset change, so a fold's second pass is looked past


@dataclass(frozen=True)
class Entry:
    """From each firing of `cron` (in `timezone`) on, the pool's sizes are the given ones (None: unchanged)."""

    cron: str
    timezone: str
    min_size: int | None = None
    max_size: int | None = None
    desired_size: int | None = None


@dataclass(frozen=True)
class Window:
    """The entry that holds, its position in the list, and the instant it fired."""

    index: int
    entry: Entry
    fired_at: datetime


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """An IANA timezone from the allow-list of known names only (a name never becomes a file path)."""
    if name not in _zones():
        raise InvalidArgument(f"timezone {name!r} is not an IANA timezone name (e.g. Europe/Berlin, UTC, "
                              "America/New_York)")
    return ZoneInfo(name)


def check_cron(expr: str) -> str:
    """The expression, normalized to single spaces; InvalidArgument saying what is allowed otherwise."""
    fields = expr.split()
    if len(expr) > MAX_CRON_LENGTH or len(fields) != 5 or not all(_FIELD.match(f) for f in fields):
        raise InvalidArgument(f"cron {expr[:MAX_CRON_LENGTH]!r} must be 5 fields: minute hour day-of-month month "
                              "day-of-week (numbers, *, ranges, steps, lists, month and day names), e.g. '0 8 * * 1-5'")
    normal = " ".join(fields)
    if not croniter.is_valid(normal):
        raise InvalidArgument(f"cron {normal!r} is not a valid expression (minute 0-59, hour 0-23, day 1-31, "
                              "month 1-12, day-of-week 0-7)")
    return normal


def check_entry(entry: Entry, now: datetime) -> Entry:
    """A checked entry (cron normalized); InvalidArgument when it is malformed or never fires."""
    cron = check_cron(entry.cron)
    zone(entry.timezone)
    sizes = {k: v for k, v in (("min_size", entry.min_size), ("max_size", entry.max_size),
                               ("desired_size", entry.desired_size)) if v is not None}
    if not sizes:
        raise InvalidArgument(f"schedule entry {cron!r} sets nothing: give min_size, max_size and/or desired_size")
    for name, value in sizes.items():
        if value < 0:
            raise InvalidArgument(f"{name} must be >= 0, got {value}")
    if entry.min_size is not None and entry.max_size is not None and entry.min_size > entry.max_size:
        raise InvalidArgument(f"min_size must be <= max_size (got min_size={entry.min_size}, max_size={entry.max_size})")
    checked = Entry(cron, entry.timezone, entry.min_size, entry.max_size, entry.desired_size)
    if next_firing(checked, now) is None:
        raise InvalidArgument(f"cron {cron!r} never fires")
    return checked


def instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant a naive wall-clock time of `tz` fires at: its first occurrence if the clock passes
    it twice; the moment the clock jumps over it if it is skipped."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap: fold=0 read it with the offset before the jump (an instant after the jump), fold=1 with the
    # offset after (an instant before it). The jump is the first second in between with the later offset.
    lo, hi = wall.replace(tzinfo=tz, fold=1).astimezone(UTC), first
    after = hi.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def latest_firing(entry: Entry, now: datetime) -> datetime | None:
    """The last instant at or before `now` when the entry fired (None: never, as far back as cron looks)."""
    tz = zone(entry.timezone)
    wall = now.astimezone(tz).replace(tzinfo=None) + _SLACK
    try:
        it = croniter(entry.cron, wall)
        while True:
            at = instant(it.get_prev(datetime), tz)
            if at <= now:
                return at
    except CroniterError:
        return None


def next_firing(entry: Entry, now: datetime) -> datetime | None:
    """The first instant after `now` when the entry fires (None: never)."""
    tz = zone(entry.timezone)
    wall = now.astimezone(tz).replace(tzinfo=None) - _SLACK
    try:
        it = croniter(entry.cron, wall)
        while True:
            at = instant(it.get_next(datetime), tz)
            if at > now:
                return at
    except CroniterError:
        return None


def holding(entries: list[Entry], now: datetime) -> Window | None:
    """The entry that holds at `now`: the one that fired most recently (ties: the later in the list)."""
    best: Window | None = None
    for index, entry in enumerate(entries):
        at = latest_firing(entry, now)
        if at is not None and (best is None or at >= best.fired_at):
            best = Window(index, entry, at)
    return best


def next_change(entries: list[Entry], now: datetime) -> datetime | None:
    """When the next entry fires after `now` (None: none ever will)."""
    found = [at for at in (next_firing(e, now) for e in entries) if at is not None]
    return min(found, default=None)
