"""HTTP/2 for the gRPC port's own front (app/api/grpc_front.py): frame constants, an HPACK decoder
(RFC 7541) with its dynamic table, and the few header blocks a gRPC server sends, as literals that never
touch the peer's table."""
from __future__ import annotations

import base64
from collections import deque
from typing import Any
from urllib.parse import quote

import grpc
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0, 1, 3, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 0xB
MAX_FRAME = 16384  # the default SETTINGS_MAX_FRAME_SIZE, which we keep
STREAM_WINDOW = 1 << 21  # ours per stream: a whole request of the largest allowed size in flight
CONN_WINDOW = 1 << 24
MAX_STREAMS = 1000
MAX_HEADER_BLOCK = 1 << 16
MAX_HEADER_LIST = 1 << 16  # decoded (RFC 9113 SETTINGS_MAX_HEADER_LIST_SIZE): a small block can index big entries
MAX_WRITE_BUFFER = 1 << 22  # bytes queued for a peer that does not read (answers to its PINGs, SETTINGS, ...)
MAX_RESETS_PER_SECOND = 500  # streams a client opens and resets in a second before it is told to go (rapid reset)
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Request headers that are HTTP/2's or gRPC's own, not the caller's metadata.
RESERVED = {"te", "content-type", "user-agent", "host", "connection", "accept-encoding", "content-length"}


class H2Error(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


# ---- HPACK ----------------------------------------------------------------------------------------

STATIC = HeaderTable.STATIC_TABLE


class Decoder:
    """An HPACK decoder (RFC 7541) with the dynamic table; much cheaper than the hpack package's for the
    mostly indexed blocks a gRPC client sends after its first call (that package does the Huffman)."""

    def __init__(self, max_size: int = 4096, max_list: int = MAX_HEADER_LIST) -> None:
        self.table: deque[tuple[bytes, bytes]] = deque()
        self.size = 0
        self.max_size = self.limit = max_size
        self.max_list = max_list

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC):
            return STATIC[index - 1]
        index -= len(STATIC) + 1
        if 0 <= index < len(self.table):
            return self.table[index]
        raise H2Error(COMPRESSION_ERROR, f"header index {index} is not in the table")

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        self.table.appendleft((name, value))
        self.size += size
        self._shrink()

    def _shrink(self) -> None:
        while self.size > self.max_size and self.table:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32

    @staticmethod
    def _int(data: bytes, pos: int, bits: int) -> tuple[int, int]:
        mask = (1 << bits) - 1
        value = data[pos] & mask
        pos += 1
        if value < mask:
            return value, pos
        shift = 0
        while True:
            if pos >= len(data) or shift > 28:
                raise H2Error(COMPRESSION_ERROR, "bad header integer")
            b = data[pos]
            pos += 1
            value += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, pos

    def _str(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise H2Error(COMPRESSION_ERROR, "truncated header block")
        huffman = data[pos] & 0x80
        length, pos = self._int(data, pos, 7)
        if pos + length > len(data):
            raise H2Error(COMPRESSION_ERROR, "truncated header string")
        raw = bytes(data[pos:pos + length])
        if huffman:
            raw = _unhuffman(raw)
        return raw, pos + length

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        pos, end, listed = 0, len(data), 0
        while pos < end:
            if out:  # the decoded list's size (RFC 9113 6.5.2): bounded however the block indexes the table
                listed += len(out[-1][0]) + len(out[-1][1]) + 32
                if listed > self.max_list:
                    raise H2Error(ENHANCE_YOUR_CALM, "header list too large")
            b = data[pos]
            if b & 0x80:  # indexed field
                index, pos = self._int(data, pos, 7)
                out.append(self._get(index))
            elif b & 0x40:  # literal with incremental indexing
                index, pos = self._int(data, pos, 6)
                name, pos = self._str(data, pos) if index == 0 else (self._get(index)[0], pos)
                value, pos = self._str(data, pos)
                self._add(name, value)
                out.append((name, value))
            elif b & 0x20:  # dynamic table size update
                size, pos = self._int(data, pos, 5)
                if size > self.limit:
                    raise H2Error(COMPRESSION_ERROR, "table size over the limit")
                self.max_size = size
                self._shrink()
            else:  # literal without indexing / never indexed
                index, pos = self._int(data, pos, 4)
                name, pos = self._str(data, pos) if index == 0 else (self._get(index)[0], pos)
                value, pos = self._str(data, pos)
                out.append((name, value))
        if out and listed + len(out[-1][0]) + len(out[-1][1]) + 32 > self.max_list:
            raise H2Error(ENHANCE_YOUR_CALM, "header list too large")
        return out


_HUFFMAN: dict[bytes, bytes] = {}  # encoded -> decoded, for strings clients repeat on every call


def _unhuffman(raw: bytes) -> bytes:
    """Huffman-decode (RFC 7541), remembering recent strings: some clients send the token and the path as
    literals on every call (nghttp2 never indexes `authorization`, nor `:path`), and the pure-Python
    decoder costs tens of microseconds for each."""
    hit = _HUFFMAN.get(raw)
    if hit is not None:
        return hit
    try:
        decoded = bytes(decode_huffman(raw))
    except Exception:  # noqa: BLE001 - any decoding failure is the peer's
        raise H2Error(COMPRESSION_ERROR, "bad Huffman string") from None
    if len(raw) <= 256:  # tokens and paths; a peer's long strings would only fill it
        if len(_HUFFMAN) >= 1024:
            _HUFFMAN.clear()
        _HUFFMAN[raw] = decoded
    return decoded


def _hint(value: int, bits: int, flags: int = 0) -> bytes:
    mask = (1 << bits) - 1
    if value < mask:
        return bytes([flags | value])
    out = [flags | mask]
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing: our answers never touch the peer's dynamic table."""
    return b"\x00" + _hint(len(name), 7) + name + _hint(len(value), 7) + value


STATUS_200 = b"\x88"  # static index 8
CONTENT_TYPE = b"\x0f\x10" + _hint(len(b"application/grpc"), 7) + b"application/grpc"  # name: static 31
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE
OK_TRAILERS = _literal(b"grpc-status", b"0")


def grpc_message(text: str) -> bytes:
    """grpc-message: UTF-8, percent-encoded outside printable ASCII and '%' (the gRPC HTTP/2 spec)."""
    return quote(text, safe=" !\"#$&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                          "abcdefghijklmnopqrstuvwxyz{|}~").encode("ascii")


def metadata_block(pairs: Any) -> bytes:
    out = b""
    for key, value in pairs or ():
        if isinstance(value, bytes):  # binary metadata (-bin): base64 without padding
            value = base64.b64encode(value).rstrip(b"=").decode("ascii")
        out += _literal(key.encode("ascii"), str(value).encode("utf-8"))
    return out


def status_block(code: grpc.StatusCode, message: str, trailers: Any = ()) -> bytes:
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += _literal(b"grpc-message", grpc_message(message))
    return block + metadata_block(trailers)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def parse_timeout(value: bytes) -> float | None:
    text = value.decode("ascii", "replace")
    if 2 <= len(text) <= 9 and text[:-1].isdigit() and text[-1] in TIMEOUT_UNITS:
        return int(text[:-1]) * TIMEOUT_UNITS[text[-1]]
    return None
