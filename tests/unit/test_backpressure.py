"""Retry-After estimates from a pool's measured refill time and its creation back-off."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.domain.backpressure import UNMEASURED_REFILL_SECONDS, retry_after

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_about_one_refill_rounded_up_to_whole_seconds():
    assert retry_after(2.2, now=NOW) == 3
    assert retry_after(0.05, now=NOW) == 1, "never below one second"


def test_an_unmeasured_pool_gets_the_default():
    assert retry_after(0.0, now=NOW) == UNMEASURED_REFILL_SECONDS


def test_a_creation_back_off_adds_what_is_left_of_it():
    assert retry_after(2.0, now=NOW, next_attempt_at=NOW + timedelta(seconds=30)) == 32
    assert retry_after(2.0, now=NOW, next_attempt_at=NOW - timedelta(seconds=30)) == 2, "a past back-off adds nothing"


def test_bounded_at_five_minutes():
    assert retry_after(10_000.0, now=NOW) == 300
