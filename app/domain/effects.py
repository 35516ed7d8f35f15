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


def defer(session: Any, name: str, **payload: Any) -> None:
    """Record `name(**payload)` to run after `session` commits; duplicates within one transaction collapse."""
    effects: list[Effect] = session.info.setdefault("effects", [])
    effect = (name, payload)
    if effect not in effects:
        effects.append(effect)


def take(session: Any) -> list[Effect]:
    return session.info.pop("effects", [])


def set_dispatcher(fn: Dispatcher | None) -> Dispatcher | None:
    """Install the process's dispatcher; returns the previous one (tests restore it)."""
    global _dispatcher
    previous, _dispatcher = _dispatcher, fn
    return previous


def dispatch(effects: list[Effect]) -> None:
    """Hand committed effects to the dispatcher. A failure is logged, never raised: the data is
    committed, and the beat sweep finds pools whose `needs_reconcile` is still set."""
    if not effects or _dispatcher is None:
        return
    for name, payload in effects:
        try:
            _dispatcher(name, payload)
        except Exception:  # noqa: BLE001 - the broker being down must not fail a committed write
            log.warning("could not enqueue %s(%s); the next sweep will pick it up", name, payload, exc_info=True)
