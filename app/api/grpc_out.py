"""The gRPC front's frames out (app/api/grpc_front.py reads them in): a stream's state, and what one
connection sends on it: headers, messages within both flow-control windows, trailers with the status,
RST_STREAM and GOAWAY (a graceful drain, or ENHANCE_YOUR_CALM for a peer that abuses the connection)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from app.api.h2 import (
    DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, GOAWAY, HEADERS, NO_ERROR, OK_TRAILERS, RESPONSE_HEADERS,
    RST_STREAM, STREAM_WINDOW, frame, metadata_block, status_block,
)

log = logging.getLogger(__name__)


class Stream:
    __slots__ = ("id", "path", "headers", "data", "ended", "task", "queue", "deadline", "timer", "send_window",
                 "pending", "trailers", "headers_sent", "held", "done", "encoding", "window")

    def __init__(self, sid: int, path: str, headers: dict[str, bytes], send_window: int) -> None:
        self.id, self.path, self.headers = sid, path, headers
        self.data = bytearray()
        self.ended = self.headers_sent = self.done = False
        self.task: asyncio.Task | None = None
        self.queue: asyncio.Queue | None = None
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.send_window = send_window
        self.pending = bytearray()
        self.trailers: bytes | None = None
        self.held = 0  # bytes received whose connection-level window is given back when they are consumed
        self.window = STREAM_WINDOW  # what the client may still send on it (our SETTINGS_INITIAL_WINDOW_SIZE)
        self.encoding = headers.get("grpc-encoding", b"identity").decode("latin-1")


class Outbound:
    """What a Connection sends; its state is the Connection's (app/api/grpc_front.py)."""

    transport: Any
    streams: dict[int, Stream]
    send_window: int
    peer_frame: int
    last_id: int
    draining: bool
    closed: bool

    def _release(self, st: Stream) -> None:  # the Connection's: gives back the connection window st held
        raise NotImplementedError

    def send_headers(self, st: Stream, metadata: Any = ()) -> None:
        if not st.headers_sent and not st.done:
            st.headers_sent = True
            self.transport.write(frame(HEADERS, END_HEADERS, st.id, RESPONSE_HEADERS + metadata_block(metadata)))

    def send_message(self, st: Stream, message: bytes) -> None:
        if not st.done:
            st.pending += b"\x00" + len(message).to_bytes(4, "big") + message
            self._flush(st)

    def _answer(self, st: Stream, body: bytes) -> None:
        """A unary answer: headers, the message and the OK trailers, in one write when the windows allow."""
        if st.done or self.closed:
            return
        if not st.pending and len(body) <= min(st.send_window, self.send_window, self.peer_frame):
            st.send_window -= len(body)
            self.send_window -= len(body)
            st.headers_sent = True
            self.transport.write(frame(HEADERS, END_HEADERS, st.id, RESPONSE_HEADERS) + frame(DATA, 0, st.id, body)
                                 + frame(HEADERS, END_HEADERS | END_STREAM, st.id, OK_TRAILERS))
            self._close_stream(st)
            return
        self.send_headers(st)
        st.pending += body
        self.finish_with(st, OK_TRAILERS)

    def _finish(self, st: Stream, code: grpc.StatusCode, message: str, trailers: Any = ()) -> None:
        """End the stream with a status: trailers-only when nothing was sent yet."""
        if st.done or self.closed:
            return
        if st.task is not None and st.task is not asyncio.current_task():
            st.task.cancel()
        block = status_block(code, message, trailers)
        if not st.headers_sent:
            st.headers_sent = True
            st.pending.clear()
            self.transport.write(frame(HEADERS, END_HEADERS | END_STREAM, st.id, RESPONSE_HEADERS + block))
            self._close_stream(st)
            return
        self.finish_with(st, block)

    def finish_with(self, st: Stream, trailers: bytes) -> None:
        st.trailers = trailers
        self._flush(st)

    def _flush(self, st: Stream) -> None:
        if self.closed or st.done:
            return
        while st.pending:
            n = min(len(st.pending), st.send_window, self.send_window, self.peer_frame)
            if n <= 0:
                return
            chunk = bytes(st.pending[:n])
            del st.pending[:n]
            st.send_window -= n
            self.send_window -= n
            self.transport.write(frame(DATA, 0, st.id, chunk))
        if st.trailers is not None:
            self.transport.write(frame(HEADERS, END_HEADERS | END_STREAM, st.id, st.trailers))
            self._close_stream(st)

    def _close_stream(self, st: Stream) -> None:
        st.done = True
        if not st.ended:  # answered before the request ended: the client need not send the rest
            self.transport.write(frame(RST_STREAM, 0, st.id, NO_ERROR.to_bytes(4, "big")))
        self._forget(st, cancel=False)

    def _forget(self, st: Stream, cancel: bool) -> None:
        st.done = True
        self._release(st)
        self.streams.pop(st.id, None)
        if st.timer is not None:
            st.timer.cancel()
        if cancel and st.task is not None:
            st.task.cancel()
        if st.queue is not None:
            st.queue.put_nowait(None)
        if self.draining and not self.streams and self.transport is not None:
            self.transport.close()

    def _goaway(self, code: int, why: str) -> None:
        log.info("gRPC connection closed: %s", why)
        if self.transport is not None and not self.closed:
            self.transport.write(frame(GOAWAY, 0, 0, self.last_id.to_bytes(4, "big") + code.to_bytes(4, "big")))
            if code == ENHANCE_YOUR_CALM:  # what is queued may never be read: do not wait for it to drain
                self.transport.abort()
            else:
                self.transport.close()
        self.closed = True

    def drain(self) -> None:
        """Graceful: streams begun so far are answered, later ones refused (the client retries them
        elsewhere), and the connection closes when the last one ends."""
        if self.closed or self.draining:
            return
        self.draining = True
        self.transport.write(frame(GOAWAY, 0, 0, self.last_id.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))
        if not self.streams:
            self.transport.close()
