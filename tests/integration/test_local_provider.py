"""The local provider with real processes: create, serve, stop keeping files, start, snapshot, delete."""
from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from workers.providers.base import InstanceSpec, ProviderPermanent, ProviderTransient
from workers.providers.local import LocalProvider


@pytest.fixture
def provider(tmp_path):
    p = LocalProvider({"root": str(tmp_path / "local")})
    yield p
    for obs in p.list():
        p.delete(obs.ref)


def fetch(address: str, path: str) -> str:
    return urllib.request.urlopen(f"http://{address}/{path}", timeout=5).read().decode()


def test_lifecycle_with_a_real_process(provider):
    obs = provider.create(InstanceSpec("i1", "p1", "warmpool"), start=True)
    assert obs.state == "running" and obs.address.startswith("127.0.0.1:") and obs.boot_ms is not None
    assert provider.create(InstanceSpec("i1", "p1", "warmpool"), start=True).address == obs.address  # idempotent
    files = provider.root / "instances" / obs.ref / "files"
    (files / "hello.txt").write_text("warm")
    assert fetch(obs.address, "hello.txt") == "warm"
    stopped = provider.stop(obs.ref)
    assert stopped.state == "stopped" and (files / "hello.txt").exists()
    again = provider.start(obs.ref)
    assert fetch(again.address, "hello.txt") == "warm"
    assert [o.instance_id for o in provider.list("warmpool")] == ["i1"] and provider.list("other") == []
    snap = provider.snapshot(obs.ref, "s")
    clone = provider.create(InstanceSpec("i2", "p1", "warmpool", snapshot_id=snap), start=True)
    assert fetch(clone.address, "hello.txt") == "warm"
    provider.delete(obs.ref)
    provider.delete(obs.ref)
    assert provider.get(obs.ref) is None


def test_a_dead_process_is_reported_failed_and_unknown_snapshots_are_permanent(provider, tmp_path):
    dying = LocalProvider({"root": str(tmp_path / "local"), "command": "sleep 0.01"})  # the operator's command
    obs = dying.create(InstanceSpec("i3", "p1", "warmpool"), start=False)
    assert obs.state == "stopped"
    with pytest.raises(ProviderTransient, match="exited"):
        dying.start(obs.ref)
    running = provider.create(InstanceSpec("i5", "p1", "warmpool"), start=True)
    meta = provider._meta(running.ref)
    os.killpg(meta["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while provider.get(running.ref).state != "failed" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert provider.get(running.ref).state == "failed"
    with pytest.raises(ProviderPermanent):
        provider.create(InstanceSpec("i4", "p1", "warmpool", snapshot_id="nope"), start=True)


def test_observe_reports_a_killed_process_at_once_not_at_the_next_list(provider, monkeypatch):
    import threading

    from config.settings import get_settings

    monkeypatch.setenv("WARMPOOL_OBSERVER__LOCAL_LIST_SECONDS", "30")  # only the exit itself can wake it in time
    get_settings.cache_clear()
    running = provider.create(InstanceSpec("i6", "p1", "warmpool"), start=True)
    stop = threading.Event()
    stream = provider.observe("warmpool", stop)
    first = next(stream)
    assert first.full and [(o.ref, o.state) for o in first.observed] == [(running.ref, "running")]
    got: list = []
    reader = threading.Thread(target=lambda: got.append(next(stream)), daemon=True)
    reader.start()
    killed = time.monotonic()
    os.killpg(provider._meta(running.ref)["pid"], signal.SIGKILL)
    reader.join(5)
    took = time.monotonic() - killed
    stop.set()
    get_settings.cache_clear()
    # Seen within the reader's 5 s, with the periodic list at 30 s: the exit itself woke it (no tighter
    # wall-clock bound: that would measure the machine's load).
    assert got and [(o.ref, o.state) for o in got[0].observed] == [(running.ref, "failed")], f"not seen in {took:.2f}s"
