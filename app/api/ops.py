"""Operations endpoints: liveness, readiness (database and Redis reachable), Prometheus metrics."""
from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.concurrency import run_in_threadpool

from app import auth
from app.db import get_engine
from app.domain.errors import DomainError
from config.settings import get_settings

router = APIRouter(tags=["ops"])

POOLS_BY_PHASE = Gauge("warmpool_pools", "Pools by phase", ["phase"])
READY_INSTANCES = Gauge("warmpool_ready_instances", "Ready (leasable) instances over all pools")
RPC_ERRORS = Counter("warmpool_rpc_errors_total", "Errors answered to clients", ["facade", "code"])


@router.get("/healthz", summary="Liveness: the process serves HTTP")
def healthz() -> dict:
    return {"status": "ok"}


def _check_db() -> None:
    with get_engine().connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _check_redis() -> None:
    import redis

    redis.Redis.from_url(get_settings().redis_url, socket_timeout=1, socket_connect_timeout=1).ping()


@router.get("/readyz", summary="Readiness: the database and Redis are reachable")
async def readyz() -> JSONResponse:
    checks: dict[str, str] = {}
    for name, fn in (("database", _check_db), ("redis", _check_redis)):
        try:
            await run_in_threadpool(fn)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - a readiness probe reports, never raises
            checks[name] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


def _collect() -> None:
    with get_engine().connect() as conn:
        POOLS_BY_PHASE.clear()
        for phase, count in conn.execute(sa.text("SELECT phase, count(*) FROM pools GROUP BY phase")):
            POOLS_BY_PHASE.labels(phase=phase).set(count)
        READY_INSTANCES.set(conn.execute(sa.text(
            "SELECT count(*) FROM instances WHERE state = 'running' AND lease_id IS NULL AND draining = false"
        )).scalar_one())


@router.get("/metrics", summary="Prometheus metrics (needs a token unless WARMPOOL_METRICS_PUBLIC=true)")
async def metrics(request: Request) -> Response:
    if not get_settings().metrics_public:
        try:
            token = auth.bearer_from_header(request.headers.get("authorization"))
            await run_in_threadpool(auth.organization_for, token)
        except DomainError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, status_code=401)
    await run_in_threadpool(_collect)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
