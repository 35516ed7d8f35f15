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
    it has. The connections are uvicorn's: it drains them itself (its server state lists them)."""

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


class SharedPortLoop(_Base):  # type: ignore[valid-type,misc]
    """uvicorn's loop (`--loop app.serve_loop:SharedPortLoop`): a server on an already bound socket, which
    uvicorn makes only for a worker of several, is a SharedServer; anything else is the base loop's."""

    async def create_server(self, protocol_factory: Any, host: Any = None, port: Any = None, *,
                            sock: socket.socket | None = None, ssl: Any = None, backlog: int = 100,
                            **kwargs: Any) -> Any:
        if sock is None:
            return await super().create_server(protocol_factory, host, port, ssl=ssl, backlog=backlog, **kwargs)
        return SharedServer(self, sock, protocol_factory, ssl, backlog)
