"""The HTTP/1.1 connection of `warmpool api`: uvicorn's own (httptools), except that the hot lease RPCs over
Connect JSON skip ASGI. uvicorn parses the request and queues it as before (keep-alive, pipelining, flow
control, limits are its own); when a request's turn comes and app.api.vmpool_connect.accepts() takes it, this
reads the body the parser collected, calls the lease service through the same LeaseConnectJSON that the
ASGI stack runs, and writes the answer as one buffer: the bytes uvicorn would write for that handler's ASGI
messages (its status line, its default `server` and `date` headers, `connection: close` when the connection
ends). What prepare() refuses, a request waiting for `100-continue`, and everything else run the ASGI app
exactly as before.

Why: on Connect Lease, uvicorn's ASGI plumbing (the send() that checks and writes every header, the
receive() and its event, the scope copies and dispatch) was about a sixth of the api's CPU.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from app.api.vmpool_connect import LeaseConnectJSON, NotMine, accepts, prepare

log = logging.getLogger("uvicorn.error")  # where uvicorn reports an application's exception


def lease_handler(app: Any) -> LeaseConnectJSON | None:
    """The LeaseConnectJSON inside the served app (app.main.WarmpoolASGI.connect), through the middleware
    uvicorn wraps around it (each keeps the next in `.app`); None if there is none."""
    for _ in range(8):
        handler = getattr(app, "connect", None)
        if isinstance(handler, LeaseConnectJSON):
            return handler
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class LeaseHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (`http="app.api.lease_http:LeaseHttpProtocol"`), see the module doc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease = lease_handler(self.app)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if self.lease is None or self.config.reset_contextvars or cycle.waiting_for_100_continue:
            super()._start_asgi_task(cycle, app)
            return
        headers = accepts(cycle.scope)
        if headers is None:
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(self._lease(cycle, app, headers))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _lease(self, cycle: RequestResponseCycle, app: Any, headers: dict[bytes, bytes]) -> None:
        arrived = time.monotonic()
        while cycle.more_body and not cycle.disconnected:  # the rest of the body, as receive() waits for it
            cycle.flow.resume_reading()
            await cycle.message_event.wait()
            cycle.message_event.clear()
        if cycle.disconnected:
            return
        assert self.lease is not None
        try:
            try:
                call = prepare(cycle.scope["path"], headers, bytes(cycle.body), arrived)
            except NotMine:
                cycle.message_event.set()  # receive() waits for it once more; the body is still the cycle's
                await cycle.run_asgi(app)
                return
            status, extra, body = await self.lease.run(call)
            if cycle.flow.write_paused and not cycle.disconnected:
                await cycle.flow.drain()
            if not cycle.disconnected:
                _write(cycle, status, extra, body)
        except BaseException as exc:  # as uvicorn's run_asgi: reported, and a 500 if nothing was written
            log.error("Exception in ASGI application\n", exc_info=exc)
            if not cycle.response_started:
                await cycle.send_500_response()
            else:
                cycle.transport.close()
        finally:
            cycle.on_response = lambda: None


def _write(cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """The whole response in one write, as RequestResponseCycle.send writes the two ASGI messages of a
    response with a content-length, then the end of the response as it handles it."""
    parts = [STATUS_LINE[status]]
    for name, value in (*cycle.default_headers, *headers):
        parts += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    cycle.response_started = cycle.response_complete = True
    if cycle.access_log:
        scope = cycle.scope
        cycle.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                                 get_path_with_query_string(scope), scope["http_version"], status)
    cycle.transport.write(b"".join(parts))
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
