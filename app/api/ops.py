"""Operations endpoints: liveness, readiness (database and Redis reachable; the gRPC health service follows it
through follow_readiness), Prometheus metrics (a tenant token its organization's pool series, a `metrics`
token everything: app/metrics.py, app/metrics_collector.py)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from app import auth
from app import metrics as process_metrics
from app.db import get_engine
from app.domain.errors import DomainError, PermissionDenied
from app.domain.tokens import Scope
from app.metrics_collector import render_view
from config.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness: the process serves HTTP")
def healthz() -> dict:
    return {"status": "ok"}


def _check_db() -> None:
    with get_engine().connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _check_redis() -> None:
    import redis

    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


async def readiness() -> dict[str, str]:
    """What /readyz and the gRPC health service report: each dependency "ok" or why it is unreachable."""
    checks: dict[str, str] = {}
    for name, fn in (("database", _check_db), ("redis", _check_redis)):
        try:
            await run_in_threadpool(fn)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - a readiness probe reports, never raises
            checks[name] = f"unreachable: {type(exc).__name__}"
    return checks


@router.get("/readyz", summary="Readiness: the database and Redis are reachable")
async def readyz() -> JSONResponse:
    checks = await readiness()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


READINESS_INTERVAL = 2.0  # seconds between the gRPC health service's readiness checks


async def follow_readiness(set_serving: Callable[[bool], Awaitable[None]], interval: float | None = None) -> None:
    """Until cancelled: check readiness every `interval` seconds and report each change through
    `set_serving(ok)`, so the gRPC health service answers NOT_SERVING while /readyz answers 503."""
    serving: bool | None = None
    while True:
        try:
            ok = all(v == "ok" for v in (await readiness()).values())
            if ok != serving:
                await set_serving(ok)
                if serving is not None:
                    log.warning("gRPC health: %s", "SERVING again" if ok else "NOT_SERVING (database or Redis unreachable)")
                serving = ok
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gRPC health: readiness check failed")
        await asyncio.sleep(READINESS_INTERVAL if interval is None else interval)


def process_exposition() -> bytes:
    """The process-wide series: lease, reservation and provider metrics; summed over every worker process
    in multiprocess mode (app.metrics), else this process's plus the Python process collectors."""
    if process_metrics.multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess

    process_metrics.mark_dead_processes()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def exposition(org_id: str | None) -> bytes:
    """The metrics one caller may see: its organization's pool series, or (None) every organization's plus
    the process-wide ones and the event applier's lag."""
    own = render_view(org_id).encode()
    return own if org_id is not None else process_exposition() + own


async def metrics_view(request: Request) -> str | None:
    """The organization whose series the caller may see, or None for all of them (a `metrics` token,
    or WARMPOOL_METRICS_PUBLIC). Admin and member tokens see their own organization only."""
    if get_settings().metrics_public:
        return None
    caller = await auth.authenticate_async(auth.bearer_from_header(request.headers.get("authorization")))
    if caller.allows(Scope.METRICS):
        return None
    if not caller.allows(Scope.MEMBER):
        raise PermissionDenied("/metrics needs a token with scope 'member' or 'admin' (its own organization's "
                               f"series) or 'metrics' (every organization's); this token's scope is {caller.scope.value!r}")
    return caller.organization_id


@router.get("/metrics", summary="Prometheus metrics: the caller's organization, or all of them for a metrics "
            "token (no token needed when WARMPOOL_METRICS_PUBLIC=true)")
async def metrics(request: Request) -> Response:
    try:
        org_id = await metrics_view(request)
    except DomainError as exc:
        return JSONResponse({"code": exc.code, "message": exc.message},
                            status_code=403 if exc.code == "permission_denied" else 401)
    except Exception:
        log.exception("could not verify the token of a /metrics request")
        return JSONResponse({"code": "unavailable", "message": "cannot verify the API token right now; retry later"},
                            status_code=503)
    return Response(await run_in_threadpool(exposition, org_id), media_type=CONTENT_TYPE_LATEST)
