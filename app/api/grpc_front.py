"""The gRPC port's own HTTP/2 front: the lease service's unary RPCs are answered on the event loop without
grpc.aio (whose unary call alone costs ~0.3 ms of CPU, as much as the lease itself); the streams of health
and reflection are relayed to this process's grpc.aio server on a private loopback port, which answers them
exactly as before; any other method gets grpc.aio's UNIMPLEMENTED "Method not found!" from the front.

The listening socket and the relay are app/api/grpc_listener.py's; the frames out and a stream's state are
app/api/grpc_out.py's.

HTTP/2 as gRPC clients use it (RFC 9113, RFC 7541): flow control both ways, SETTINGS, PING, RST_STREAM,
GOAWAY for a graceful drain; requests whose messages are compressed are inflated (gzip, deflate).
"""
from __future__ import annotations

import asyncio
import logging
import zlib
from typing import TYPE_CHECKING, Any

import grpc

from app import metrics
from app.api.grpc_out import Outbound, Stream
from app.api.grpc_unary import NATIVE, Refused, answer
from app.api.h2 import (
    ACK, CONN_WINDOW, CONTINUATION, DATA, END_HEADERS, END_STREAM, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR,
    ENHANCE_YOUR_CALM, GOAWAY, HEADERS, MAX_FRAME, MAX_HEADER_BLOCK, MAX_HEADER_LIST, MAX_RESETS_PER_SECOND,
    MAX_STREAMS, MAX_WRITE_BUFFER, PADDED, PING, PREFACE,
    PRIORITY_FLAG, PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM, RST_STREAM, SETTINGS,
    STREAM_WINDOW, WINDOW_UPDATE, Decoder, H2Error, frame, parse_timeout,
)

if TYPE_CHECKING:
    from app.api.grpc_listener import Front

log = logging.getLogger(__name__)


