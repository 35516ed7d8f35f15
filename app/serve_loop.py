"""The event loop of a `warmpool api` worker when several share the HTTP port (app.serve): uvicorn's own (uvloop
where installed), except that a server on the shared socket takes its connections through app.accept, so the
worker serving fewer takes the next one, instead of whichever wakes first taking every one waiting (8 keep-alive
connections from a load generator split 6:2, and one core then served three quarters of the requests)."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

from app import metrics
from app.accept import SharedAccept, Tally

try:
    import uvloop

    _Base: type[asyncio.AbstractEventLoop] = uvloop.Loop
except ImportError:  # pragma: no cover - uvloop is a dependency wherever it builds
    _Base = asyncio.SelectorEventLoop

HTTP_TALLY: Tally | None = None
"""In a worker of several: the workers' HTTP connections (app.serve hands it over as the worker starts)."""


class SharedServer:
    """What uvicorn keeps of `loop.create_server(sock=...)`: close() stops accepting, wait_closed() returns once
    it has. The connections are uvicorn's: it drains them itself (its server state lists them); each writes
    through a OneWrite."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Any, ssl: Any,
                 backlog: int) -> None:
        self.loop, self.factory, self.ssl = loop, factory, ssl
        self.sockets = [sock]
        sock.listen(backlog)  # as the loop's create_server does: the parent only bound it
        self.acceptor = SharedAccept(sock, self._adopt, tally=HTTP_TALLY)
        self.acceptor.start()
        metrics.HTTP_CONNECTIONS.set(0)  # this process serves the port from now on

    def _adopt(self, conn: socket.socket) -> None:
        self.loop.create_task(self._connect(conn))

    def _protocol(self) -> asyncio.BaseProtocol:
        proto = self.factory()
        lost = proto.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self.acceptor.closed()
            metrics.HTTP_CONNECTIONS.set(self.acceptor.open)
            lost(exc)

        proto.connection_lost = connection_lost  # counted out when the connection ends, however it ends
        made = proto.connection_made
        proto.connection_made = lambda transport: made(OneWrite(transport, self.loop))
        metrics.HTTP_CONNECTIONS.set(self.acceptor.open)
        return proto

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self._protocol, conn, ssl=self.ssl)
        except OSError:  # the peer left, or failed the TLS handshake or timed it out, first
            conn.close()
            self.acceptor.closed()
            metrics.HTTP_CONNECTIONS.set(self.acceptor.open)

    def close(self) -> None:
        self.acceptor.stop()

    async def wait_closed(self) -> None:
        return None

    def is_serving(self) -> bool:
        return not self.acceptor.stopped


class OneWrite:
    """A connection's transport whose writes within one turn of the loop leave in one send. uvicorn writes a
    response's head and its body apart: two sends, two segments and two wake-ups of the client for one small
    answer (the head's send was the api's top frame under py-spy, 8.6 % of its samples on Connect Lease; one
    send: 11 % less CPU per call on Ping, 19 % more calls/s, medians of 5 back to back). More than FLUSH_AT bytes
    go at once, so a long response still meets the transport's flow control as it is written."""

    FLUSH_AT = 65536
    __slots__ = ("_transport", "_loop", "_parts", "_size")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._parts: list[bytes] | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        if self._parts is None:
            self._parts, self._size = [bytes(data)], len(data)
            self._loop.call_soon(self.flush)
        else:
            self._parts.append(bytes(data))
            self._size += len(data)
        if self._size > self.FLUSH_AT:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        parts, self._parts, self._size = self._parts, None, 0
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._parts, self._size = None, 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class SharedPortLoop(_Base):  # type: ignore[valid-type,misc]
    """uvicorn's loop (`--loop app.serve_loop:SharedPortLoop`): a server on an already bound socket, which
    uvicorn makes only for a worker of several, is a SharedServer; anything else is the base loop's."""

    async def create_server(self, protocol_factory: Any, host: Any = None, port: Any = None, *,
                            sock: socket.socket | None = None, ssl: Any = None, backlog: int = 100,
                            **kwargs: Any) -> Any:
        if sock is None:
            return await super().create_server(protocol_factory, host, port, ssl=ssl, backlog=backlog, **kwargs)
        return SharedServer(self, sock, protocol_factory, ssl, backlog)
