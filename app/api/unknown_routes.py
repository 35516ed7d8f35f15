"""Unknown paths and methods answer {code, message} everywhere: FastAPI's routing 404/405 outside /v1 (the
native API maps its own), and the Connect router's errors that would otherwise have an empty body."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

ROUTING = {404: "not_found", 405: "method_not_allowed"}


def install(app: FastAPI) -> None:
    """Install before the façades' own handlers: they hand paths that are not theirs on to this one."""

    async def on_http(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /docs for the routes"
        elif exc.status_code == 405 and exc.detail == "Method Not Allowed":
            message = f"{request.method} is not allowed on {request.url.path}"
        else:  # raised by a route with its own detail: FastAPI's shape, as before
            return await http_exception_handler(request, exc)
        return JSONResponse({"code": ROUTING[exc.status_code], "message": message}, status_code=exc.status_code,
                            headers=exc.headers)

    app.add_exception_handler(HTTPException, on_http)


# Connect's codes for HTTP statuses that come without a Connect error body (connectrpc.com/docs/protocol,
# "HTTP to Error Code"), and what the caller should do instead.
CONNECT_CODE = {404: "unimplemented", 405: "unimplemented", 415: "invalid_argument"}
CONNECT_HINT = {
    404: "no such Connect service or method: {path}",
    405: "{method} is not allowed on {path}: call Connect methods with POST (GET only for idempotent methods, "
         "with ?encoding=json&message=…)",
    415: "a Connect GET needs ?encoding=json (or proto) and &message=… in the query; or POST the request",
}


class ConnectErrorBodies:
    """ASGI middleware for the Connect mount: an error status sent with an empty body (the router's unknown
    service, a method's 405, an unusable GET) gets a Connect error body {code, message}."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] in CONNECT_CODE:
                held["start"] = message  # wait for the body: only an empty one is replaced
                return
            if message["type"] == "http.response.body" and "start" in held:
                start = held.pop("start")
                if not message.get("body") and not message.get("more_body"):
                    await self._error(send, start, scope)
                    return
                await send(start)
            await send(message)

        await self.app(scope, receive, wrapped)

    @staticmethod
    async def _error(send: Callable, start: dict, scope: dict) -> None:
        status = start["status"]
        message = CONNECT_HINT[status].format(method=scope.get("method", ""), path=scope.get("path", ""))
        body = json.dumps({"code": CONNECT_CODE[status], "message": message}).encode()
        keep = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        await send({"type": "http.response.start", "status": status, "headers": keep + [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
