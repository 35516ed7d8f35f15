"""Operations endpoints: liveness, readiness (database and Redis reachable), Prometheus metrics (per organization
for a tenant token, complete for a `metrics` token)."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.concurrency import run_in_threadpool

from app import auth
from app.db import get_engine
from app.domain.errors import DomainError, PermissionDenied
from app.domain.tokens import Scope
from config.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])

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


class OrganizationSeries:
    """A collector of the per-organization gauges, for one organization or (None) all of them; built per
    request, so two callers with different views never share a gauge."""

    def __init__(self, org_id: str | None) -> None:
        self.org_id = org_id

    def collect(self) -> Iterator[GaugeMetricFamily]:
        only = "" if self.org_id is None else " AND o.id = :org"
        args = {} if self.org_id is None else {"org": self.org_id}
        pools = GaugeMetricFamily("warmpool_pools", "Pools by organization and phase", labels=["organization", "phase"])
        ready = GaugeMetricFamily("warmpool_ready_instances", "Ready (leasable) instances by organization",
                                  labels=["organization"])
        with get_engine().connect() as conn:
            for name, phase, count in conn.execute(sa.text(
                    "SELECT o.name, p.phase, count(*) FROM pools p JOIN organizations o ON o.id = p.organization_id"
                    f" WHERE true{only} GROUP BY o.name, p.phase ORDER BY o.name, p.phase"), args):
                pools.add_metric([name, phase], count)
            for name, count in conn.execute(sa.text(
                    "SELECT o.name, count(i.id) FROM organizations o LEFT JOIN instances i"
                    " ON i.organization_id = o.id AND i.state = 'running' AND i.lease_id IS NULL AND i.draining = false"
                    f" WHERE true{only} GROUP BY o.name ORDER BY o.name"), args):
                ready.add_metric([name], count)
        yield pools
        yield ready


def exposition(org_id: str | None) -> bytes:
    """The metrics one caller may see: its organization's series, or (None) every organization's plus
    the process-wide ones (RPC errors, the Python process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OrganizationSeries(org_id))  # type: ignore[arg-type] - a duck-typed collector
    own = generate_latest(registry)
    return own if org_id is not None else generate_latest(REGISTRY) + own


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
    except Exception:  # noqa: BLE001 - e.g. the database unreachable on a cache miss
        log.exception("could not verify the token of a /metrics request")
        return JSONResponse({"code": "unavailable", "message": "cannot verify the API token right now; retry later"},
                            status_code=503)
    return Response(await run_in_threadpool(exposition, org_id), media_type=CONTENT_TYPE_LATEST)
