"""Serving the API process: uvicorn for HTTP; the gRPC server runs beside it in the same process."""
from __future__ import annotations

import asyncio
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
    config = uvicorn.Config(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False,
                            timeout_graceful_shutdown=5)
    try:
        _Server(config, grpc_server).run()
    finally:
        grpc_server.stop()  # a no-op when the shutdown below already stopped it


class _Server(uvicorn.Server):
    """uvicorn, with the gRPC server drained in the same graceful shutdown (after SIGTERM/SIGINT
    uvicorn re-raises the signal once it has shut down, so code after `run()` would never run)."""

    def __init__(self, config: uvicorn.Config, grpc_server) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config)
        self.grpc_server = grpc_server

    async def shutdown(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().shutdown(sockets)
        await asyncio.to_thread(self.grpc_server.stop)
