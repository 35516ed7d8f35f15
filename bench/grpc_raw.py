"""gRPC unary load over raw HTTP/2 from one asyncio process, for calls whose request differs per call (Return
takes an instance id: h2load sends one body for every request). A load generator of our own, cheap per call
(pre-encoded header blocks, one write per call, frames parsed with app.api.h2), so Return is measured with a
generator about as light as h2load's for Lease; the figures are in bench/lease.py.

It checks every answer's grpc-status (0 is ok, anything else an error) and times each call from its write to
its trailers.
"""
from __future__ import annotations

import asyncio
import socket
import time

from app.api import h2

BIG = 0x7FFFFFFF


def _block(target: str, path: str, token: str) -> bytes:
    """The request's header block, as literals without indexing (no table state to keep with the server)."""
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", target.encode()),
              (b"content-type", b"application/grpc"), (b"te", b"trailers"),
              (b"authorization", f"Bearer {token}".encode())]
    return b"".join(h2._literal(name, value) for name, value in fields)


async def _client(host: str, port: int, block: bytes, bodies: list[bytes], stop_at: float,
                  latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    settings = (4).to_bytes(2, "big") + BIG.to_bytes(4, "big")  # our windows never close: answers are small
    writer.write(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, settings)
                 + h2.frame(h2.WINDOW_UPDATE, 0, 0, (BIG - 65535).to_bytes(4, "big")))
    decoder, buf, sid = h2.Decoder(), bytearray(), 1
    try:
        while bodies and time.monotonic() < stop_at:
            body = bodies.pop()
            started = time.perf_counter()
            writer.write(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block)
                         + h2.frame(h2.DATA, h2.END_STREAM, sid, b"\x00" + len(body).to_bytes(4, "big") + body))
            status = None
            while status is None:
                while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise ConnectionError("the server closed the connection")
                    buf += chunk
                n = int.from_bytes(buf[:3], "big")
                kind, flags, stream, payload = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & BIG, bytes(buf[9:9 + n])
                del buf[:9 + n]
                if kind == h2.SETTINGS and not flags & h2.ACK:
                    writer.write(h2.frame(h2.SETTINGS, h2.ACK, 0))
                elif kind == h2.PING and not flags & h2.ACK:
                    writer.write(h2.frame(h2.PING, h2.ACK, 0, payload))
                elif kind == h2.HEADERS:
                    fields = dict(decoder.decode(payload))  # every block, to keep the decoder's table in step
                    if stream == sid and flags & h2.END_STREAM:
                        status = fields.get(b"grpc-status", b"?")
                elif kind == h2.RST_STREAM and stream == sid:
                    status = b"reset"
                elif kind == h2.GOAWAY:
                    raise ConnectionError("the server sent GOAWAY")
            if status == b"0":
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(1)
            sid += 2
    finally:
        writer.close()


def run(target: str, path: str, token: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` connections, one call in flight on each, until `bodies` run out or `seconds` pass."""
    host, port = target.rsplit(":", 1)
    latencies: list[float] = []
    errors: list[int] = []
    queue = list(reversed(bodies))  # pop() from the end: the calls go in the given order

    async def main() -> float:
        started = time.monotonic()
        block = _block(target, path, token)
        await asyncio.gather(*(_client(host, int(port), block, queue, started + seconds, latencies, errors)
                               for _ in range(clients)))
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    return {"latencies": latencies, "errors": len(errors), "elapsed": elapsed}
