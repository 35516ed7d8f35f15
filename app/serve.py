"""Serving the API process: uvicorn for HTTP; the gRPC server runs beside it in the same process."""
from __future__ import annotations

import logging

import uvicorn

from config.settings import Settings

log = logging.getLogger(__name__)


def serve_api(settings: Settings, *, host: str, port: int) -> None:
    from app.api.vmpool_grpc import GrpcServer
    from app.main import create_app

    app = create_app()
    grpc_server = GrpcServer(host, settings.grpc_port)
    grpc_server.start()
    log.info("warmpool api: HTTP on http://%s:%d (Connect under /api, docs at /docs)", host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False,
                    timeout_graceful_shutdown=5)
    finally:
        # uvicorn returns after SIGINT/SIGTERM once HTTP has drained; then gRPC drains the same way.
        grpc_server.stop()
