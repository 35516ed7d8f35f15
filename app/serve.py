"""Serving the API process: uvicorn for HTTP; the gRPC server runs beside it in the same process."""
from __future__ import annotations

import logging

import uvicorn

from config.settings import Settings

log = logging.getLogger(__name__)


def serve_api(settings: Settings, *, host: str, port: int) -> None:
    from app.main import create_app

    app = create_app()
    log.info("warmpool api: HTTP on http://%s:%d (Connect under /api, docs at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False,
                timeout_graceful_shutdown=5)