class Connection(Outbound, asyncio.Protocol):
    """One client's HTTP/2 connection."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.loop = front.loop
        self.buf = bytearray()
        self.started = False
        self.decoder = Decoder()
        self.streams: dict[int, Stream] = {}
        self.last_id = 0
        self.send_window = 65535
        self.peer_initial = 65535
        self.peer_frame = MAX_FRAME
        self.recv_unacked = 0
        self.recv_window = CONN_WINDOW  # what the client may still send before our next WINDOW_UPDATE
        self.resets, self.reset_epoch = 0, 0.0  # streams the client reset in the current second
        self.continuing: tuple[int, int, bytearray] | None = None  # (stream, flags, block) awaiting CONTINUATION
        self.transport: asyncio.Transport | None = None
        self.draining = False
        self.closed = False

    # -- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.front.opened(self)
        settings = (3).to_bytes(2, "big") + MAX_STREAMS.to_bytes(4, "big") + \
            (4).to_bytes(2, "big") + STREAM_WINDOW.to_bytes(4, "big") + \
            (6).to_bytes(2, "big") + MAX_HEADER_LIST.to_bytes(4, "big")
        transport.write(frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, (CONN_WINDOW - 65535).to_bytes(4, "big")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for st in list(self.streams.values()):
            self._forget(st, cancel=True)
        self.front.closed(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        try:
            if not self.started:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise H2Error(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                    return
                if buf[:len(PREFACE)] != PREFACE:
                    raise H2Error(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                del buf[:len(PREFACE)]
                self.started = True
            pos, size = 0, len(buf)
            while size - pos >= 9:
                length = int.from_bytes(buf[pos:pos + 3], "big")
                if length > MAX_FRAME:
                    raise H2Error(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
                if size - pos - 9 < length:
                    break
                kind, flags = buf[pos + 3], buf[pos + 4]
                sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, sid, payload)
                if self.closed:
                    return
            del buf[:pos]
            if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                raise H2Error(ENHANCE_YOUR_CALM, "the peer does not read what it asks for")
        except H2Error as exc:
            self._goaway(exc.code, str(exc))

    # -- frames in
    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise H2Error(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            if sid == 0:
                raise H2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
            payload = self._unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(sid, flags, payload)
            else:
                self.continuing = (sid, flags, bytearray(payload))
        elif kind == CONTINUATION:
            if self.continuing is None or self.continuing[0] != sid:
                raise H2Error(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.continuing[2].extend(payload)
            if len(self.continuing[2]) > MAX_HEADER_BLOCK:
                raise H2Error(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                _, first, block = self.continuing
                self.continuing = None
                self._headers(sid, first, bytes(block))
        elif kind == RST_STREAM:
            st = self.streams.get(sid)
            if st is not None:
                self._forget(st, cancel=True)
                self._count_reset()
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if not flags & ACK:
                self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            self.draining = True
            if not self.streams:
                self.transport.close()
        elif kind == WINDOW_UPDATE:
            inc = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if sid == 0:
                self.send_window += inc
                for st in list(self.streams.values()):
                    self._flush(st)
            elif (st := self.streams.get(sid)) is not None:
                st.send_window += inc
                self._flush(st)
        elif kind == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "clients do not push")
        # PRIORITY and unknown frame types are ignored.

    def _count_reset(self) -> None:
        """A stream reset by the client no longer counts toward MAX_STREAMS, so opening and resetting streams
        would start work without bound (CVE-2023-44487, "rapid reset"): past MAX_RESETS_PER_SECOND the
        connection is told to go."""
        now = self.loop.time()
        if now - self.reset_epoch >= 1.0:
            self.reset_epoch, self.resets = now, 0
        self.resets += 1
        if self.resets > MAX_RESETS_PER_SECOND:
            raise H2Error(ENHANCE_YOUR_CALM, "too many streams reset")

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise H2Error(PROTOCOL_ERROR, "bad padding")
        return payload[1:len(payload) - payload[0]]

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise H2Error(FRAME_SIZE_ERROR, "bad SETTINGS length")
        for i in range(0, len(payload), 6):
            key, value = int.from_bytes(payload[i:i + 2], "big"), int.from_bytes(payload[i + 2:i + 6], "big")
            if key == 4:  # INITIAL_WINDOW_SIZE: applies to every open stream's send window
                if value > 0x7FFFFFFF:
                    raise H2Error(FLOW_CONTROL_ERROR, "window too large")
                for st in self.streams.values():
                    st.send_window += value - self.peer_initial
                self.peer_initial = value
            elif key == 5:
                if not MAX_FRAME <= value <= 0xFFFFFF:
                    raise H2Error(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_frame = value
        self.transport.write(frame(SETTINGS, ACK, 0))
        for st in list(self.streams.values()):
            self._flush(st)

    def _headers(self, sid: int, flags: int, block: bytes) -> None:
        fields = self.decoder.decode(block)  # always, to keep the dynamic table in step
        st = self.streams.get(sid)
        if st is not None:  # trailers from the client end its request
            if flags & END_STREAM:
                self._end_of_request(st)
            return
        if sid % 2 == 0 or sid <= self.last_id:
            raise H2Error(PROTOCOL_ERROR, "bad stream id")
        self.last_id = sid
        if self.draining or len(self.streams) >= MAX_STREAMS:
            self.transport.write(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
            return
        headers: dict[str, bytes] = {}
        for name, value in fields:
            key = name.decode("latin-1")
            headers[key] = headers[key] + b"," + value if key in headers and not key.startswith(":") else value
        st = Stream(sid, headers.get(":path", b"").decode("latin-1"), headers, self.peer_initial)
        self.streams[sid] = st
        timeout = headers.get("grpc-timeout")
        if timeout is not None and (seconds := parse_timeout(timeout)) is not None:
            st.deadline = self.loop.time() + seconds
            st.timer = self.loop.call_at(st.deadline, self._expire, st)
        if headers.get(":method") != b"POST" or not headers.get("content-type", b"").startswith(b"application/grpc"):
            self._finish(st, grpc.StatusCode.UNIMPLEMENTED, "only gRPC calls are served on this port")
        elif st.encoding not in ("identity", "gzip", "deflate"):
            self._finish(st, grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {st.encoding!r} is not supported")
        elif st.path not in NATIVE and st.path not in self.front.relayed:
            # grpc.aio's own answer, given here: relayed, its client could report INTERNAL instead when the
            # private server answered before the request stream ended (grpc/grpc#36066)
            self._finish(st, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        elif st.path not in NATIVE:
            st.queue = asyncio.Queue()
            st.task = self.loop.create_task(self.front.relay(self, st))
        if flags & END_STREAM and not st.done:
            self._end_of_request(st)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2Error(PROTOCOL_ERROR, "DATA on stream 0")
        # Flow control is the client's to keep: what it sends past the windows we gave is refused, so what it
        # can make this process hold stays bounded.
        self.recv_window -= len(payload)
        if self.recv_window < 0:
            raise H2Error(FLOW_CONTROL_ERROR, "DATA past the connection's window")
        st = self.streams.get(sid)
        if st is not None:
            st.window -= len(payload)
            if st.window < 0:
                raise H2Error(FLOW_CONTROL_ERROR, "DATA past the stream's window")
        if st is None or st.ended:
            self._ack(len(payload))  # a stream we answered or reset already
            return
        # The connection's window reopens only as requests are consumed, so what a client can make this
        # process hold is bounded by CONN_WINDOW per connection, however many streams it opens.
        st.held += len(payload)
        st.data += self._unpad(flags, payload)
        if not self._messages(st):
            return
        if flags & END_STREAM:
            self._end_of_request(st)

    def _ack(self, n: int) -> None:
        self.recv_unacked += n
        if self.recv_unacked > CONN_WINDOW // 2 and not self.closed:
            self.transport.write(frame(WINDOW_UPDATE, 0, 0, self.recv_unacked.to_bytes(4, "big")))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0

    def _release(self, st: Stream) -> None:
        if st.held:
            self._ack(st.held)
            st.held = 0

    def reopen(self, st: Stream) -> None:
        """A relayed stream's consumer took a message: both windows reopen by what the stream had sent, so
        a client can run at most a window ahead of the server it is relayed to."""
        if st.held and not st.done and not self.closed:
            if not st.ended:
                self.transport.write(frame(WINDOW_UPDATE, 0, st.id, st.held.to_bytes(4, "big")))
                st.window += st.held
            self._release(st)

    def _messages(self, st: Stream) -> bool:
        """Check the message prefix against the size limit; hand complete messages to a relay. False when
        the stream was answered."""
        data = st.data
        while len(data) >= 5:
            size = int.from_bytes(data[1:5], "big")
            if size > self.front.limit:
                self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"Received message larger than max ({size} vs. {self.front.limit})")
                return False
            if len(data) < 5 + size:
                return True
            if st.queue is None:  # unary: one message, then the end of the stream
                if len(data) == 5 + size:
                    return True
                self._finish(st, grpc.StatusCode.INTERNAL, "a unary call takes exactly one request message")
                return False
            message = self._inflate(st, data[0], bytes(data[5:5 + size]))
            if message is None:
                return False
            del data[:5 + size]
            st.queue.put_nowait(message)
        return True

    def _inflate(self, st: Stream, flag: int, message: bytes) -> bytes | None:
        if not flag:
            return message
        if st.encoding not in ("gzip", "deflate"):
            self._finish(st, grpc.StatusCode.INTERNAL, "a compressed message without grpc-encoding")
            return None
        # Inflated no further than the size limit: a few KB of zeros would otherwise become gigabytes.
        inflater = zlib.decompressobj(wbits=31 if st.encoding == "gzip" else 15)
        try:
            inflated = inflater.decompress(message, self.front.limit + 1)
        except zlib.error as exc:
            self._finish(st, grpc.StatusCode.INTERNAL, f"could not decompress the request: {exc}")
            return None
        if len(inflated) > self.front.limit:
            self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"Received message larger than max (more than {self.front.limit} bytes inflated)")
            return None
        if not inflater.eof:
            self._finish(st, grpc.StatusCode.INTERNAL, "could not decompress the request: it is truncated")
            return None
        return inflated

    def _end_of_request(self, st: Stream) -> None:
        st.ended = True
        if st.done:
            return
        if st.queue is not None:  # relayed: the request stream ends
            if self._messages(st):
                if st.data:
                    self._finish(st, grpc.StatusCode.INTERNAL, "the request ends inside a message")
                else:
                    st.queue.put_nowait(None)
            return
        data = st.data
        if len(data) < 5 or len(data) != 5 + int.from_bytes(data[1:5], "big"):
            self._finish(st, grpc.StatusCode.INTERNAL if data else grpc.StatusCode.UNIMPLEMENTED,
                         "a unary call takes exactly one request message")
            return
        message = self._inflate(st, data[0], bytes(data[5:]))
        st.data = bytearray()
        self._release(st)
        if message is not None:
            st.task = self.loop.create_task(self._unary(st, message))

    # -- the lease service, here
    async def _unary(self, st: Stream, message: bytes) -> None:
        metrics.TRANSPORT.set("grpc")  # this RPC's own task: Lease calls are counted under gRPC
        remaining = None if st.deadline is None else st.deadline - self.loop.time()
        authorization = st.headers.get("authorization")
        try:
            response = await answer(self.front.service, st.path, message,
                                    None if authorization is None else authorization.decode("latin-1"), remaining)
        except Refused as refused:
            self._finish(st, refused.code, refused.message, refused.trailers)
            return
        except asyncio.CancelledError:
            return  # reset by the client or out of time: _expire answered
        except Exception:  # never a traceback to the client
            log.exception("gRPC %s failed", st.path)
            self._finish(st, grpc.StatusCode.UNKNOWN, "Unexpected error")
            return
        self._answer(st, b"\x00" + len(response).to_bytes(4, "big") + response)

    def _expire(self, st: Stream) -> None:
        st.timer = None
        if not st.done:
            if st.task is not None:
                st.task.cancel()
            self._finish(st, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
