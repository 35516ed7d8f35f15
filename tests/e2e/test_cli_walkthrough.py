"""The README's second-shell walkthrough, run as written beside a real `warmpool dev`: the second shell
sets no variable by hand and finds dev's Redis, database and organization through .data/dev.env."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.e2e.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- walkthrough: second shell"


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARKER):]
    return re.search(r"```sh\n(.*?)```", after, re.S).group(1)


def test_the_readme_walkthrough_runs_in_a_second_shell_beside_dev(tmp_path):
    http, grpc, flower = free_port(), free_port(), free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WARMPOOL_")}
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # as at the repository root, where `make dev` made it
    dev_env = dict(clean, WARMPOOL_HTTP_PORT=str(http), WARMPOOL_GRPC_PORT=str(grpc),
                   WARMPOOL_FLOWER__PORT=str(flower), WARMPOOL_LOG_LEVEL="WARNING")
    log = open(tmp_path / "dev.log", "w+")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "warmpool"), "dev"], cwd=tmp_path, env=dev_env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            try:
                if (tmp_path / ".data" / "dev.env").exists() and urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("warmpool dev did not come up:\n" + (tmp_path / "dev.log").read_text()[-3000:])

        # Only the API port differs from the README's (this test cannot take :8080 on a shared machine).
        script = walkthrough().replace("http://127.0.0.1:8080", base)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=clean,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{(tmp_path / 'dev.log').read_text()[-2000:]}"
        assert "Traceback" not in done.stderr and "ConnectionError" not in done.stderr, done.stderr
        assert "the instance answered HTTP 200" in done.stdout, done.stdout
        assert re.search(r"returned the lease of instance \S+ \(pool \S+\); it is destroyed", done.stdout), done.stdout
        assert "ready" in done.stdout and "127.0.0.1:" in done.stdout  # pools, pool show and leases printed
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert not (tmp_path / ".data" / "dev.env").exists()  # a stopped dev leaves nothing for the CLI to follow
