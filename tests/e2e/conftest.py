"""End-to-end fixtures: `warmpool api` as a real process on the test database, and the official
gitpod-sdk clients, each generation run in its own subprocess from its own --target directory."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_DIR = Path(os.environ.get("WARMPOOL_CLIENTS_DIR", ROOT / ".clients"))
SCRIPTS = Path(__file__).resolve().parent / "clients"
CLIENT_SCRIPTS = {"1.2.0": SCRIPTS / "ona_connect.py", "0.11.0": SCRIPTS / "gitpod_stainless.py"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str  # http://127.0.0.1:<port>
    log: Path

    @property
    def api(self) -> str:
        return self.url + "/api"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def api_server(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`warmpool api` on a free port against the test database; stopped at the end of the session."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("api")
    log = tmp / "api.log"
    env = dict(os.environ)
    env.update({
        "WARMPOOL_ENV": "test",
        "WARMPOOL_DATABASE_URL": database_url,
        "WARMPOOL_REDIS_URL": redis_url,
        "WARMPOOL_DATA_DIR": str(tmp / "data"),
        "WARMPOOL_GRPC_PORT": str(free_port()),
        "WARMPOOL_DB_POOL_SIZE": "4",
        "WARMPOOL_LOG_LEVEL": "WARNING",
    })
    exe = Path(sys.executable).with_name("warmpool")
    cmd = [str(exe) if exe.exists() else str(ROOT / ".venv/bin/warmpool"), "api", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(url=f"http://127.0.0.1:{port}", log=log)
    try:
        wait_healthy(proc, server, timeout=30)
        yield server
    finally:
        stop(proc)


def wait_healthy(proc: subprocess.Popen, server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"warmpool api exited with {proc.returncode} before serving:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc)
    pytest.fail(f"warmpool api did not answer /healthz within {timeout}s:\n{server.log_tail()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture
def api(api_server: Server, db) -> Server:
    """The running server, with empty tables for this test (the `db` fixture truncates them)."""
    return api_server


# ---- official clients, one subprocess per run ------------------------------------------------------

def client_dir(version: str) -> Path:
    path = CLIENTS_DIR / f"gitpod-{version}"
    if not (path / "gitpod").is_dir():
        pytest.fail(f"gitpod-sdk {version} is not installed in {path}: run `make clients` first")
    return path


def run_client(version: str, scenario: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
    """Run the scenario with gitpod-sdk `version` in its own interpreter; one result per step.

    Each result is {"ok": <response as JSON>} or {"error": {"class", "code", ...}}, plus "requests"
    (the HTTP requests the client sent for the step) where the client lets us see them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GITPOD_", "ONA_"))}
    env["PYTHONPATH"] = str(client_dir(version))
    env["PYTHONNOUSERSITE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-s", str(CLIENT_SCRIPTS[version])],
        input=json.dumps(scenario), capture_output=True, text=True, env=env, timeout=timeout, cwd=SCRIPTS,
    )
    if proc.returncode != 0:
        pytest.fail(f"gitpod-sdk {version} client script failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout)
    assert out["sdk"] == version, f"expected gitpod-sdk {version} from {client_dir(version)}, ran {out['sdk']}"
    return out["results"]
