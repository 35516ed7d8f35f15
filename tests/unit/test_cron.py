"""Scheduled sizing's pure arithmetic with a controlled clock: which entry holds, when the next fires, and
both Europe/Berlin DST transitions of 2026 (spring forward 29 March 02:00 -> 03:00, fall back 25 October
03:00 -> 02:00)."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.domain import cron
from app.domain.cron import Entry
from app.domain.errors import InvalidArgument

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def firings(entry: Entry, start: datetime, end: datetime) -> list[datetime]:
    """Every firing in (start, end], by walking next_firing."""
    out, at = [], start
    while (at := cron.next_firing(entry, at)) is not None and at <= end:
        out.append(at)
    return out


WORKDAY = [Entry("0 8 * * 1-5", BERLIN, min_size=20, max_size=40), Entry("0 19 * * *", BERLIN, min_size=2, max_size=10)]


def test_the_entry_that_fired_last_holds_from_then_on():
    # Monday 2 March 2026 (CET, UTC+1): 07:59 local is still Sunday evening's 19:00 entry.
    assert cron.holding(WORKDAY, utc(2026, 3, 2, 6, 59)).index == 1
    w = cron.holding(WORKDAY, utc(2026, 3, 2, 7, 0))  # 08:00 local
    assert (w.index, w.fired_at) == (0, utc(2026, 3, 2, 7, 0))
    assert cron.holding(WORKDAY, utc(2026, 3, 2, 17, 59)).index == 0
    assert cron.holding(WORKDAY, utc(2026, 3, 2, 18, 0)).index == 1  # 19:00 local
    # Saturday morning: the weekday entry does not fire, Friday's 19:00 still holds.
    assert cron.holding(WORKDAY, utc(2026, 3, 7, 9, 0)).fired_at == utc(2026, 3, 6, 18, 0)
    assert cron.next_change(WORKDAY, utc(2026, 3, 6, 18, 0)) == utc(2026, 3, 7, 18, 0)
    assert cron.next_change(WORKDAY, utc(2026, 3, 8, 18, 0)) == utc(2026, 3, 9, 7, 0)


def test_summer_time_moves_the_utc_instant_not_the_wall_clock():
    assert cron.next_firing(WORKDAY[0], utc(2026, 3, 27, 12)) == utc(2026, 3, 30, 6, 0)  # Monday, CEST: 06:00 UTC
    assert cron.next_firing(WORKDAY[0], utc(2026, 10, 23, 12)) == utc(2026, 10, 26, 7, 0)  # back on CET


def test_spring_forward_a_skipped_0230_fires_once_when_the_clock_jumps():
    entry = Entry("30 2 * * *", BERLIN, min_size=5)
    got = firings(entry, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12))
    # 28 March 02:30 CET; 29 March has no 02:30: fired at the jump (03:00 CEST = 01:00 UTC); 30 March 02:30 CEST.
    assert got == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]
    evening = Entry("0 19 * * *", BERLIN, min_size=1)
    assert cron.holding([entry, evening], utc(2026, 3, 29, 0, 59)).index == 1  # 01:59 CET: last evening's
    w = cron.holding([entry, evening], utc(2026, 3, 29, 1, 0))
    assert (w.index, w.fired_at) == (0, utc(2026, 3, 29, 1, 0))


def test_spring_forward_every_time_in_the_gap_maps_to_the_jump():
    assert cron.instant(datetime(2026, 3, 29, 2, 0), cron.zone(BERLIN)) == utc(2026, 3, 29, 1, 0)
    assert cron.instant(datetime(2026, 3, 29, 2, 59), cron.zone(BERLIN)) == utc(2026, 3, 29, 1, 0)
    assert cron.instant(datetime(2026, 3, 29, 3, 0), cron.zone(BERLIN)) == utc(2026, 3, 29, 1, 0)
    assert cron.instant(datetime(2026, 3, 29, 1, 59), cron.zone(BERLIN)) == utc(2026, 3, 29, 0, 59)


def test_fall_back_a_0230_passed_twice_fires_once_at_its_first_occurrence():
    entry = Entry("30 2 * * *", BERLIN, min_size=5)
    got = firings(entry, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))
    # 02:30 CEST = 00:30 UTC; the second 02:30 (CET, 01:30 UTC) is not a firing; next day 02:30 CET.
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # Another entry firing between the two passes keeps holding through the second 02:30.
    between = Entry("45 2 * * *", BERLIN, min_size=9)
    entries = [entry, between]
    assert cron.holding(entries, utc(2026, 10, 25, 0, 40)).index == 0
    assert cron.holding(entries, utc(2026, 10, 25, 0, 50)).index == 1
    second_pass = cron.holding(entries, utc(2026, 10, 25, 1, 35))  # the wall clock reads 02:35 again
    assert (second_pass.index, second_pass.fired_at) == (1, utc(2026, 10, 25, 0, 45))
    # The 02:45 entry fires once too: its second 02:45 (01:45 UTC) changes nothing.
    assert cron.holding(entries, utc(2026, 10, 25, 1, 50)).fired_at == utc(2026, 10, 25, 0, 45)
    assert cron.next_change(entries, utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 26, 1, 30)


def test_hourly_entries_across_fall_back_fire_on_every_distinct_instant_once():
    entry = Entry("0 * * * *", BERLIN, min_size=1)
    got = firings(entry, utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 3, 30))
    # Wall clock 01:00, 02:00 (CEST), 03:00 (CET) ... : the repeated 02:00 CET is not a second firing.
    assert got == [utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 2, 0), utc(2026, 10, 25, 3, 0)]
    assert len(set(got)) == len(got)


def test_same_instant_the_later_entry_wins_and_timezones_mix():
    a, b = Entry("0 9 * * *", "UTC", min_size=1), Entry("0 10 * * *", BERLIN, min_size=2)  # both 09:00 UTC in winter
    assert cron.holding([a, b], utc(2026, 1, 5, 9, 0)).index == 1
    assert cron.holding([b, a], utc(2026, 1, 5, 9, 0)).index == 1


@pytest.mark.parametrize("expr", ["", "* * * *", "* * * * * *", "H 8 * * *", "R * * * *", "61 * * * *",
                                  "0 8 * * 1-5; rm -rf /", "@reboot", "x" * 200])
def test_bad_cron_is_refused_saying_what_is_allowed(expr):
    with pytest.raises(InvalidArgument) as exc:
        cron.check_entry(Entry(expr, "UTC", min_size=1), utc(2026, 1, 1))
    assert "cron" in exc.value.message


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "", "europe/berlin"])
def test_only_known_iana_timezone_names_are_accepted(tz):
    with pytest.raises(InvalidArgument, match="IANA"):
        cron.check_entry(Entry("0 8 * * *", tz, min_size=1), utc(2026, 1, 1))


def test_entry_rules():
    now = utc(2026, 1, 1)
    with pytest.raises(InvalidArgument, match="sets nothing"):
        cron.check_entry(Entry("0 8 * * *", "UTC"), now)
    with pytest.raises(InvalidArgument, match="min_size must be <= max_size"):
        cron.check_entry(Entry("0 8 * * *", "UTC", min_size=5, max_size=2), now)
    with pytest.raises(InvalidArgument, match="never fires"):
        cron.check_entry(Entry("0 0 30 2 *", "UTC", min_size=1), now)
    assert cron.check_entry(Entry(" 0  8 * *   mon-fri ", BERLIN, desired_size=3), now).cron == "0 8 * * mon-fri"


def test_a_rare_entry_is_found_far_back_and_evaluation_stays_cheap():
    leap = Entry("0 0 29 2 *", "UTC", min_size=1)
    assert cron.latest_firing(leap, utc(2027, 6, 1)) == utc(2024, 2, 29)
    minutely = Entry("* * * * *", BERLIN, min_size=1)
    now = utc(2026, 10, 25, 1, 30, 30)
    # In the fall-back fold every wall-clock minute already fired an hour ago (its first occurrence).
    assert cron.latest_firing(minutely, now) == utc(2026, 10, 25, 0, 59)
    assert cron.next_firing(minutely, now) == utc(2026, 10, 25, 2, 0)
