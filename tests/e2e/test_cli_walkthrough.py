"""The README's walkthrough blocks (each marked `<!-- walkthrough: … -->`), run as written, in order, in one
second shell beside a real `warmpool dev`: the shell sets no variable by hand and finds dev's Redis, database
and organization through .data/dev.env."""
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
MARKER = "<!-- walkthrough:"
# Stands in for the clients block's `pip install` (the test cannot change the shared venv): the same release,
# installed by `make clients` into a directory of its own.
SDK_INSTALL = "pip install -q 'gitpod-sdk==0.11.0'"
SDK_DIR = ROOT / ".clients" / "gitpod-0.11.0"


def walkthrough() -> list[str]:
    """The shell blocks that follow a walkthrough marker, in README order."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(re.escape(MARKER) + r"[^\n]*-->\n```sh\n(.*?)```", text, re.S)
    assert len(blocks) >= 2 and SDK_INSTALL in blocks[1], "the README's walkthrough blocks moved"
    return blocks


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
        assert (SDK_DIR / ".ok").exists(), "run `make clients`"
        script = "\n".join(walkthrough()).replace("http://127.0.0.1:8080", base)
        script = script.replace(SDK_INSTALL, f'python() {{ PYTHONPATH={SDK_DIR} command python "$@"; }}')
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=clean,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{(tmp_path / 'dev.log').read_text()[-2000:]}"
        assert "Traceback" not in done.stderr and "ConnectionError" not in done.stderr, done.stderr
        assert "the instance answered HTTP 200" in done.stdout, done.stdout
        assert re.search(r"returned the lease of instance \S+ \(pool \S+\); it is destroyed", done.stdout), done.stdout
        assert "ready" in done.stdout and "127.0.0.1:" in done.stdout  # pools, pool show and leases printed
        assert re.search(r"gitpod-sdk sees warm pool \S+ WARM_POOL_PHASE_READY", done.stdout), done.stdout
        assert re.search(r"leased \S+ over the Intrinsic lease API\n\{\} returned", done.stdout), done.stdout
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert not (tmp_path / ".data" / "dev.env").exists()  # a stopped dev leaves nothing for the CLI to follow
