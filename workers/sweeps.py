"""What every beat sweep shares: a warning when one pass takes longer than its interval (the next
pass is then already due, and beat's `expires` will drop runs that wait longer than that)."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def timed(name: str, interval_seconds: float) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - began
        if took > interval_seconds:
            log.warning("%s sweep took %.1fs, longer than its %.1fs interval", name, took, interval_seconds)
