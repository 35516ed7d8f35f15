"""Serving the API process: uvicorn for HTTP, with the gRPC server started and drained in the ASGI
lifespan of every worker (app.main.WarmpoolASGI). With several workers the parent binds the gRPC port
once and every worker accepts from that one socket, as they do from uvicorn's HTTP socket."""
from __future__ import annotations

import atexit
import gc
import logging
import os
import socket

import uvicorn

from config.settings import Settings

log = logging.getLogger(__name__)


def worker_app():  # type: ignore[no-untyped-def]
    """uvicorn factory for `--workers N`: each worker process serves HTTP and gRPC on shared ports."""
    from app import metrics
    from app.main import create_asgi

    metrics.process_started()  # counted live until it exits (or a scrape finds it dead)
    atexit.register(metrics.process_stopped)
    return _frozen(create_asgi(grpc_socket=_grpc_socket))


_grpc_socket: socket.socket | None = None  # in a worker: the gRPC listener the parent bound


def _adopt(sock: socket.socket) -> GrpcListener:
    global _grpc_socket
    _grpc_socket = sock
    return GrpcListener(sock)


class GrpcListener:
    """The gRPC listening socket, carried to each spawned worker inside uvicorn's Config, which uvicorn
    pickles for every worker it starts (restarts included): multiprocessing passes the descriptor, and
    unpickling in the worker stores the socket for `worker_app`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return _adopt, (self.sock,)


def _frozen(app):  # type: ignore[no-untyped-def]
    """`app`, with everything the process imported and built so far moved out of the cyclic collector's
    reach (gc.freeze): the start-up heap (~170,000 objects) is never garbage, and a full collection that
    walks it pauses every request in flight for 50-150 ms, a lease's p99 on its own."""
    gc.collect()
    gc.freeze()
    return app


def default_workers(settings: Settings) -> int:
    """`warmpool api` processes when neither --workers nor WARMPOOL_API_WORKERS says: one per core (the
    lease path is CPU-bound in Python); but one under dev, which runs every process on one machine, under
    test, where a suite starts many servers side by side (each worker pays the start-up again), and on
    SQLite, whose single writer several processes would only queue on."""
    if settings.api_workers > 0:
        return settings.api_workers
    if settings.env in ("dev", "test") or settings.database_url.startswith("sqlite"):
        return 1
    return max(1, os.cpu_count() or 1)


def serve_api(settings: Settings, *, host: str, port: int, workers: int | None = None) -> None:
    workers = workers or default_workers(settings)
    log.info("warmpool api: HTTP on http://%s:%d (Connect under /api, docs at /docs), gRPC on %s:%d, %d worker(s)",
             host, port, settings.http_host, settings.grpc_port, workers)
    common = dict(host=host, port=port, log_level=settings.log_level.lower(), access_log=False,
                  timeout_graceful_shutdown=5, lifespan="on")
    if workers > 1:
        from app.metrics import prepare_multiprocess

        # Every worker writes its metrics there and /metrics sums them: a scrape sees the whole server.
        prepare_multiprocess(settings.data_dir / "metrics-api")
        from uvicorn.supervisors import Multiprocess

        from app.api.vmpool_grpc import listen

        config = uvicorn.Config("app.serve:worker_app", factory=True, workers=workers, **common)
        config.warmpool_grpc_listener = GrpcListener(listen(settings.http_host, settings.grpc_port))
        try:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        except KeyboardInterrupt:
            pass
        return
    from app import metrics
    from app.main import create_asgi

    metrics.process_started()
    uvicorn.run(_frozen(create_asgi()), **common)
