"""Unary Connect JSON for the lease service's hot RPCs (Lease, Return, ExtendTo, GetLease), served by a
thin ASGI handler in front of connectrpc: the same LeaseService, the same answers, a fraction of the
layers (no protobuf JSON round trip, orjson, one dict lookup to route).

It takes only requests it can answer exactly as connectrpc would: POST, `application/json`, identity
encoding both ways, a `connect-protocol-version` of 1 (or none), a valid `connect-timeout-ms` (or none),
a declared body within the size limit, a token the cache accepts, and a JSON object of the request's
own fields with plain string/bool values (timestamps parsed by protobuf's own parser). Anything else
(binary proto, compression, a bad token, malformed or unusual JSON, oversize bodies) is replayed to the
regular stack (app.main.WarmpoolASGI.connect), which answers it as before. Errors from the service are
Connect errors byte-compatible with connectrpc's: the status its table gives the code, and
`{"code": …, "message": …}` as json.dumps(ensure_ascii=False) writes it, the code from the edge core's
table (app.api.core.map_error) (tests/integration/test_vmpool_connect.py compares both stacks).

`warmpool api` reaches it without ASGI as well: its HTTP/1.1 connection (app/api/lease_http.py) calls
accepts(), prepare() and LeaseConnectJSON.run() itself and writes the answer in one buffer.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from google.protobuf import json_format

from app import auth
from app.api.connect_common import LEASE_SERVICE
from app.api.core import CONNECT, map_error
from app.api.edge import read_body, replaying
from app.api.hygiene import BadInput, check_message
from app.api.vmpool import LeaseService, default_service
from app.domain.errors import DomainError
from app.domain.tokens import Scope
from config.settings import get_settings
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb

log = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# Connect code -> HTTP status, as connectrpc maps them (connectrpc._protocol._error_to_http_status).
HTTP_STATUS = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504, "not_found": 404,
    "already_exists": 409, "permission_denied": 403, "resource_exhausted": 429, "failed_precondition": 400,
    "aborted": 409, "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}

# (service method, request class, {json name or proto name: (field, kind)}) per RPC.
STR, BOOL, TS = "str", "bool", "ts"
_LEASE_FIELDS = {"pool": ("pool", STR), "expires": ("expires", TS), "serviceTag": ("service_tag", STR),
                 "service_tag": ("service_tag", STR), "reservationId": ("reservation_id", STR),
                 "reservation_id": ("reservation_id", STR)}
_INSTANCE_TAG = {"instance": ("instance", STR), "serviceTag": ("service_tag", STR), "service_tag": ("service_tag", STR)}
METHODS: dict[str, tuple[str, type, dict[str, tuple[str, str]]]] = {
    f"{LEASE_SERVICE}/Lease": ("lease", pb.LeaseRequest, _LEASE_FIELDS),
    f"{LEASE_SERVICE}/Return": ("return_", pb.ReturnRequest, _INSTANCE_TAG),
    f"{LEASE_SERVICE}/GetLease": ("get_lease", pb.GetLeaseRequest, {"instance": ("instance", STR)}),
    f"{LEASE_SERVICE}/ExtendTo": ("extend_to", pb.ExtendToRequest, {
        **_INSTANCE_TAG, "to": ("to", TS), "extendOnly": ("extend_only", BOOL), "extend_only": ("extend_only", BOOL)}),
}
_TYPES = {STR: str, BOOL: bool, TS: str}


class NotMine(Exception):
    """The regular stack answers this request."""


def parse(body: bytes, request_class: type, fields: dict[str, tuple[str, str]]) -> Any:
    """The request message, when the body is a JSON object of the request's own fields with plain values,
    each given once; else NotMine (connectrpc's decoder then answers, with its own errors)."""
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        raise NotMine from None
    if type(data) is not dict:
        raise NotMine
    seen: set[str] = set()
    simple: dict[str, Any] = {}
    timed = False
    for key, value in data.items():
        spec = fields.get(key)
        if spec is None or type(value) is not _TYPES[spec[1]] or spec[0] in seen:
            raise NotMine  # unknown field, null, wrong type, or both spellings of one field
        # A key repeated in the raw JSON would be refused by protobuf's parser and silently merged here.
        if body.count(b'"' + key.encode() + b'"') != 1:
            raise NotMine
        seen.add(spec[0])
        timed = timed or spec[1] == TS
        simple[spec[0]] = value
    if timed:
        try:
            return json_format.ParseDict(data, request_class(), ignore_unknown_fields=False)
        except Exception:  # noqa: BLE001 - connectrpc words the error
            raise NotMine from None
    return request_class(**simple)


@functools.lru_cache(maxsize=256)
def _utc_second(seconds: int) -> str:
    # A burst's leases expire within a few seconds of each other: strftime once per second, not per answer.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def timestamp_json(seconds: int, nanos: int) -> str:
    """A Timestamp as protobuf's JSON writes it: RFC 3339 in UTC, 0, 3, 6 or 9 fraction digits."""
    text = _utc_second(seconds)
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def response_json(msg: Any) -> bytes:
    """LeaseResponse, GetLeaseResponse, ExtendToResponse (a `lease`) or ReturnResponse (empty) as JSON with
    the content protobuf's JSON writer gives (fields at their default are left out)."""
    if not hasattr(msg, "lease") or not msg.HasField("lease"):
        return b"{}"
    lease = msg.lease
    out: dict[str, str] = {}
    if lease.instance:
        out["instance"] = lease.instance
    if lease.pool:
        out["pool"] = lease.pool
    if lease.HasField("expires"):
        out["expires"] = timestamp_json(lease.expires.seconds, lease.expires.nanos)
    if lease.zone:
        out["zone"] = lease.zone
    return orjson.dumps({"lease": out})


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}, ensure_ascii=False).encode("utf-8")


