"""Metrics and health of real `warmpool api` processes: with `--workers 2` one scrape sums both workers'
lease counts (and a killed worker's counts stay while it no longer counts as live), and the gRPC health
service follows /readyz when Redis or the database goes away and comes back."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from scripts.testenv import Redis, free_port
from tests.conftest import ROOT, make_catalog, make_org, token_for
from tests.leasing import add_ready_bulk, make_pool

LEASE = "/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Lease"


def start_api(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str, int]:
    http, grpc_port = free_port(), free_port()
    env = {**os.environ, **env, "WARMPOOL_ENV": "test", "WARMPOOL_HTTP_PORT": str(http),
           "WARMPOOL_GRPC_PORT": str(grpc_port), "WARMPOOL_LOG_LEVEL": "WARNING", "WARMPOOL_DATA_DIR": str(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    exe = Path(sys.executable).with_name("warmpool")
    log = open(tmp_path / "api.log", "w")
    proc = subprocess.Popen([str(exe if exe.exists() else ROOT / ".venv/bin/warmpool"), "api", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base, grpc_port
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail("warmpool api did not start:\n" + (tmp_path / "api.log").read_text()[-3000:])
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert m, f"{series} not in /metrics"
    return float(m.group(1))


def leases_by_pid(directory: Path, scratch: Path) -> dict[int, float]:
    """Each worker's own lease count, read from its file in the multiprocess directory alone."""
    out = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        alone = scratch / str(pid)
        alone.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        text = generate_latest(registry).decode()
        m = re.search(r'^warmpool_leases_total\{how="warm",transport="connect"\} (\S+)$', text, re.MULTILINE)
        out[pid] = float(m.group(1)) if m else 0.0
    return out


def test_one_scrape_sums_the_lease_counts_of_both_workers(db, tmp_path):
    world = make_org("acme")
    pool = make_pool(world.org_id, "warm")
    add_ready_bulk(pool.id, world.org_id, 300)
    scraper = {"Authorization": f"Bearer {token_for(world, 'metrics')}"}
    proc, base, _ = start_api(tmp_path, {"WARMPOOL_DATABASE_URL": os.environ["WARMPOOL_DATABASE_URL"],
                                         "WARMPOOL_REDIS_URL": os.environ["WARMPOOL_REDIS_URL"]}, "--workers", "2")
    directory = tmp_path / "metrics-api"
    try:
        made, per_pid = 0, {}
        # Each lease on a new connection: the kernel spreads them over both workers (SO_REUSEPORT).
        while len([n for n in per_pid.values() if n > 0]) < 2:
            assert made < 250, f"after {made} leases only these workers served any: {per_pid}"
            r = httpx.post(base + LEASE, json={"pool": "warm"}, timeout=30,
                           headers={"Authorization": f"Bearer {world.token}"})
            assert r.status_code == 200, r.text
            made += 1
            per_pid = leases_by_pid(directory, tmp_path / "scratch" / str(made))
        assert sum(per_pid.values()) == made
        text = httpx.get(base + "/metrics", headers=scraper, timeout=30).text
        assert value(text, 'warmpool_leases_total{how="warm",transport="connect"}') == made
        assert value(text, 'warmpool_lease_seconds_count{outcome="warm",transport="connect"}') == made
        assert value(text, "warmpool_api_processes") == 2
        assert value(text, 'warmpool_pool_ready_instances{organization="acme",pool="warm"}') == 300 - made

        # A worker killed outright: uvicorn starts another; its counts stay, it no longer counts as live.
        victim = max(per_pid, key=lambda pid: per_pid[pid])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(base + "/metrics", headers=scraper, timeout=30).text
            live = value(text, "warmpool_api_processes")
            if live == 2 and not (directory / f"gauge_livesum_{victim}.db").exists():
                break
            assert time.monotonic() < deadline, f"live processes still {live} after killing {victim}"
            time.sleep(0.5)
        assert value(text, 'warmpool_leases_total{how="warm",transport="connect"}') == made
    finally:
        stop(proc)
    assert "Traceback" not in (tmp_path / "api.log").read_text()


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def wait_health(port: int, want: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := health(port)) != want:
        assert time.monotonic() < deadline, f"gRPC health stayed {got}, expected {want}"
        time.sleep(0.2)


def test_grpc_health_follows_readiness_when_redis_goes_and_comes_back(database_url, tmp_path):
    redis = Redis()
    url = redis.start()
    proc, base, grpc_port = start_api(tmp_path, {"WARMPOOL_DATABASE_URL": database_url, "WARMPOOL_REDIS_URL": url})
    try:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        wait_health(grpc_port, serving)
        redis.proc.kill()
        redis.proc.wait(10)
        wait_health(grpc_port, not_serving)
        assert httpx.get(base + "/readyz", timeout=10).status_code == 503
        again = Redis()
        again.port = redis.port  # back on the same address
        again.start()
        try:
            wait_health(grpc_port, serving)
            assert httpx.get(base + "/readyz", timeout=10).status_code == 200
        finally:
            again.stop()
    finally:
        stop(proc)
        redis.stop()


class Proxy:
    """A TCP proxy to the test database that can be cut (listener and every connection closed) and restored
    on the same port: the database "goes away" for the api process without stopping the shared server."""

    def __init__(self, target: int) -> None:
        self.port, self.target = free_port(), target
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        self.thread: threading.Thread | None = None

    def up(self) -> None:
        self.stopping.clear()
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self.sockets = [listener]
        self.thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self.thread.start()

    def down(self) -> None:
        self.stopping.set()
        if self.thread:
            self.thread.join(5)
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass


def test_grpc_health_follows_readiness_when_the_database_goes_and_comes_back(database_url, redis_url, tmp_path):
    pg = urlsplit(database_url)
    proxy = Proxy(pg.port)
    proxy.up()
    via_proxy = database_url.replace(f":{pg.port}/", f":{proxy.port}/")
    proc, base, grpc_port = start_api(tmp_path, {"WARMPOOL_DATABASE_URL": via_proxy, "WARMPOOL_REDIS_URL": redis_url})
    try:
        wait_health(grpc_port, health_pb2.HealthCheckResponse.SERVING)
        proxy.down()
        wait_health(grpc_port, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert httpx.get(base + "/readyz", timeout=10).json()["checks"]["database"].startswith("unreachable")
        proxy.up()
        wait_health(grpc_port, health_pb2.HealthCheckResponse.SERVING)
    finally:
        stop(proc)
        proxy.down()


def test_an_observer_serves_its_provider_call_metrics_on_its_own_port(db, tmp_path):
    world = make_catalog(make_org("acme"))
    make_pool(world.org_id, "web", runner_id=world.runner_id)
    port = free_port()
    env = {**os.environ, "WARMPOOL_ENV": "test", "WARMPOOL_LOG_LEVEL": "WARNING", "WARMPOOL_DATA_DIR": str(tmp_path)}
    exe = Path(sys.executable).with_name("warmpool")
    log = open(tmp_path / "observe.log", "w")
    proc = subprocess.Popen([str(exe if exe.exists() else ROOT / ".venv/bin/warmpool"), "observe", "--metrics-port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    series = 'warmpool_provider_call_seconds_count{operation="list",provider="fake"}'
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if series in text and value(text, series) > 0:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "observe.log").read_text()[-3000:]
            time.sleep(0.3)
    finally:
        stop(proc)
