"""What every route of the native /v1 API shares: its edge (the caller's organization from the token, one
unit of work and the error mapping, all from app.api.core), its error shape {"code", "message"} (also for
FastAPI's own validation and routing errors on /v1 paths: `install_error_handlers`), and its parameters."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from app.api import core
from app.api.native_models import ErrorBody
from app.domain import pagination
from app.domain.errors import InvalidArgument
from app.domain.pagination import Page
from app.domain.tokens import Scope

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "/v1"
CODE_OF = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
           405: "method_not_allowed", 409: "failed_precondition", 413: "too_large", 415: "unsupported_media_type",
           429: "resource_exhausted", 502: "provider_error", 503: "unavailable"}
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d} for s, d in (
        (400, "a malformed id or page token"), (401, "missing, malformed, expired or revoked bearer token"),
        (403, "the token's scope does not allow this route (runners and tokens need admin)"),
        (404, "no such object in the caller's organization"),
        (422, "invalid request parameters or body"))
}
bearer = HTTPBearer(auto_error=False, description="an API token: `warmpool token create --org NAME`")


# ---- errors and the unit of work ---------------------------------------------------------------

class ApiError(HTTPException):
    """An answer in our error shape; raised by this module only."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})} or None
        super().__init__(status, message, headers)
        self.code = code


def refused(exc: BaseException, what: str) -> ApiError:
    """`exc` as this API answers it, by the edge core's one table (app.api.core.TABLE)."""
    if isinstance(exc, ApiError):
        return exc
    refusal = core.map_error(exc, core.NATIVE, what=f"the native API ({what})")
    return ApiError(refusal.http_status or 500, refusal.code, refusal.message, refusal.headers())


async def authenticate(request: Request, needed: Scope = Scope.MEMBER) -> str:
    """The caller's organization id, if its token's scope includes `needed` (401 / 403 otherwise)."""
    try:
        caller = await core.caller_async(request.headers.get("authorization"), needed,
                                         f"{request.method} {request.url.path}")
    except Exception as exc:  # noqa: BLE001 - every outcome is an answer in our shape
        raise refused(exc, "authentication") from None
    return caller.organization_id


def scoped_caller(needed: Scope) -> Callable[..., Any]:
    async def caller(request: Request, _: Annotated[Any, Security(bearer)]) -> str:
        """The caller's organization id (the Security parameter only documents the scheme in /docs)."""
        return await authenticate(request, needed)

    caller.needed = needed  # read by route_scope
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
    """`fn(*args, session=…, **kwargs)` in one unit of work (app.api.core), errors as ApiError."""
    try:
        return await core.run(fn, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every outcome is an answer in our shape
        raise refused(exc, getattr(fn, "__name__", str(fn))) from None


def require_id(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(400, "invalid_argument", f"{what} must be a UUID, got {value!r}") from None


def page_of(size: int, token: str) -> Page:
    try:
        return Page(size=size, after=pagination.decode_token(token) if token else None)
    except InvalidArgument:
        raise ApiError(400, "invalid_argument", f"invalid page_token {token!r}: pass the next_page_token of a "
                                                "previous response, or none for the first page") from None


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
            return await previous_validation(request, exc)  # type: ignore[misc]  # FastAPI's are async
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
            return await previous_http(request, exc)  # type: ignore[misc]  # FastAPI's are async
        assert isinstance(exc, HTTPException)
        code = getattr(exc, "code", None) or CODE_OF.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and not isinstance(exc, ApiError):
            message = f"no route {request.method} {request.url.path}; see /docs for the /v1 routes"
        return error_response(exc.status_code, code, message, exc.headers)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
