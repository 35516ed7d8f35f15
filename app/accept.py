"""Taking connections from a listening socket that several `warmpool api` workers share, so that they spread
evenly: the workers keep their counts of open connections in memory they share (Tally, made by the parent
before it starts them); a worker serving no more than the others takes a waiting connection at once, one serving
more leaves it `grace` seconds for them first. Left to the kernel, the first worker to wake takes every
connection waiting (8 from a load generator's burst split 6:2 or 5:3), and one core serves three quarters of
the load. Used by the gRPC front (app.api.grpc_listener) and by the HTTP side (app.serve_loop)."""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

GRACE = 0.010
"""How long a worker serving more connections than another leaves a waiting connection to the others: they
take it at once unless their loop is busy that long, and then it is better served here than later."""


class Tally:
    """Open connections per worker of one shared port, in shared memory. Made in the parent and handed to each
    worker as it is spawned (multiprocessing pickles it then, and only then); a worker takes a free slot
    (never used, or its process gone) with `join`. More workers than slots: the extra ones are not counted."""

    def __init__(self, slots: int = 64) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pids = ctx.RawArray("q", slots)
        self._open = ctx.RawArray("q", slots)
        self._lock = ctx.Lock()
        self.slot = -1

    def join(self) -> None:
        me = os.getpid()
        with self._lock:
            for i, pid in enumerate(self._pids):
                if pid in (0, me) or not _alive(pid):
                    self._pids[i], self._open[i], self.slot = me, 0, i
                    return

    def set(self, count: int) -> None:
        if self.slot >= 0:
            self._open[self.slot] = count

    def fewest_elsewhere(self) -> int | None:
        """The fewest connections another live worker serves (None: no other worker is counted)."""
        if self.slot < 0:
            return None
        counts = [self._open[i] for i, pid in enumerate(self._pids) if pid and i != self.slot and _alive(pid)]
        return min(counts, default=None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now has the pid: not a worker
        return False
    return True


class SharedAccept:
    """Accepts from `sock` (listening, non-blocking) on the running loop and hands each connection to `adopt`.
    `tally`: other workers accept from the same socket and count there (None: this process alone, every
    connection is taken at once). The owner calls `closed()` when a connection it adopted ends, so the count
    stays true."""

    def __init__(self, sock: socket.socket, adopt: Callable[[socket.socket], None], *, tally: Tally | None) -> None:
        self.sock, self.adopt, self.tally = sock, adopt, tally
        self.loop = asyncio.get_running_loop()
        self.open = 0  # connections adopted and not yet closed
        self.stopped = False
        self._listening = False
        self._resume: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        if tally is not None:
            tally.join()

    def start(self) -> None:
        self._listen(True)

    def stop(self) -> None:
        """Take no more connections (those adopted are the owner's to drain)."""
        self.stopped = True
        self._listen(False)
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None

    def closed(self) -> None:
        self.open = max(0, self.open - 1)
        if self.tally is not None:
            self.tally.set(self.open)

    def _listen(self, on: bool) -> None:
        if on and not self._listening and not self.stopped:
            self.loop.add_reader(self.sock.fileno(), self._readable)
            self._listening = True
        elif not on and self._listening:
            self.loop.remove_reader(self.sock.fileno())
            self._listening = False

    def _readable(self) -> None:
        """A connection waits: take it now if no other worker serves fewer, else after GRACE if still there."""
        fewest = None if self.tally is None else self.tally.fewest_elsewhere()
        if fewest is None or self.open <= fewest:
            self._accept()
            return
        self._listen(False)
        self._resume = self.loop.call_later(GRACE, self._delayed)

    def _delayed(self) -> None:
        self._resume = None
        self._accept()
        if self._resume is None:  # unless the accept failed and set its own retry
            self._listen(True)

    def _accept(self) -> None:
        if self.stopped:
            return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:  # out of descriptors, say: the connection stays queued, try again a little later
            log.warning("accept failed on %s: %s", self.sock.getsockname(), exc)
            self._listen(False)
            self._resume = self.loop.call_later(0.1, self._delayed)
            return
        self.open += 1
        if self.tally is not None:
            self.tally.set(self.open)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.adopt(conn)
