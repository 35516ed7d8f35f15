"""The edge in front of every HTTP façade: body size limits and input hygiene, answered in each wire's
own error format, before a façade (or the database) sees the request.

`InputGuard` wraps the ASGI app. It refuses a body over `input.max_body_bytes` (from Content-Length,
and while reading a body sent without one), a NUL byte in the path or query, and a JSON body that
app.api.hygiene refuses (lone surrogates, NUL bytes, integers beyond int64, nesting too deep). Connect
bodies are only size-checked here: connectrpc enforces the same limit while reading (`read_max_bytes`)
and `HygieneInterceptor` checks the decoded message, so binary proto gets the same rules as JSON.
A caller without a valid token is told `unauthenticated` first, whatever it sent, as everywhere else.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from app import auth
from app.api.core import CONNECT, NATIVE, PODPOOL_HINT, PODPOOL_INVALID_USER_PARAM, PODPOOLS, map_error
from app.api.hygiene import BadInput, check_message, loads
from app.domain.errors import DomainError, InvalidArgument, Unauthenticated
from config.settings import get_settings

log = logging.getLogger(__name__)

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]

OTHER = "other"
# Connect methods that need no token (a health check), as in app.api.connect_common.
OPEN_CONNECT = ("/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Ping",)
# openYuanrong codes (wire/openyuanrong-podpools.md): body problems are the decoder's 130600,
# parameter problems 4104, a bad token 121049; upstream answers every one but 4120 with HTTP 500.
PODPOOL_INVALID_PARAM = 130600


def wire_of(path: str) -> str:
    if path.startswith("/api/"):
        return CONNECT
    if path == "/serverless/v1/podpools" or path.startswith("/serverless/v1/podpools/"):
        return PODPOOLS
    if path == "/v1" or path.startswith("/v1/"):
        return NATIVE
    return OTHER


def refusal(wire: str, kind: str, message: str) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    """(HTTP status, JSON body, extra headers) for `kind` in {unauthenticated, invalid_body,
    invalid_param, too_large} on `wire`: by the edge core's table, but for a body too large (each wire
    has its own word for it) and a pod-pool body that does not decode (the Go decoder's 130600)."""
    if kind == "too_large":
        if wire == CONNECT:
            return 429, {"code": "resource_exhausted", "message": message}, []
        if wire == PODPOOLS:
            return 413, {"code": PODPOOL_INVALID_USER_PARAM, "message": message + PODPOOL_HINT}, []
        return 413, {"code": "too_large", "message": message}, []
    if wire == PODPOOLS and kind == "invalid_body":
        return 500, {"code": PODPOOL_INVALID_PARAM, "message": f"invalid JSON body: {message}"}, []
    exc = Unauthenticated(message) if kind == "unauthenticated" else InvalidArgument(message)
    refused = map_error(exc, wire if wire != OTHER else NATIVE)  # other paths answer like /v1
    headers = [(name.lower().encode(), value.encode()) for name, value in refused.headers().items()]
    return refused.http_status or 400, refused.body(), headers


async def answer(send: Send, wire: str, kind: str, message: str) -> None:
    status, body, headers = refusal(wire, kind, message)
    data = json.dumps(body).encode()
    ctype = b"application/json; charset=utf-8" if wire == PODPOOLS else b"application/json"
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


async def unauthenticated(scope: dict, wire: str) -> str | None:
    """Why the caller is not authenticated, or None (also None where no token is needed)."""
    if wire == OTHER or (wire == CONNECT and scope["path"].endswith(OPEN_CONNECT)):
        return None
    value = dict(scope.get("headers") or []).get(b"authorization")
    try:
        token = auth.bearer_from_header(value.decode("latin-1") if value is not None else None)
        await auth.authenticate_async(token)  # the database only on a cache miss
    except DomainError as exc:
        return exc.message
    except Exception:
        log.warning("could not verify an API token at the edge", exc_info=True)
    return None


class TooLarge(Exception):
    pass


def declared_length(scope: dict) -> int | None:
    raw = dict(scope.get("headers") or []).get(b"content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


async def read_body(receive: Receive, limit: int) -> tuple[bytes, list[dict]]:
    """The whole request body, refusing (TooLarge) as soon as more than `limit` bytes arrived; also the
    messages that came after it (a disconnect), to replay."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), [message]
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks), []


def replaying(body: bytes, after: list[dict], receive: Receive) -> Receive:
    pending = [{"type": "http.request", "body": body, "more_body": False}, *after]

    async def replay() -> dict:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def bad_target(scope: dict) -> str | None:
    """A NUL byte in the path or the (percent-decoded) query string."""
    if "\x00" in scope.get("path", ""):
        return "the request path contains a NUL byte (%00)"
    query = scope.get("query_string") or b""
    if query and b"\x00" in unquote_to_bytes(query):
        return "a query parameter contains a NUL byte (%00)"
    return None


class InputGuard:
    """ASGI middleware: size limits and input hygiene for every HTTP request (see the module doc)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wire = wire_of(scope["path"])
        limit = get_settings().input.max_body_bytes
        problem, kind = bad_target(scope), "invalid_param"
        length = declared_length(scope)
        if problem is None and length is not None and length > limit:
            problem, kind = f"the request body is {length} bytes; the limit is {limit}", "too_large"
        has_body = (length or 0) > 0 or b"chunked" in dict(scope.get("headers") or []).get(b"transfer-encoding", b"")
        if problem is None and has_body and wire != CONNECT:  # Connect reads and checks its own body
            try:
                body, after = await read_body(receive, limit)
            except TooLarge:
                problem, kind = f"the request body is larger than the limit of {limit} bytes", "too_large"
            else:
                receive = replaying(body, after, receive)
                problem, kind = body_problem(body), "invalid_body"
        if problem is None:
            await self.app(scope, receive, send)
            return
        why = await unauthenticated(scope, wire)
        if why is not None:
            await answer(send, wire, "unauthenticated", why)
        else:
            await answer(send, wire, kind, problem)


def body_problem(body: bytes) -> str | None:
    if not body.strip():
        return None
    try:
        loads(body)
    except BadInput as exc:
        return exc.message
    except ValueError:  # malformed JSON (or not UTF-8): the façade answers it in its own words
        return None
    return None


class HygieneInterceptor:
    """Connect unary interceptor: the decoded request message passes check_message, whatever codec
    (JSON or binary proto) carried it, before the handler runs."""

    async def intercept_unary(self, call_next: Callable[..., Awaitable[Any]], request: Any, ctx: Any) -> Any:
        try:
            check_message(request)
        except BadInput as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, exc.message) from None
        return await call_next(request, ctx)
