"""app.serve_loop.OneWrite: a connection's writes within one turn of the loop leave in one send (uvicorn
writes a response's head and body apart); a long response is not held back; close and write_eof send what
is held first, abort drops it. The workers serving real connections through it: tests/e2e/test_api_workers.py."""
from __future__ import annotations

import asyncio
from typing import Any

from app.serve_loop import OneWrite


class Recording:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def write_eof(self) -> None:
        self.events.append("eof")

    def abort(self) -> None:
        self.events.append("abort")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def _turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_within_one_turn_leave_in_one_send():
    async def go() -> None:
        t = Recording()
        w = OneWrite(t, asyncio.get_running_loop())
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        w.write(memoryview(b"{}"))
        assert t.sent == [] and w.get_write_buffer_size() == 38 + 2 + 7  # held, and counted as buffered
        await _turn()
        assert t.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        w.write(b"next")  # the next turn's writes are a send of their own
        await _turn()
        assert t.sent[1:] == [b"next"]
        assert w.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's

    asyncio.run(go())


def test_a_long_response_goes_out_as_it_is_written():
    async def go() -> None:
        t = Recording()
        w = OneWrite(t, asyncio.get_running_loop())
        w.write(b"h" * 10)
        w.write(b"b" * OneWrite.FLUSH_AT)  # past the bound: sent now, where flow control can see it
        assert t.sent == [b"h" * 10 + b"b" * OneWrite.FLUSH_AT]
        await _turn()
        assert len(t.sent) == 1  # nothing sent twice

    asyncio.run(go())


def test_close_and_eof_send_what_is_held_first_and_abort_drops_it():
    async def go() -> None:
        loop = asyncio.get_running_loop()
        t = Recording()
        w = OneWrite(t, loop)
        w.write(b"last")
        w.close()
        assert t.sent == [b"last"] and t.events == ["close"]
        await _turn()
        assert t.sent == [b"last"]  # the scheduled flush finds nothing more
        t2 = Recording()
        w2 = OneWrite(t2, loop)
        w2.write(b"end")
        w2.write_eof()
        assert t2.sent == [b"end"] and t2.events == ["eof"]
        t3 = Recording()
        w3 = OneWrite(t3, loop)
        w3.write(b"never")
        w3.abort()
        await _turn()
        assert t3.sent == [] and t3.events == ["abort"]

    asyncio.run(go())
