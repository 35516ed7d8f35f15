"""LoopService: the one shape of warmpool's long-running loops (loop until stopped, survive errors, back off, report health).

A subclass implements `run_once` (one step; it may block for a while but must return within about a
second of `stopping` being set). `run` calls it until `stop()`; an exception is logged, counted and
followed by an exponential backoff with jitter (capped), and the next success resets the count.
`health()` says whether the loop runs and how it fared, for a probe or a log line. The observer and
its per-runner watchers use it; the event applier can adopt it the same way.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Self

log = logging.getLogger(__name__)


class LoopService:
    name = "loop"
    interval: float = 0.0
    """Pause between two successful steps (0: none; run_once blocks on its own source)."""
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.name
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.steps = 0
        self.errors = 0
        self.consecutive_errors = 0
        self.last_error = ""
        self.last_ok: float | None = None

    # ---- to implement ------------------------------------------------------------------------
    def run_once(self) -> object:  # what it returns (the applier: how many events) is the caller's, not the loop's
        raise NotImplementedError

    def describe(self, exc: BaseException) -> str:
        """How a failed step reads in `last_error` and the log."""
        return f"{type(exc).__name__}: {exc}"

    def on_stop(self) -> None:
        """Release what the loop holds; called once, in the loop's thread, after the last step."""

    # ---- the loop ------------------------------------------------------------------------------
    def backoff(self) -> float:
        delay = min(self.backoff_base * (2 ** max(self.consecutive_errors - 1, 0)), self.backoff_max)
        return delay * (0.5 + random.random() / 2)

    def step(self) -> bool:
        """One guarded step: True if it succeeded."""
        try:
            self.run_once()
        except Exception as exc:
            self.errors += 1
            self.consecutive_errors += 1
            self.last_error = self.describe(exc)[:500]
            log.warning("%s: step failed (%d in a row): %s", self.name, self.consecutive_errors, self.last_error,
                        exc_info=self.consecutive_errors == 1)
            return False
        self.steps += 1
        self.consecutive_errors = 0
        self.last_ok = time.time()
        return True

    def run(self) -> None:
        """Run steps until `stop()`; blocks."""
        try:
            while not self.stopping.is_set():
                pause = self.interval if self.step() else self.backoff()
                if pause > 0:
                    self.stopping.wait(pause)
        finally:
            try:
                self.on_stop()
            except Exception:
                log.exception("%s: on_stop failed", self.name)

    def start(self) -> Self:
        """Run in a daemon thread."""
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def stop(self, wait: float | None = None) -> None:
        self.stopping.set()
        if wait is not None and self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(wait)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self.stopping.is_set()

    def health(self) -> dict[str, Any]:
        return {"name": self.name, "running": self.running or (self.thread is None and not self.stopping.is_set()),
                "steps": self.steps, "errors": self.errors, "consecutive_errors": self.consecutive_errors,
                "last_error": self.last_error, "last_ok": self.last_ok}
