"""`warmpool flower`: Celery's Flower with basic auth on every page, /metrics and /healthcheck included
(Flower checks credentials on its UI and API but serves those two to anyone)."""
from __future__ import annotations

from typing import Any

# Flower handlers that skip Flower's own authentication; module path -> class names.
OPEN_HANDLERS = {"flower.views.monitor": ("Metrics", "Healthcheck")}


def flower_argv(settings: Any, port: int | None = None) -> list[str]:
    """The Celery command line that serves Flower with the configured basic-auth credentials."""
    f = settings.flower
    return ["flower", f"--port={port or f.port}", f"--address={f.address}", f"--basic-auth={f.user}:{f.password.get_secret_value()}"]


def _require_user(handler: Any) -> None:
    # Flower's get_current_user raises 401 on missing or wrong basic-auth credentials.
    if not handler.current_user:
        from tornado.web import HTTPError

        raise HTTPError(401)


def protect_open_handlers() -> None:
    """Make Flower's open handlers check credentials like the rest of Flower (tornado calls `prepare`
    before every method). Idempotent."""
    import importlib

    for module, names in OPEN_HANDLERS.items():
        mod = importlib.import_module(module)
        for name in names:
            getattr(mod, name).prepare = _require_user


def run_flower(settings: Any, port: int | None = None) -> None:
    from app.extras import require
    from workers.celery_app import celery_app

    require("flower", "flower", "warmpool flower")

    protect_open_handlers()
    celery_app.start(flower_argv(settings, port))
