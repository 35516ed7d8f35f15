"""The api's HTTP/1.1 connection (app.api.lease_http) answers the hot lease RPCs with the bytes uvicorn's own
connection writes for the same handler (the `date` header aside), and keeps HTTP/1.1's rules: answers in
the order of pipelined requests, `connection: close` and HTTP/1.0, a body that arrives in pieces, `Expect:
100-continue`, and the regular stack for whatever the thin handler does not take. Two real uvicorn servers,
one per protocol, serve the same app side by side; raw sockets talk to both."""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from app.api import lease_http, vmpool
from app.main import WarmpoolASGI, create_app
from config.settings import get_settings
from tests.conftest import token_for
from tests.leasing import add_ready, leases_of, make_pool

SERVICE = "/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"


class Counting(lease_http.LeaseHttpProtocol):
    """The lean protocol, counting the requests it answered without ASGI (so the test knows it ran)."""
    lean = 0

    async def _lease(self, cycle: Any, app: Any, headers: dict[bytes, bytes]) -> None:
        before = cycle.run_asgi
        fell_back = []

        async def run_asgi(app: Any) -> None:
            fell_back.append(True)
            await before(app)

        cycle.run_asgi = run_asgi
        await super()._lease(cycle, app, headers)
        if not fell_back:
            Counting.lean += 1


