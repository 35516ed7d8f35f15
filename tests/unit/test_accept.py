"""app.accept: the workers of `warmpool api --workers N` spread their connections by a shared tally (the e2e
spread over real workers is tests/e2e/test_api_workers.py)."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

from app import accept
from app.accept import SharedAccept, Tally


def test_a_worker_takes_a_free_slot_and_a_dead_workers_slot_is_reused():
    tally = Tally(slots=3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tally._pids[0], tally._open[0] = dead.pid, 7  # a worker that was killed: its count is stale
    tally._pids[1], tally._open[1] = os.getppid(), 2  # another live worker
    tally.join()
    assert tally.slot == 0 and tally._pids[0] == os.getpid() and tally._open[0] == 0
    assert tally.fewest_elsewhere() == 2
    tally._pids[1] = 0
    assert tally.fewest_elsewhere() is None  # alone
    full = Tally(slots=1)
    full._pids[0] = os.getppid()
    full.join()
    assert full.slot == -1 and full.fewest_elsewhere() is None  # not counted: accepts like a lone worker


def _listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    return sock


async def _taken_after(tally: Tally | None, open_here: int) -> float:
    """How long a waiting connection stays unaccepted by a SharedAccept that already serves `open_here`."""
    loop = asyncio.get_running_loop()
    sock = _listener()
    taken = loop.create_future()
    acceptor = SharedAccept(sock, lambda conn: taken.set_result(conn), tally=tally)
    acceptor.open = open_here
    acceptor.start()
    client = socket.create_connection(sock.getsockname())
    began = loop.time()
    conn = await asyncio.wait_for(taken, 5)
    waited = loop.time() - began
    acceptor.stop()
    conn.close()
    client.close()
    sock.close()
    assert acceptor.open == open_here + 1
    return waited


def test_the_worker_serving_fewest_takes_a_connection_at_once_others_leave_it_first(monkeypatch):
    monkeypatch.setattr(accept, "GRACE", 0.3)  # long enough to tell apart on a busy machine
    tally = Tally(slots=2)
    tally._pids[1], tally._open[1] = os.getppid(), 3  # the other worker serves 3
    tally.join()
    assert asyncio.run(_taken_after(tally, 3)) < 0.25  # no more than the other: at once
    assert tally._open[tally.slot] == 4  # and counted where the others read it
    assert asyncio.run(_taken_after(tally, 4)) >= 0.3  # more than the other: after the grace, as nobody took it
    assert asyncio.run(_taken_after(None, 50)) < 0.25  # a lone process never waits
