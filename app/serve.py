"""Serving the API process: uvicorn for HTTP, with the gRPC server started and drained in the ASGI
lifespan of every worker (app.main.WarmpoolASGI). With several workers the parent binds the HTTP and gRPC
ports once and every worker accepts from those sockets, the one serving fewer connections first (app.accept)."""
from __future__ import annotations

import atexit
import logging
import os
import socket

import uvicorn

from app.accept import Tally
from app.heap import freeze_startup_heap
from config.settings import Settings

log = logging.getLogger(__name__)


def worker_app():  # type: ignore[no-untyped-def]
    """uvicorn factory for `--workers N`: each worker process serves HTTP and gRPC on shared ports."""
    from app import metrics
    from app.main import create_asgi

    metrics.process_started()  # counted live until it exits (or a scrape finds it dead)
    atexit.register(metrics.process_stopped)
    return _frozen(create_asgi(grpc_socket=_grpc_socket, grpc_tally=_grpc_tally))


_grpc_socket: socket.socket | None = None  # in a worker: the gRPC listener the parent bound
_grpc_tally: Tally | None = None  # and the workers' connections on it


def _adopt(sock: socket.socket, tally: Tally, http_tally: Tally) -> Shared:
    from app import serve_loop

    global _grpc_socket, _grpc_tally
    _grpc_socket, _grpc_tally = sock, tally
    serve_loop.HTTP_TALLY = http_tally
    return Shared(sock, tally, http_tally)


class Shared:
    """What the workers share besides uvicorn's HTTP socket: the gRPC listening socket and the tallies of
    their connections on both ports (app.accept). Carried to each spawned worker inside uvicorn's Config,
    which uvicorn pickles for every worker it starts (restarts included): multiprocessing passes the
    descriptor and the shared memory, and unpickling in the worker stores them for `worker_app` and for
    the HTTP side's loop (app.serve_loop)."""

    def __init__(self, sock: socket.socket, tally: Tally, http_tally: Tally) -> None:
        self.sock, self.tally, self.http_tally = sock, tally, http_tally

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return _adopt, (self.sock, self.tally, self.http_tally)


def _frozen(app):  # type: ignore[no-untyped-def]
    """`app`, with the start-up heap out of the cyclic collector's walks (app.heap): a full collection would
    pause every request in flight, a lease's p99 on its own."""
    freeze_startup_heap()
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
                  timeout_graceful_shutdown=5, lifespan="on", http="app.api.lease_http:LeaseHttpProtocol")
    if workers > 1:
        from app.metrics import prepare_multiprocess

        # Every worker writes its metrics there and /metrics sums them: a scrape sees the whole server.
        prepare_multiprocess(settings.data_dir / "metrics-api")
        from uvicorn.supervisors import Multiprocess

        from app.api.vmpool_grpc import listen

        # The HTTP port is shared like the gRPC one: each worker's loop takes connections from it evenly.
        config = uvicorn.Config("app.serve:worker_app", factory=True, workers=workers,
                                loop="app.serve_loop:SharedPortLoop", **common)
        config.warmpool_shared = Shared(listen(settings.http_host, settings.grpc_port), Tally(), Tally())
        try:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        except KeyboardInterrupt:
            pass
        return
    from app import metrics
    from app.main import create_asgi

    metrics.process_started()
    uvicorn.run(_frozen(create_asgi()), **common)