def _remaining(headers: dict[bytes, bytes], arrived: float) -> float | None:
    raw = headers.get(b"connect-timeout-ms")
    if raw is None or raw == b"":
        return None
    if len(raw) > 10 or not raw.isdigit():
        raise NotMine  # connectrpc words the error
    return int(raw) / 1000.0 - (time.monotonic() - arrived)


def accepts(scope: dict) -> dict[bytes, bytes] | None:
    """The request's headers when this handler may take the request, from its method, target and headers
    alone; else None. A query string, or a header given twice, goes to the regular stack."""
    if scope.get("method") != "POST" or scope["path"].removeprefix("/api") not in METHODS \
            or scope.get("query_string"):
        return None
    raw = scope.get("headers") or ()
    headers = dict(raw)
    if len(headers) != len(raw):
        return None
    ctype = headers.get(b"content-type", b"")
    if ctype != b"application/json" and ctype.split(b";")[0].strip().lower() != b"application/json":
        return None
    if headers.get(b"content-encoding", b"identity") != b"identity":
        return None
    if headers.get(b"accept-encoding", b"identity") not in (b"identity", b""):
        return None
    if headers.get(b"connect-protocol-version", b"1") != b"1":
        return None
    length = headers.get(b"content-length")
    if length is None or not length.isdigit() or int(length) > get_settings().input.max_body_bytes:
        return None
    return headers


class LeaseConnectJSON:
    """ASGI: the hot lease RPCs over Connect JSON (see the module doc); `fallback` answers the rest."""

    def __init__(self, fallback: Callable[[dict, Receive, Send], Awaitable[None]],
                 service: LeaseService | None = None) -> None:
        self.fallback = fallback
        self._service = service

    @property
    def service(self) -> LeaseService:
        return self._service or default_service()

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        headers = accepts(scope)
        if headers is None:
            await self.fallback(scope, receive, send)
            return
        body, after = await read_body(receive, get_settings().input.max_body_bytes)  # accepts() held it to this
        try:
            call = prepare(scope["path"], headers, body, arrived)
        except NotMine:
            await self.fallback(scope, replaying(body, after, receive), send)
            return
        status, answer_headers, payload = await self.run(call)
        await send({"type": "http.response.start", "status": status, "headers": answer_headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def run(self, call: Call) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The call's answer: HTTP status, headers and body, a Connect error for every failure."""
        try:
            response = await getattr(self.service, call.attr)(call.authorization, call.request, call.remaining)
        except Exception as exc:  # noqa: BLE001 - every outcome is a Connect error (app.api.core's table)
            refusal = map_error(exc, CONNECT, what=f"VMPoolLeaseService/{call.path.rsplit('/', 1)[-1]}")
            code = refusal.code.value
            body = error_body(code, refusal.message)
            return HTTP_STATUS[code], _headers_for(_ERROR_HEADERS, body, refusal.headers()), body
        body = response_json(response)
        return 200, _headers_for(_OK_HEADERS, body, None), body


class Call(NamedTuple):
    """A request this handler takes, decoded: the service method, its message, the caller's credentials
    and the seconds left of its deadline (None: no deadline)."""
    path: str
    attr: str
    request: Any
    authorization: str | None
    remaining: float | None


def prepare(path: str, headers: dict[bytes, bytes], body: bytes, arrived: float) -> Call:
    """The call, when this handler may answer it (the request passed accepts()); else NotMine."""
    remaining = _remaining(headers, arrived)
    value = headers.get(b"authorization")
    authorization = value.decode("latin-1") if value is not None else None
    # Checked before the body is decoded, as the regular stack does; a refusal is its to word.
    if not _token_ok(authorization):
        raise NotMine
    attr, request_class, fields = METHODS[path.removeprefix("/api")]
    request = parse(body, request_class, fields)
    try:
        check_message(request)
    except BadInput:
        raise NotMine from None
    return Call(path, attr, request, authorization, remaining)


def _token_ok(authorization: str | None) -> bool:
    """True when the token cache knows this token and its scope allows leasing; a miss or a refusal goes
    to the regular stack (which verifies against the database and words any refusal)."""
    try:
        caller = auth.cached(auth.bearer_from_header(authorization))
    except DomainError:
        return False
    return caller is not None and caller.allows(Scope.LEASE)


_OK_HEADERS = [(b"content-type", b"application/json"), (b"content-encoding", b"identity"),
               (b"vary", b"Accept-Encoding")]
_ERROR_HEADERS = [(b"content-type", b"application/json")]


def _headers_for(base: list[tuple[bytes, bytes]], body: bytes,
                 extra: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    return [*base, (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in (extra or {}).items())]
