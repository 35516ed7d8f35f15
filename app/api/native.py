"""The native admin REST API on /v1: runners, pools, instances (with provider logs) and pool status as SSE.

Thin: authenticate (Bearer token -> organization), run one read or write in one unit of work on a
worker thread, answer typed JSON. Every error is `{"code": "<snake_case>", "message": "..."}`; FastAPI's
own validation and routing errors on /v1 paths are answered in that shape too (`install_error_handlers`),
while other façades keep their own. Another organization's objects are `not_found`.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Security
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from app import auth
from app.api.hygiene import input_errors
from app.db import session_scope
from app.domain import compute, instances, pagination, pools, tenancy
from app.domain.errors import DomainError, InvalidArgument
from app.domain.pagination import Page
from app.domain.tokens import Scope
from app.domain.states import InstanceState, PoolKind, PoolPhase
from app.models import Instance, Pool, Runner
from config.settings import get_settings
from workers.providers.base import ProviderError
from workers.providers.registry import provider_for

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "/v1"
POOL_CHANNEL = "warmpool:pool:"
KEEPALIVE_SECONDS = 15.0
SECRET_MARKERS = ("token", "secret", "password")  # pool templates only; runner secrets are masked by model
STATUS_OF = {"invalid_argument": 400, "unauthenticated": 401, "permission_denied": 403, "not_found": 404,
             "already_exists": 409, "failed_precondition": 409, "aborted": 409, "resource_exhausted": 429,
             "unavailable": 503}
CODE_OF = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
           405: "method_not_allowed", 409: "failed_precondition", 413: "too_large", 415: "unsupported_media_type",
           429: "resource_exhausted", 502: "provider_error", 503: "unavailable"}


# ---- wire models -------------------------------------------------------------------------------

class ErrorBody(BaseModel):
    code: str = Field(description="snake_case reason, e.g. not_found, invalid_argument, unauthenticated")
    message: str


class RunnerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    provider: str = Field(min_length=1, max_length=64, description="a provider this deployment offers "
                          "(WARMPOOL_PROVIDERS__ENABLED; local only under dev)")
    settings: dict[str, Any] = Field(default_factory=dict, description="the provider's typed settings: unknown "
                                     "keys, URLs off the operator's allow-list and other secret sources are refused")


class RunnerOut(BaseModel):
    id: str
    name: str
    provider: str
    settings: dict[str, Any] = Field(description="the settings as stored; each secret field of the provider's "
                                     "model (e.g. unikraft `token`) reads '***'")
    created_at: datetime


class RunnerList(BaseModel):
    runners: list[RunnerOut]


class PoolSpec(BaseModel):
    desired_phase: str
    min_size: int
    max_size: int
    stopped_size: int
    reuse: bool
    snapshot_id: str | None
    previous_snapshot_id: str | None
    template: dict[str, Any]
    labels: dict[str, Any]
    group: str
    project_id: str | None
    environment_class_id: str | None
    runner_id: str | None
    lease_default_seconds: int
    lease_max_seconds: int
    reservation_ttl_seconds: int
    rotation_max_surge: int
    empty_policy: str
    idle_recycle_reserved: int
    idle_recycle_scaled: int
    autoscale: dict[str, Any]
    spec_version: int


class PoolStatus(BaseModel):
    phase: str
    failure_message: str
    desired_size: int
    ready: int
    running: int
    stopped: int
    leased: int
    consecutive_failures: int
    next_attempt_at: datetime | None
    refill_seconds: float
    reconciled_at: datetime | None
    status_version: int


class PoolOut(BaseModel):
    id: str
    name: str
    kind: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    spec: PoolSpec
    status: PoolStatus


class PoolList(BaseModel):
    pools: list[PoolOut]
    next_page_token: str = Field(description="pass as page_token for the next page; empty on the last")


class InstanceOut(BaseModel):
    id: str
    pool_id: str
    state: str = Field(description="observed by the provider")
    desired_state: str
    lease_id: str | None
    address: str
    boot_ms: int | None
    snapshot_id: str | None
    provider: str
    provider_ref: str | None
    draining: bool
    stale: bool
    failure_count: int
    last_error: str
    requested_at: datetime
    state_changed_at: datetime
    ready_at: datetime | None
    idle_since: datetime | None


class InstanceList(BaseModel):
    instances: list[InstanceOut]
    next_page_token: str


class InstanceLogs(BaseModel):
    instance_id: str
    provider: str
    provider_ref: str
    lines: int
    output: str


class PoolEvent(BaseModel):
    """The `data` of an `event: pool` line on /v1/events."""

    pool_id: str
    phase: str
    ready: int
    stopped: int
    leased: int
    desired_size: int
    status_version: int


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d} for s, d in (
        (400, "a malformed id or page token"), (401, "missing, malformed, expired or revoked bearer token"),
        (403, "the token's scope does not allow this route (runners and tokens need admin)"),
        (404, "no such object in the caller's organization"),
        (422, "invalid request parameters or body"))
}
bearer = HTTPBearer(auto_error=False, description="an API token: `warmpool token create --org NAME`")
router = APIRouter(prefix=PREFIX, tags=["native admin"], responses=ERRORS)


# ---- errors and the unit of work ---------------------------------------------------------------

class ApiError(HTTPException):
    """An answer in our error shape; raised by this module only."""

    def __init__(self, status: int, code: str, message: str) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(status, message, headers)
        self.code = code


def from_domain(exc: DomainError) -> ApiError:
    return ApiError(STATUS_OF.get(exc.code, 400), exc.code, exc.message)


def internal(what: str) -> ApiError:
    log.exception("unexpected error in the native API (%s)", what)
    return ApiError(500, "internal", "internal error; the server log has the details")


async def authenticate(request: Request, needed: Scope = Scope.MEMBER) -> str:
    """The caller's organization id, if its token's scope includes `needed` (401 / 403 otherwise)."""
    try:
        token = auth.bearer_from_header(request.headers.get("authorization"))
        return (await auth.require_async(token, needed, f"{request.method} {request.url.path}")).organization_id
    except DomainError as exc:
        raise from_domain(exc) from None
    except Exception:
        raise internal("authentication") from None


def scoped_caller(needed: Scope) -> Callable[..., Any]:
    async def caller(request: Request, _: Annotated[Any, Security(bearer)]) -> str:
        """The caller's organization id (the Security parameter only documents the scheme in /docs)."""
        return await authenticate(request, needed)

    caller.needed = needed  # type: ignore[attr-defined] - read by route_scope
    return caller


