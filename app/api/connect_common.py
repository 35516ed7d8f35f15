"""What every Connect façade shares: the edge core's auth, unit of work and error mapping (app.api.core)
as Connect calls, the router that authenticates before decoding, and the Stainless pagination-query merge."""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf.timestamp_pb2 import Timestamp

from app import auth
from app.api import core
from app.api.edge import CONNECT, TooLarge, answer, read_body
from app.domain.errors import DomainError
from app.domain.tokens import Scope
from config.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

def to_connect_error(exc: BaseException) -> ConnectError:
    """`exc` as a Connect error, by the edge core's one table (app.api.core.TABLE)."""
    return core.connect_error(exc)


async def call(ctx: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Authenticate the caller (a `member` token: the Gitpod services are member work), then run
    `fn(org_id, *args, session=…, **kwargs)` in one unit of work. Errors are answered by the edge core's
    table; a final one tells Stainless clients not to retry."""
    try:
        return await core.run_as(ctx.request_headers.get("authorization"), Scope.MEMBER, "the Gitpod services",
                                 fn, *args, **kwargs)
    except ConnectError:
        raise
    except Exception as exc:  # noqa: BLE001 - every outcome is a Connect answer
        refusal = core.map_error(exc, core.CONNECT, what=getattr(fn, "__name__", str(fn)))
        if refusal.final:
            _no_retry(ctx)
        hint_retry(ctx, refusal)
        raise ConnectError(refusal.code, refusal.message) from None


def hint_retry(ctx: Any, refusal: core.Refusal) -> None:
    """Retry-After on a Connect answer that knows when to come back (429 resource_exhausted)."""
    if refusal.retry_after is not None:
        ctx.response_headers["retry-after"] = str(refusal.retry_after)


def _no_retry(ctx: Any) -> None:
    # Stainless clients retry 409/429/5xx unless told not to; a domain answer is final.
    try:
        ctx.response_headers["x-should-retry"] = "false"
    except Exception:  # noqa: BLE001 - best effort header
        pass


def require_uuid(value: str, field: str) -> str:
    if not value:
        raise ConnectError(Code.INVALID_ARGUMENT, f"{field} is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ConnectError(Code.INVALID_ARGUMENT, f"{field} must be a UUID, got {value!r}") from None


def optional_uuids(values: Any, field: str, limit: int = 25) -> list[str]:
    values = list(values)
    if len(values) > limit:
        raise ConnectError(Code.INVALID_ARGUMENT, f"{field} takes at most {limit} ids, got {len(values)}")
    return [require_uuid(v, field) for v in values]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_parts(dt: datetime) -> tuple[int, int]:
    """(seconds, nanos) as Timestamp.FromDatetime sets them (a naive datetime is UTC), without its
    struct_time round trip (calendar.timegm of utctimetuple: 3 % of the api's samples on Connect Lease)."""
    since = (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)) - _EPOCH
    return since.days * 86400 + since.seconds, since.microseconds * 1000


def timestamp(dt: Any) -> Timestamp | None:
    if dt is None:
        return None
    seconds, nanos = timestamp_parts(dt)
    return Timestamp(seconds=seconds, nanos=nanos)


class PaginationQueryMerge:
    """ASGI middleware: for JSON POSTs carrying `?token=` / `?pageSize=` (the Stainless SDK's way of
    paging), merge them into the body's `pagination` so the auto-pager moves on instead of looping."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope["query_string"].decode("latin-1"))
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        # Only List* requests have a `pagination` field; adding one elsewhere would make a stray
        # ?token= an "unknown field" error.
        is_list = scope.get("path", "").rstrip("/").rsplit("/", 1)[-1].startswith("List")
        if ctype != "application/json" or not is_list or not ({"token", "pageSize"} & query.keys()):
            await self.app(scope, receive, send)
            return
        limit = get_settings().input.max_body_bytes
        try:
            body, _ = await read_body(receive, limit)
        except TooLarge:
            await answer(send, CONNECT, "too_large", f"the request body is larger than the limit of {limit} bytes")
            return
        try:
            data = json.loads(body or b"{}")
            if isinstance(data, dict):
                pagination = data.get("pagination") or {}
                if isinstance(pagination, dict):
                    if "token" in query:
                        pagination["token"] = query["token"][-1]
                    if "pageSize" in query:
                        pagination.pop("page_size", None)  # a snake_case twin would be a duplicate field
                        size = query["pageSize"][-1]
                        pagination["pageSize"] = int(size) if size.lstrip("-").isdigit() else size
                    data["pagination"] = pagination
                    body = json.dumps(data).encode()
        except ValueError:
            pass  # malformed JSON: let the Connect runtime answer invalid_argument
        new_headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        new_headers.append((b"content-length", str(len(body)).encode()))
        scope = dict(scope, headers=new_headers)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


ARRIVED: ContextVar[float | None] = ContextVar("connect_request_arrived", default=None)
"""time.monotonic() when the router got the request, before authentication: a handler measures the
caller's `connect-timeout-ms` from here (see remaining_seconds)."""


def remaining_seconds(ctx: Any) -> float | None:
    """Seconds left before the caller's deadline (its `connect-timeout-ms`), counted from the moment the
    request arrived; None when it set no deadline."""
    left = ctx.timeout_ms / 1000.0 if ctx.timeout_ms is not None else None
    arrived, header = ARRIVED.get(), ctx.request_headers.get("connect-timeout-ms")
    if arrived is not None and header and header.isdigit():
        since_arrival = int(header) / 1000.0 - (time.monotonic() - arrived)
        left = since_arrival if left is None else min(left, since_arrival)
    return left


class ConnectRouter:
    """ASGI app mounted at a prefix (e.g. /api) that hands each request to the Connect service
    application whose path (/package.Service) follows the prefix; anything else is a bare 404."""

    def __init__(self, apps: list[Any]) -> None:
        self.apps = {a.path: a for a in apps}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        ARRIVED.set(time.monotonic())
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        service = "/" + path.lstrip("/").split("/", 1)[0]
        target = self.apps.get(service)
        if target is None:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if not path.endswith(OPEN_METHODS) and not await _authorized(scope, send, service):
            return
        if scope.get("method") == "POST":
            ctype = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
            if ctype.split(";")[0].strip().lower() not in UNARY_CONTENT_TYPES:
                await _connect_error(send, 415, "invalid_argument",
                                     f"unsupported content type {ctype or '(none)'!r}: "
                                     "send application/json or application/proto")
                return
        await target(scope, receive, send)


UNARY_CONTENT_TYPES = {"application/json", "application/proto"}
LEASE_SERVICE = "/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"
# Open like a health check (the Intrinsic docs: "Ping can be used for latency and health checks").
OPEN_METHODS = (f"{LEASE_SERVICE}/Ping",)


def needed_scope(service: str) -> tuple[Scope, str]:
    """The scope a Connect service needs, and how to name the service in a refusal."""
    if service == LEASE_SERVICE:
        return Scope.LEASE, "the VMPoolLeaseService"
    return Scope.MEMBER, "the Gitpod services"


async def _authorized(scope: dict, send: Callable, service: str) -> bool:
    """Check the bearer token and its scope before the body is decoded or validated, so a caller
    without a valid token always gets `unauthenticated` (one with too small a scope
    `permission_denied`), whatever it sent. The handlers re-check it (from the auth cache)."""
    value = dict(scope.get("headers") or []).get(b"authorization")
    try:
        token = auth.bearer_from_header(value.decode("latin-1") if value is not None else None)
        await auth.require_async(token, *needed_scope(service))  # the database only on a cache miss
    except DomainError as exc:  # unauthenticated, or permission_denied for too small a scope
        refused = core.map_error(exc, CONNECT)
        await _connect_error(send, refused.http_status or 401, refused.body()["code"], refused.message)
        return False
    except Exception:
        log.exception("could not verify an API token")
        await _connect_error(send, 503, "unavailable", "cannot verify the API token right now; retry later")
        return False
    return True


async def _connect_error(send: Callable, status: int, code: str, message: str) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"accept-post", b"application/json, application/proto"),
    ]})
    await send({"type": "http.response.body", "body": body})
