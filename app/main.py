"""The ASGI application: every HTTP façade on one port (DESIGN.md, Routes)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Mount

from app.api import gitpod, ops, vmpool
from app.api import podpools as podpools_api
from app.api import contract, docs, native, native_pools, native_rollout, native_tokens, unknown_routes
from app.api.connect_common import ConnectRouter, PaginationQueryMerge
from app.api.edge import HygieneInterceptor, InputGuard
from app.api.vmpool_connect import LeaseConnectJSON
from app.domain import effects
from config.settings import get_settings
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from proto.gitpod.v1.prebuild_connect import PrebuildServiceASGIApplication
from proto.gitpod.v1.project_connect import ProjectServiceASGIApplication
from proto.gitpod.v1.runner_configuration_connect import RunnerConfigurationServiceASGIApplication
from proto.intrinsic_proto.vmpoolleaseapi.v1.lease_api_connect import VMPoolLeaseServiceASGIApplication

# Unknown JSON fields are rejected (invalid_argument), as upstream's Connect servers do.
CONNECT_CODECS = [google_protobuf_binary_codec(), google_protobuf_json_codec(ignore_unknown_fields=False)]


def connect_apps() -> list:
    # Input limits (app/api/edge.py): the body size while reading, then every string of the decoded message.
    edge = {"codecs": CONNECT_CODECS, "interceptors": [HygieneInterceptor()],
            "read_max_bytes": get_settings().input.max_body_bytes}
    return [
        PrebuildServiceASGIApplication(gitpod.PrebuildService(), **edge),
        ProjectServiceASGIApplication(gitpod.ProjectService(), **edge),
        RunnerConfigurationServiceASGIApplication(gitpod.RunnerConfigurationService(), **edge),
        VMPoolLeaseServiceASGIApplication(vmpool.VMPoolLeaseConnect(), **edge),
    ]


def install_dispatcher() -> None:
    """Committed domain effects become Celery tasks (imported lazily: tests may install their own)."""
    from workers.celery_app import dispatch_burst, dispatch_effect

    effects.set_dispatcher(dispatch_effect, batch=dispatch_burst)


class WarmpoolASGI:
    """The process's ASGI entry point: Connect calls under /api go straight to the Connect services
    (they are the hot path: FastAPI's middleware and router cost ~15% of a lease), everything else to
    FastAPI. Its lifespan also runs the gRPC server, so every `warmpool api` worker serves gRPC."""

    def __init__(self, fastapi_app: FastAPI, grpc_server: object | None = None) -> None:
        self.fastapi = fastapi_app
        # The hot lease RPCs over Connect JSON take a thin handler; it hands everything else on.
        self.connect = LeaseConnectJSON(
            unknown_routes.ConnectErrorBodies(InputGuard(PaginationQueryMerge(ConnectRouter(connect_apps())))))
        self.grpc_server = grpc_server

    async def __call__(self, scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            scope = dict(scope, root_path=scope.get("root_path", "") + "/api")
            await self.connect(scope, receive, send)
        elif scope["type"] == "lifespan" and self.grpc_server is not None:
            await self._lifespan(scope, receive, send)
        else:
            await self.fastapi(scope, receive, send)

    async def _lifespan(self, scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        import asyncio

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.grpc_server.start)
                    await vmpool.warm_up()  # this loop's lease pools, before the first request
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.grpc_server.stop)
                from app import adb

                await adb.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_asgi(*, grpc: bool = True, grpc_socket: object | None = None, grpc_tally: object | None = None) -> WarmpoolASGI:
    """What `warmpool api` serves: HTTP façades plus (with `grpc`) the gRPC server in the lifespan, on the
    gRPC listening socket that `warmpool api --workers N` shares among its workers, with the tally of their
    connections there (app.accept; else it binds its own)."""
    server = None
    if grpc:
        from app.api.vmpool_grpc import GrpcServer

        s = get_settings()
        server = GrpcServer(s.http_host, s.grpc_port, sock=grpc_socket, tally=grpc_tally)
    return WarmpoolASGI(create_app(), server)


@asynccontextmanager
async def _closing_lease_pools(_app: FastAPI) -> AsyncIterator[None]:
    """The FastAPI app's own lifespan (a TestClient runs it): this loop's async lease pools close with it."""
    yield
    from app import adb

    await adb.close()


def create_app(*, dispatcher: bool = True) -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        lifespan=_closing_lease_pools,
        title="warmpool",
        version="0.1.0",
        description="Warm pools of compute instances. Connect services live under /api, "
        "openYuanrong pod pools under /serverless/v1, the native admin API under /v1.",
        docs_url=None, redoc_url=None,  # app.api.docs serves both with local assets
    )
    docs.install(app)
    app.include_router(ops.router)
    app.include_router(podpools_api.router)
    app.include_router(native.router)
    app.include_router(native_tokens.router)
    app.include_router(native_pools.router)  # POST/PATCH/DELETE /v1/pools, schedules
    app.include_router(native_rollout.router)
    unknown_routes.install(app)  # first: the façades' handlers pass paths that are not theirs on to it
    native.install_error_handlers(app)
    app.add_middleware(InputGuard)  # body size limits and input hygiene, in each façade's format
    contract.install(app)  # /openapi.json says every status the server answers; 405 lists every method
    app.router.routes.append(Mount("/api", app=unknown_routes.ConnectErrorBodies(
        PaginationQueryMerge(ConnectRouter(connect_apps())))))
    if dispatcher:
        install_dispatcher()
    from workers.providers.catalog import install as install_catalog

    install_catalog()  # runner settings and templates are checked by the providers' typed models
    app.state.settings = settings
    return app
