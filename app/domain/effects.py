"""Work to start after the current transaction commits (enqueue after commit).

A domain function calls `defer(session, "reconcile_pool", pool_id=...)`; the unit of work that owns
the session hands the list to the process's dispatcher only after a successful commit. The domain
never imports Celery: the edges install the dispatcher (`set_dispatcher`) at start-up.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Effect = tuple[str, dict[str, Any]]
Dispatcher = Callable[[str, dict[str, Any]], None]

_dispatcher: Dispatcher | None = None
_batch: Callable[[list[Effect]], None] | None = None


def defer(session: Any, name: str, **payload: Any) -> None:
    """Record `name(**payload)` to run after `session` commits; duplicates within one transaction collapse."""
    effects: list[Effect] = session.info.setdefault("effects", [])
    effect = (name, payload)
    if effect not in effects:
        effects.append(effect)


def take(session: Any) -> list[Effect]:
    return session.info.pop("effects", [])


def set_dispatcher(fn: Dispatcher | None, batch: Callable[[list[Effect]], None] | None = None) -> Dispatcher | None:
    """Install the process's dispatcher; returns the previous one (tests restore it). `batch`, if given,
    takes a whole burst of committed effects at once (dispatch_burst); without it a burst goes one by one."""
    global _dispatcher, _batch
    previous, _dispatcher, _batch = _dispatcher, fn, batch
    return previous


def dispatch_burst(effects: list[Effect]) -> None:
    """Hand the committed effects of several units of work at once (the lease path's after-commit thread):
    to the batch dispatcher when one is installed (one Redis pipeline, one task for many destroys), else
    one by one. Logged, never raised, like `dispatch`."""
    if not effects or _dispatcher is None:
        return
    if _batch is None:
        dispatch(effects)
        return
    try:
        _batch(effects)
    except Exception:
        log.warning("could not dispatch a burst of %d effects; the next sweep will pick them up", len(effects),
                    exc_info=True)


def dispatch(effects: list[Effect]) -> None:
    """Hand committed effects to the dispatcher. A failure is logged, never raised: the data is
    committed, and the beat sweep finds pools whose `needs_reconcile` is still set."""
    if not effects or _dispatcher is None:
        return
    for name, payload in effects:
        try:
            _dispatcher(name, payload)
        except Exception:
            log.warning("could not enqueue %s(%s); the next sweep will pick it up", name, payload, exc_info=True)