def route_scope(request: Request) -> Scope:
    """The scope the matched /v1 route needs (member unless it asks for more)."""
    route = request.scope.get("route")
    for dep in getattr(getattr(route, "dependant", None), "dependencies", ()):
        if isinstance(getattr(dep.call, "needed", None), Scope):
            return dep.call.needed
    return Scope.MEMBER


Org = Annotated[str, Depends(scoped_caller(Scope.MEMBER))]
AdminOrg = Annotated[str, Depends(scoped_caller(Scope.ADMIN))]  # runners, tokens


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, session=…, **kwargs)` in one unit of work on a worker thread, errors as ApiError."""
    def work() -> T:
        with input_errors(), session_scope() as session:
            return fn(*args, session=session, **kwargs)

    try:
        return await run_in_threadpool(work)
    except DomainError as exc:
        raise from_domain(exc) from None
    except ApiError:
        raise
    except Exception:
        raise internal(getattr(fn, "__name__", str(fn))) from None


def require_id(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(400, "invalid_argument", f"{what} must be a UUID, got {value!r}") from None


def masked(settings: Any) -> Any:
    """Settings with every value under a key naming a token, secret or password replaced by '***'."""
    if isinstance(settings, dict):
        return {k: "***" if any(m in str(k).lower() for m in SECRET_MARKERS) else masked(v) for k, v in settings.items()}
    if isinstance(settings, list):
        return [masked(v) for v in settings]
    return settings


# ---- encoding ----------------------------------------------------------------------------------

def runner_out(r: Runner) -> RunnerOut:
    return RunnerOut(id=r.id, name=r.name, provider=r.provider, settings=compute.public_settings(r.settings or {}),
                     created_at=r.created_at)


def pool_out(p: Pool) -> PoolOut:
    spec = PoolSpec(
        desired_phase=p.desired_phase, min_size=p.min_size, max_size=p.max_size, stopped_size=p.stopped_size,
        reuse=p.reuse, snapshot_id=p.snapshot_id, previous_snapshot_id=p.previous_snapshot_id,
        template=masked(p.template or {}), labels=p.labels or {}, group=p.group_name, project_id=p.project_id,
        environment_class_id=p.environment_class_id, runner_id=p.runner_id,
        lease_default_seconds=p.lease_default_seconds, lease_max_seconds=p.lease_max_seconds,
        reservation_ttl_seconds=p.reservation_ttl_seconds, rotation_max_surge=p.rotation_max_surge,
        empty_policy=p.empty_policy, idle_recycle_reserved=p.idle_recycle_reserved,
        idle_recycle_scaled=p.idle_recycle_scaled, autoscale=p.autoscale or {}, spec_version=p.spec_version,
    )
    status = PoolStatus(
        phase=p.phase, failure_message=p.failure_message, desired_size=p.desired_size, ready=p.ready_instances,
        running=p.running_instances, stopped=p.stopped_instances, leased=p.leased_instances,
        consecutive_failures=p.consecutive_failures, next_attempt_at=p.next_attempt_at,
        refill_seconds=p.refill_seconds, reconciled_at=p.reconciled_at, status_version=p.status_version,
    )
    return PoolOut(id=p.id, name=p.name, kind=p.kind, created_at=p.created_at, updated_at=p.updated_at,
                   deleted_at=p.deleted_at, spec=spec, status=status)


def instance_out(i: Instance) -> InstanceOut:
    return InstanceOut(
        id=i.id, pool_id=i.pool_id, state=i.state, desired_state=i.desired_state, lease_id=i.lease_id,
        address=i.address, boot_ms=i.boot_ms, snapshot_id=i.snapshot_id, provider=i.provider,
        provider_ref=i.provider_ref, draining=i.draining, stale=i.stale, failure_count=i.failure_count,
        last_error=i.last_error, requested_at=i.requested_at, state_changed_at=i.state_changed_at,
        ready_at=i.ready_at, idle_since=i.idle_since,
    )


def pool_event(p: Pool) -> PoolEvent:
    return PoolEvent(pool_id=p.id, phase=p.phase, ready=p.ready_instances, stopped=p.stopped_instances,
                     leased=p.leased_instances, desired_size=p.desired_size, status_version=p.status_version)


# ---- reads (organization-scoped) ---------------------------------------------------------------

def page_of(size: int, token: str) -> Page:
    try:
        return Page(size=size, after=pagination.decode_token(token) if token else None)
    except InvalidArgument:
        raise ApiError(400, "invalid_argument", f"invalid page_token {token!r}: pass the next_page_token of a "
                                                "previous response, or none for the first page") from None


def list_pools(org_id: str, page: Page, kind: PoolKind | None, phase: PoolPhase | None, *,
               session: Session) -> tuple[list[Pool], str]:
    return pools.list_pools(org_id, page, kind=kind, phase=phase, session=session)


def list_instances(org_id: str, pool_id: str, page: Page, state: InstanceState | None, *,
                   session: Session) -> tuple[list[Instance], str]:
    return instances.list_instances(org_id, pool_id, page, state=state, session=session)


get_instance = instances.get_instance


def log_source(org_id: str, instance_id: str, *, session: Session) -> tuple[Runner, str]:
    """The runner whose adapter holds the instance's console output, and the provider's reference."""
    inst = get_instance(org_id, instance_id, session=session)
    if not inst.provider_ref:
        raise ApiError(409, "failed_precondition", f"instance {instance_id} has no provider resource yet "
                                                   f"(state {inst.state}); try again once it is provisioning")
    pool = session.get(Pool, inst.pool_id)
    runner = session.get(Runner, pool.runner_id) if pool is not None and pool.runner_id else None
    if runner is None:
        raise ApiError(409, "failed_precondition", f"the pool of instance {instance_id} has no runner any more")
    return runner, inst.provider_ref


# ---- routes ------------------------------------------------------------------------------------

IdPath = Annotated[str, Path(max_length=64)]
PageSize = Annotated[int, Query(ge=1, le=100, description="rows per page")]
PageToken = Annotated[str, Query(max_length=512, description="next_page_token of the previous page")]


@router.get("/runners", summary="List the organization's runners")
async def get_runners(org_id: AdminOrg) -> RunnerList:
    return RunnerList(runners=[runner_out(r) for r in await run(tenancy.list_runners, org_id)])


@router.post("/runners", status_code=201, summary="Create a runner: a provider plus its settings",
             responses={400: {"model": ErrorBody, "description": "a provider not offered here, or settings its "
                                                                 "typed model refuses"},
                        409: {"model": ErrorBody, "description": "a runner of that name exists"}})
async def create_runner(body: RunnerIn, org_id: AdminOrg) -> RunnerOut:
    return runner_out(await run(tenancy.create_runner, org_id, body.name, body.provider, body.settings))


@router.get("/runners/{runner_id}", summary="One runner")
async def get_runner(runner_id: IdPath, org_id: AdminOrg) -> RunnerOut:
    return runner_out(await run(tenancy.get_runner, org_id, require_id(runner_id, "runner id")))


@router.get("/pools", summary="List pools of every kind (Gitpod, named, pod pools), a page at a time")
async def get_pools(org_id: Org, kind: PoolKind | None = None, phase: PoolPhase | None = None,
                    page_size: PageSize = 50, page_token: PageToken = "") -> PoolList:
    rows, token = await run(list_pools, org_id, page_of(page_size, page_token), kind, phase)
    return PoolList(pools=[pool_out(p) for p in rows], next_page_token=token)


@router.get("/pools/{pool_id}", summary="One pool: its spec and status (sizes, snapshots, phase, counters)")
async def get_pool(pool_id: IdPath, org_id: Org) -> PoolOut:
    return pool_out(await run(pools.get_pool, org_id, require_id(pool_id, "pool id")))


@router.get("/pools/{pool_id}/instances", summary="A pool's instances (deleted ones only when asked by state)")
async def get_pool_instances(pool_id: IdPath, org_id: Org, state: InstanceState | None = None,
                             page_size: PageSize = 50, page_token: PageToken = "") -> InstanceList:
    rows, token = await run(list_instances, org_id, require_id(pool_id, "pool id"), page_of(page_size, page_token), state)
    return InstanceList(instances=[instance_out(i) for i in rows], next_page_token=token)


@router.get("/instances/{instance_id}", summary="One instance: observed and desired state, lease, address")
async def get_one_instance(instance_id: IdPath, org_id: Org) -> InstanceOut:
    return instance_out(await run(get_instance, org_id, require_id(instance_id, "instance id")))


@router.get("/instances/{instance_id}/logs", summary="The instance's console output, from its provider",
            responses={409: {"model": ErrorBody, "description": "no provider resource yet"},
                       502: {"model": ErrorBody, "description": "the provider failed"}})
async def get_instance_logs(instance_id: IdPath, org_id: Org,
                            lines: Annotated[int, Query(ge=1, le=10000, description="the last N lines")] = 100,
                            ) -> InstanceLogs:
    runner, ref = await run(log_source, org_id, require_id(instance_id, "instance id"))

    def read() -> str:
        return provider_for(runner.provider, runner.settings, key=runner.id).logs(ref, lines)

    try:
        output = await run_in_threadpool(read)
    except (ProviderError, LookupError) as exc:
        raise ApiError(502, "provider_error",
                       f"provider {runner.provider!r} could not read the logs of {ref}: {exc}") from None
    return InstanceLogs(instance_id=instance_id, provider=runner.provider, provider_ref=ref, lines=lines, output=output)


# ---- quota (read-only for tenants: the operator sets it with `warmpool quota set`) -------------

class QuotaLimits(BaseModel):
    max_pool_size: int = Field(description="largest min/max/stopped size of one pool")
    max_pools: int = Field(description="live pools the organization may have")
    max_instances: int = Field(description="instances the organization may hold")
    max_pools_per_request: int = Field(description="pod pools one openYuanrong create request may carry")
    max_creating: int = Field(description="instances being created at once")


class QuotaUsage(BaseModel):
    pools: int = Field(description="live pools now")
    admitted_instances: int = Field(description="the live pools' max sizes plus stopped tiers")
    instances: int = Field(description="instances that exist or are being made")


class QuotaOut(BaseModel):
    limits: QuotaLimits
    usage: QuotaUsage


def quota_view(org_id: str, *, session: Session) -> QuotaOut:
    from dataclasses import asdict

    from app.domain import quotas

    return QuotaOut(limits=QuotaLimits(**asdict(quotas.quota_of(org_id, session=session))),
                    usage=QuotaUsage(**quotas.usage(org_id, session=session)))


@router.get("/quota", summary="The organization's quota and its usage (set by the operator, never by a tenant)")
async def get_quota(org_id: Org) -> QuotaOut:
    return await run(quota_view, org_id)


# ---- pool status as Server-Sent Events ---------------------------------------------------------

class EventStream(StreamingResponse):
    """text/event-stream. Not FastAPI's SSE response class: as a route's response_class that one makes
    FastAPI drive the endpoint as a generator, with its own `: ping` keep-alives."""

    media_type = "text/event-stream"


def _json_error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "`event: pool` frames whose data is a PoolEvent, and `: keep-alive` comments",
          "content": {"text/event-stream": {"itemSchema": {
              "type": "object", "required": ["event", "data"],
              "properties": {"event": {"const": "pool"}, "data": {
                  "type": "string", "contentMediaType": "application/json",
                  "contentSchema": PoolEvent.model_json_schema()}}}}}},
    **{status: _json_error(d["description"]) for status, d in ERRORS.items()},
    503: _json_error("Redis is unreachable"),
}


@router.get("/events", response_class=EventStream, responses=EVENT_STREAM_DOC,
            summary="Pool status changes as Server-Sent Events (`event: pool`), keep-alive every 15 s")
async def stream_events(
    org_id: Org, pool_id: Annotated[str | None, Query(max_length=64, description="only this pool")] = None,
) -> EventStream:
    if pool_id is not None:
        pool_id = (await run(pools.get_pool, org_id, require_id(pool_id, "pool_id"))).id
    client = aioredis.Redis.from_url(get_settings().redis_url, socket_connect_timeout=2)
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(POOL_CHANNEL + "*")
        # Wait for the confirmation: once the client sees the stream open, no change can be missed.
        await pubsub.get_message(timeout=2)
    except (RedisError, OSError) as exc:
        await close(pubsub, client)
        raise ApiError(503, "unavailable", f"cannot subscribe to pool changes: Redis is unreachable ({exc})") from None
    return EventStream(frames(pubsub, client, org_id, pool_id),
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def frames(pubsub: Any, client: Any, org_id: str, pool_id: str | None) -> AsyncIterator[bytes]:
    """The SSE stream; the subscription is closed however it ends (the client leaving cancels it)."""
    try:
        async for frame in pool_events(pubsub, org_id, pool_id):
            yield frame
    except (RedisError, OSError) as exc:
        log.warning("pool event stream ended: Redis connection lost (%s)", exc)
    except Exception:  # noqa: BLE001 - e.g. the database gone: end the stream, the client reconnects
        log.warning("pool event stream ended by an unexpected error", exc_info=True)
    finally:
        await close(pubsub, client)


async def close(pubsub: Any, client: Any) -> None:
    with anyio.CancelScope(shield=True):  # runs during cancellation; unshielded awaits would be cut short
        try:
            await pubsub.aclose()
            await client.aclose()
        except (RedisError, OSError):
            pass


def _status_of(pool_id: str) -> Pool | None:
    with session_scope() as session:
        return session.get(Pool, pool_id)


async def pool_events(pubsub: Any, org_id: str, only: str | None = None,
                      keepalive: float | None = None) -> AsyncIterator[bytes]:
    """SSE frames for the caller's pools from a psubscribed `pubsub`: `: connected`, then `event: pool`
    for each status change (a notification whose status_version was already sent is skipped) and a
    `: keep-alive` comment every `keepalive` seconds."""
    every = KEEPALIVE_SECONDS if keepalive is None else keepalive
    loop = asyncio.get_running_loop()
    sent: dict[str, int] = {}
    foreign: set[str] = set()  # other organizations' pools: never looked up twice
    yield b": connected\n\n"
    next_ping = loop.time() + every
    while True:
        left = next_ping - loop.time()
        if left <= 0:
            yield b": keep-alive\n\n"
            next_ping += every
            continue
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if msg is None or msg.get("type") != "pmessage":
            continue
        channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else str(msg["channel"])
        changed = channel.removeprefix(POOL_CHANNEL)
        if (only is not None and changed != only) or changed in foreign:
            continue
        pool = await run_in_threadpool(_status_of, changed)
        if pool is None:
            continue
        if pool.organization_id != org_id:
            foreign.add(changed)
            continue
        if sent.get(changed) == pool.status_version:
            continue
        sent[changed] = pool.status_version
        yield b"event: pool\ndata: " + pool_event(pool).model_dump_json().encode() + b"\n\n"


# ---- error shape on /v1 ------------------------------------------------------------------------

def _ours(request: Request) -> bool:
    path = request.url.path
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer validation and routing errors on /v1 paths as {code, message}; other paths keep whatever
    handler was installed before (FastAPI's defaults unless another façade set its own)."""
    previous_validation = app.exception_handlers.get(RequestValidationError, request_validation_exception_handler)
    previous_http = app.exception_handlers.get(HTTPException, http_exception_handler)

    async def on_validation(request: Request, exc: Exception) -> Any:
        if not _ours(request):
            return await previous_validation(request, exc)
        try:
            await authenticate(request, route_scope(request))  # the body is parsed before dependencies run: say 401/403 first
        except ApiError as err:
            return error_response(err.status_code, err.code, err.detail, err.headers)
        assert isinstance(exc, RequestValidationError)
        problems = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())), e.get("msg", "invalid"))
                    for e in exc.errors()]
        return error_response(422, "invalid_argument", "; ".join(problems) or "invalid request")

    async def on_http(request: Request, exc: Exception) -> Any:
        if not _ours(request):
            return await previous_http(request, exc)
        assert isinstance(exc, HTTPException)
        code = getattr(exc, "code", None) or CODE_OF.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and not isinstance(exc, ApiError):
            message = f"no route {request.method} {request.url.path}; see /docs for the /v1 routes"
        return error_response(exc.status_code, code, message, exc.headers)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
