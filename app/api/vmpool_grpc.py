"""The lease service over gRPC, on its own thread and event loop beside uvicorn in the `warmpool api`
process: the port's HTTP/2 front (app/api/grpc_front.py) answers the lease service's unary calls itself and
relays every other stream (the standard health and reflection services, unknown methods) to a grpc.aio
server on a private loopback port. Bearer token from the `authorization` metadata; Ping is open. The
implementation is app.api.vmpool.LeaseService, shared with the Connect transport; app/api/grpc_unary.py
maps requests, deadlines and errors."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app import adb
from app.accept import Tally
from app.api.grpc_listener import Front, methods
from app.api.grpc_unary import SERVICE
from app.api.ops import follow_readiness
from app.api.vmpool import LeaseService, default_service, warm_up
from config.settings import get_settings

log = logging.getLogger(__name__)

async def _set_health(checks: health.aio.HealthServicer, ok: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE):
        await checks.set(name, status)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed, as uvicorn's `auto` picks it: grpc.aio costs about a sixth less CPU per call
    on it than on asyncio's own loop, and so do the async driver's waits."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class GrpcServer:
    """Start with `start()` (returns the bound port), stop with `stop()`; safe to stop twice."""

    def __init__(self, host: str, port: int, service: LeaseService | None = None, grace: float = 5.0,
                 sock: socket.socket | None = None, tally: Tally | None = None) -> None:
        self.host, self.port, self.grace = host, port, grace
        # One process binds the port alone (a clash fails loudly); `warmpool api --workers N` binds it once
        # before starting the workers and hands each the listening `sock` and the `tally` of their connections
        # there (the one serving fewer takes the next: app.accept).
        self.sock, self.tally = sock, tally
        self.service = service or default_service()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> int:
        self._thread = threading.Thread(target=self._run, name="grpc-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"the gRPC server did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"the gRPC server could not start on {self.host}:{self.port}: {self._error}")
        return self.port

    def stop(self) -> None:
        if self._loop is None or self._stopping is None or self._thread is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._stopping.set)
        except RuntimeError:  # loop already closed
            pass
        self._thread.join(self.grace + 5)

    def _run(self) -> None:
        self._loop = _new_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            if self._started.is_set():
                log.exception("the gRPC server stopped with an error")
        finally:
            self._started.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        limit = get_settings().input.max_grpc_message_bytes  # larger requests get RESOURCE_EXHAUSTED
        public = self.sock or listen(self.host, self.port)
        self.port = public.getsockname()[1]
        # The streams the front relays (health, reflection, unknown methods), on a port of this process's own:
        # the front answers every method of the lease service itself.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", limit)])
        checks = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        backend = server.add_insecure_port("127.0.0.1:0")
        if not backend:
            raise OSError("no loopback port for the gRPC server")
        await warm_up()  # this loop's pools and statements, before the first call can arrive
        await server.start()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        await checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        front = Front(public, self.service, f"127.0.0.1:{backend}", methods(health.SERVICE_NAME, reflection.SERVICE_NAME),
                      limit, tally=self.tally)
        front.start()
        log.info("warmpool api: gRPC on %s:%d (%s, health, reflection)", self.host, self.port, SERVICE)
        # Health follows /readyz: NOT_SERVING while the database or Redis is unreachable.
        follower = asyncio.create_task(follow_readiness(lambda ok: _set_health(checks, ok)))
        self._started.set()
        await self._stopping.wait()
        follower.cancel()
        await checks.enter_graceful_shutdown()
        await front.stop(self.grace)  # in-flight calls finish; relayed ones still reach the server below
        await server.stop(self.grace)
        await adb.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket for the gRPC port (both IPv6 and IPv4 on an IPv6 wildcard host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    dual = family == socket.AF_INET6 and socket.has_dualstack_ipv6()
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=1024,
                                    dualstack_ipv6=dual and host.strip("[]") == "::")
    except OSError as exc:
        raise OSError(f"address in use or not available ({exc})") from None