@contextmanager
def serving(http: Any, service: vmpool.LeaseService) -> Iterator[int]:
    asgi = WarmpoolASGI(create_app(dispatcher=False))
    asgi.connect._service = service
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(asgi, http=http, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def request(rpc: str, body: dict | bytes, token: str, *, version: bytes = b"1.1", extra: bytes = b"",
            target: str | None = None) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (b"POST " + (target or f"{SERVICE}/{rpc}").encode() + b" HTTP/" + version + b"\r\nhost: t\r\n"
            b"content-type: application/json\r\nauthorization: Bearer " + token.encode() + b"\r\n" + extra +
            b"content-length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw)


def exchange(port: int, *parts: bytes, answers: int = 1, pause: float = 0.0) -> tuple[list[bytes], bool]:
    """Send the parts (with `pause` between them), read `answers` responses (whole: head and body, chunked
    or not); also whether the server then closed the connection (within 0.1 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            c.sendall(part)
        buf, out = b"", []
        while len(out) < answers:
            while (size := _complete(buf)) is None:
                chunk = c.recv(65536)
                assert chunk, f"connection closed after {out} {buf!r}"
                buf += chunk
            out.append(buf[:size])
            if buf.startswith(b"HTTP/1.1 100 "):
                answers += 1
            buf = buf[size:]
        c.settimeout(0.1)
        try:
            closed = c.recv(1) == b""
        except TimeoutError:
            closed = False
    return [re.sub(rb"date: [^\r]*", b"date: -", r) for r in out], closed


def _complete(buf: bytes) -> int | None:
    """The length of the first whole response in `buf`, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    if b"transfer-encoding: chunked" in head:
        last = buf.find(b"\r\n0\r\n\r\n", end)
        return None if last < 0 else last + 7
    m = re.search(rb"content-length: (\d+)", head)
    size = end + 4 + (int(m.group(1)) if m else 0)
    return size if len(buf) >= size else None


@pytest.fixture
def servers(org, monkeypatch):  # type: ignore[no-untyped-def]
    # A verified token stays in the cache the thin handler reads for the whole test (else the regular stack
    # answers, and rightly so, once it is older than the default 5 s).
    monkeypatch.setattr(get_settings(), "auth_cache_seconds", 600.0)
    service = vmpool.LeaseService()
    try:
        with serving("httptools", service) as stock, serving(Counting, service) as lean:
            yield stock, lean
    finally:
        service.executor.shutdown(wait=True)


@pytest.mark.postgres
def test_refusals_and_fallbacks_are_the_same_bytes(org, servers) -> None:
    stock, lean = servers
    token = token_for(org, "lease")
    pool = make_pool(org.org_id, "p-http", empty_policy="reject")
    ids = add_ready(pool, 2)
    exchange(stock, request("GetLease", {"instance": ids[0]}, token))  # the token is in the cache from here on
    cases = [
        request("Lease", {"pool": "nope", "serviceTag": "t"}, token),
        request("Lease", {"pool": "ünïcode-pøøl"}, token),
        request("Lease", {"pool": "p-http", "unknownField": 1}, token),  # the regular stack's
        request("Lease", b"not json", token),
        request("Lease", {"pool": "p-http"}, token, extra=b"connect-protocol-version: 2\r\n"),
        request("Lease", {"pool": "p-http"}, token, extra=b"connect-timeout-ms: abc\r\n"),
        request("Lease", {"pool": "p-http"}, "wrong"),
        request("Lease", {"pool": "nope"}, token, target=f"{SERVICE}/Lease?x=%00"),
        request("Return", {"instance": "missing", "serviceTag": "t"}, token),
        request("GetLease", {"instance": ids[1]}, token),
        request("ExtendTo", {"instance": ids[0], "to": "not a time"}, token),
    ]
    before = Counting.lean
    for case in cases:
        assert exchange(stock, case) == exchange(lean, case), case
    assert Counting.lean - before == 4  # the nope pool, the unicode pool, Return, GetLease

    # `connection: close` and HTTP/1.0: the answer says so and the connection ends, on both.
    for case in (request("GetLease", {"instance": ids[1]}, token, extra=b"connection: close\r\n"),
                 request("GetLease", {"instance": ids[1]}, token, version=b"1.0")):
        answered = exchange(lean, case)
        assert answered == exchange(stock, case)
        assert b"connection: close" in answered[0][0] and answered[1] is True
    # A body in two pieces, and a client that waits for 100-continue.
    case = request("GetLease", {"instance": ids[1]}, token)
    assert exchange(lean, case[:-5], case[-5:], pause=0.05) == exchange(stock, case)
    case = request("GetLease", {"instance": ids[1]}, token, extra=b"expect: 100-continue\r\n")
    head, body = case.split(b"\r\n\r\n", 1)
    answered = exchange(lean, head + b"\r\n\r\n", body, pause=0.05)
    assert answered == exchange(stock, head + b"\r\n\r\n", body, pause=0.05)
    assert answered[0][0].startswith(b"HTTP/1.1 100 Continue")


@pytest.mark.postgres
def test_a_lease_and_pipelined_requests_in_order(org, servers) -> None:
    stock, lean = servers
    token = token_for(org, "lease")
    pool = make_pool(org.org_id, "p-pipe", empty_policy="reject", lease_default_seconds=600)
    ids = add_ready(pool, 3)
    exchange(stock, request("GetLease", {"instance": ids[0]}, token))
    before = Counting.lean
    (ours,), _ = exchange(lean, request("Lease", {"pool": "p-pipe", "serviceTag": "s"}, token))
    (theirs,), _ = exchange(stock, request("Lease", {"pool": "p-pipe", "serviceTag": "s"}, token))
    assert Counting.lean - before == 1
    head_ours, body_ours = ours.split(b"\r\n\r\n")
    head_theirs, body_theirs = theirs.split(b"\r\n\r\n")
    names = [re.sub(rb"content-length: \d+", b"content-length", h) for h in (head_ours, head_theirs)]
    assert names[0] == names[1] and head_ours.startswith(b"HTTP/1.1 200 OK\r\n")
    a, b = json.loads(body_ours)["lease"], json.loads(body_theirs)["lease"]
    assert a.keys() == b.keys() and a["instance"] != b["instance"] and {a["instance"], b["instance"]} <= set(ids)

    # Three requests in one packet, the middle one for FastAPI: answered in the order they came.
    pipelined = [request("GetLease", {"instance": a["instance"]}, token),
                 b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n",
                 request("Return", {"instance": a["instance"], "serviceTag": "s"}, token)]
    answers, closed = exchange(lean, b"".join(pipelined), answers=3)
    assert not closed
    assert [x.split(b"\r\n", 1)[0] for x in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert json.loads(answers[0].split(b"\r\n\r\n")[1])["lease"]["instance"] == a["instance"]
    assert answers[2].endswith(b"\r\n\r\n{}")
    (gone,), _ = exchange(lean, request("GetLease", {"instance": a["instance"]}, token))
    assert gone.startswith(b"HTTP/1.1 400 ") and b"already ended: returned" in gone
    states = {row.instance_id: row.state for row in leases_of(pool.id)}
    assert states == {a["instance"]: "returned", b["instance"]: "active"}  # in the database
