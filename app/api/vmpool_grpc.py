"""The lease service over gRPC: a grpc.aio server on its own thread and event loop beside uvicorn in the
`warmpool api` process, with the standard health and reflection services. Bearer token from the
`authorization` metadata; Ping is open. The implementation is app.api.vmpool.LeaseService, shared
with the Connect transport; this module only maps requests, deadlines and errors."""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app import adb, metrics
from app.api.core import GRPC, map_error
from app.api.hygiene import BadInput, check_message
from app.api.ops import follow_readiness
from app.api.vmpool import LeaseService, default_service, warm_up
from config.settings import get_settings
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["VMPoolLeaseService"].full_name
OPEN_METHODS = {"Ping"}

# RPC name -> (LeaseService method, request type, response type)
METHODS: dict[str, tuple[str, Any, Any]] = {
    "Ping": ("ping", empty_pb2.Empty, pb.PingResponse),
    "Lease": ("lease", pb.LeaseRequest, pb.LeaseResponse),
    "Return": ("return_", pb.ReturnRequest, pb.ReturnResponse),
    "ExtendTo": ("extend_to", pb.ExtendToRequest, pb.ExtendToResponse),
    "Pools": ("pools", pb.PoolsRequest, pb.PoolsResponse),
    "GetLease": ("get_lease", pb.GetLeaseRequest, pb.GetLeaseResponse),
}

class _Malformed:
    """Stands in for a request whose bytes did not parse, so the handler can answer INVALID_ARGUMENT
    (grpcio itself would answer INTERNAL)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # noqa: BLE001 - any decode failure is the client's
            return _Malformed(exc)

    return parse


def _handler(service: LeaseService, rpc: str) -> grpc.RpcMethodHandler:
    attr, request_type, response_type = METHODS[rpc]
    method = getattr(service, attr)
    needs_token = rpc not in OPEN_METHODS

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metrics.TRANSPORT.set("grpc")  # this RPC's own task: Lease calls are counted under gRPC
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {request.error}")
        try:
            check_message(request)  # the same input rules as every other façade (app/api/hygiene.py)
        except BadInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        authorization = None
        if needs_token:
            authorization = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        try:
            return await method(authorization, request, context.time_remaining())
        except Exception as exc:  # noqa: BLE001 - every outcome is a gRPC status (app.api.core's table)
            refusal = map_error(exc, GRPC, what=f"{SERVICE}/{rpc}")
            if refusal.trailers():
                context.set_trailing_metadata(refusal.trailers())
            await context.abort(refusal.code, refusal.message)

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=_parser(request_type), response_serializer=response_type.SerializeToString,
    )


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
                 reuse_port: bool = False) -> None:
        self.host, self.port, self.grace = host, port, grace
        # One process binds the port alone (a clash fails loudly); `warmpool api --workers N` shares it.
        self.reuse_port = reuse_port
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
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if self.reuse_port else 0),
                                          ("grpc.max_receive_message_length", limit)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {rpc: _handler(self.service, rpc) for rpc in METHODS}),))
        checks = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        if not self.port:
            raise OSError("address in use or not available")
        await warm_up()  # this loop's pools and statements, before the first call can arrive
        await server.start()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        await checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("warmpool api: gRPC on %s:%d (%s, health, reflection)", self.host, self.port, SERVICE)
        # Health follows /readyz: NOT_SERVING while the database or Redis is unreachable.
        follower = asyncio.create_task(follow_readiness(lambda ok: _set_health(checks, ok)))
        self._started.set()
        await self._stopping.wait()
        follower.cancel()
        await checks.enter_graceful_shutdown()
        await server.stop(self.grace)
        await adb.close()
