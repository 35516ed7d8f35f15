"""`warmpool api --workers 2`: both processes serve HTTP and gRPC on the same ports, and stop cleanly."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_share_the_http_and_grpc_ports(database_url, redis_url, tmp_path):
    http, grpc_port = free_port(), free_port()
    env = {**os.environ, "WARMPOOL_DATABASE_URL": database_url, "WARMPOOL_REDIS_URL": redis_url,
           "WARMPOOL_HTTP_PORT": str(http), "WARMPOOL_GRPC_PORT": str(grpc_port), "WARMPOOL_LOG_LEVEL": "WARNING"}
    log = open(tmp_path / "api.log", "w+")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("warmpool")), "api", "--workers", "2"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "api.log").read_text()
                time.sleep(0.2)
        listeners = subprocess.run(["ss", "-ltnpH", f"sport = :{grpc_port}"], capture_output=True, text=True).stdout
        deadline = time.monotonic() + 15
        while listeners.count("pid=") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            listeners = subprocess.run(["ss", "-ltnpH", f"sport = :{grpc_port}"], capture_output=True, text=True).stdout
        assert listeners.count("pid=") == 2, listeners  # one gRPC listener per worker
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(10):
                assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert "Traceback" not in (tmp_path / "api.log").read_text()
