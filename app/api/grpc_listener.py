"""The gRPC port's listener: the HTTP/2 front's connections (app/api/grpc_front.py) come from here, and the
streams of the methods the front relays (health, reflection) go from here to this process's grpc.aio server.

The listening socket is the one `warmpool api` bound before starting its workers (app.serve), shared like
the HTTP socket and taken from the same way (app.accept: the worker serving fewer connections takes the next
one). Each worker counts its open connections in `warmpool_grpc_connections` (per process).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from app import metrics
from app.accept import SharedAccept, Tally
from app.api.grpc_front import Connection
from app.api.grpc_out import Stream
from app.api.h2 import RESERVED

log = logging.getLogger(__name__)


def methods(*services: str) -> frozenset[str]:
    """The full paths (/package.Service/Method) of the named services' methods, from protobuf's default pool."""
    pool = descriptor_pool.Default()
    return frozenset(f"/{name}/{m.name}" for name in services for m in pool.FindServiceByName(name).methods)


class Front:
    """Serves the gRPC port on the running loop from `sock` (listening); `backend` is the private grpc.aio server's
    address for the streams of the `relayed` methods (full paths); other methods the front does not answer get
    UNIMPLEMENTED. `tally`: other workers accept from the same socket and count there (app.accept)."""

    def __init__(self, sock: socket.socket, service: Any, backend: str, relayed: frozenset[str], limit: int,
                 tally: Tally | None) -> None:
        self.sock, self.service, self.backend, self.relayed, self.limit = sock, service, backend, relayed, limit
        self.shared = tally is not None
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self._channel: grpc.aio.Channel | None = None
        self.acceptor = SharedAccept(sock, self._adopt, tally=tally)

    def start(self) -> None:
        self._gauge = metrics.GRPC_CONNECTIONS.labels("shared" if self.shared else "own")
        self._gauge.set(0)  # this process serves the port from now on
        self.acceptor.start()

    def _adopt(self, conn: socket.socket) -> None:
        self.loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: Connection(self), conn)
        except OSError as exc:
            log.info("gRPC connection dropped at accept: %s", exc)
            conn.close()
            self.acceptor.closed()

    def opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._gauge.set(len(self.connections))

    def closed(self, conn: Connection) -> None:
        if conn in self.connections:
            self.acceptor.closed()
        self.connections.discard(conn)
        self._gauge.set(len(self.connections))

    async def stop(self, grace: float) -> None:
        """Stop accepting, drain every connection (GOAWAY), close what is left after `grace` seconds."""
        self.acceptor.stop()
        for conn in list(self.connections):
            conn.drain()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._channel is not None:
            await self._channel.close()

    # -- relayed streams
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.backend, options=[
                ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        return self._channel

    async def relay(self, conn: Connection, st: Stream) -> None:
        """A stream the lease service does not answer here, relayed to grpc.aio as raw messages."""
        metadata = []
        for key, value in st.headers.items():
            if key.startswith(":") or key.startswith("grpc-") or key in RESERVED:
                continue
            if key.endswith("-bin"):
                try:
                    metadata.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
                except ValueError:
                    continue
            else:
                metadata.append((key, value.decode("latin-1")))

        async def requests() -> AsyncIterator[bytes]:
            while (message := await st.queue.get()) is not None:
                conn.reopen(st)
                yield message

        timeout = None if st.deadline is None else max(0.0, st.deadline - self.loop.time())
        call = self.channel().stream_stream(st.path)(requests(), metadata=metadata, timeout=timeout)
        try:
            async for message in call:
                if not st.headers_sent:
                    conn.send_headers(st, await call.initial_metadata())
                conn.send_message(st, message)
            code, details, trailing = await call.code(), await call.details(), await call.trailing_metadata()
        except grpc.aio.AioRpcError as err:
            code, details, trailing = err.code(), err.details(), err.trailing_metadata()
        except asyncio.CancelledError:
            call.cancel()
            raise
        conn._finish(st, code, details or "", [(k, v) for k, v in trailing or ()])

