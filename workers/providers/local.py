"""The `local` provider: real OS processes on this machine, the provider of `warmpool dev`.

A snapshot is a directory; an instance is a copy of it (or of an empty directory) with a process started
in it, listening on its own loopback port; stopped = process stopped, files kept; deleted = both gone.
Every instance keeps `meta.json` (our tags, pid, port, state) beside its files, so any process on the
machine (api, worker, orphan collection) sees the same instances.

Settings (`models.LocalSettings` for what a runner may set; the rest is the operator's,
WARMPOOL_PROVIDERS__LOCAL__*, merged in by workers.providers.catalog):
  ready_timeout  seconds to wait for the port to accept connections (default 15); a runner setting
  root      where instances and snapshots live (operator: <WARMPOOL_DATA_DIR>/local)
  command   the process to run, with {port} and {dir} filled in (operator only, never from a runner or a
            template; default: "<python> -m http.server {port} --bind 127.0.0.1", serving the instance's files)
  pass_env  extra environment variable names instance processes inherit (operator only)

Observed (`observe`): the observer lists the instances every `observer.local_list_seconds` and, in between,
waits on a pidfd of every running instance process, so an exit (a crash, a SIGKILL) is reported at once
as `failed`. pidfds need Linux 5.3+; elsewhere the periodic list alone notices it.

Instance processes get a scrubbed environment: a few harmless variables (PATH, HOME, LANG…), the ones the
operator lists in pass_env, and PORT; never WARMPOOL_* (database URL, keys) or anything else of ours.
"""
from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.providers.base import (
    INSTANCE_TAG, OWNER_TAG, POOL_TAG, InstanceSpec, Observed, Provider, ProviderPermanent, ProviderTransient,
    Sighting,
)
from workers.providers.models import LocalSettings, LocalTemplate

_children: dict[int, subprocess.Popen] = {}
SAFE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")


def child_environment(port: int, pass_env: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of an instance process: nothing of the worker's but harmless names and pass_env."""
    names = [n for n in (*SAFE_ENV, *pass_env) if not n.upper().startswith("WARMPOOL_")]
    env = {name: os.environ[name] for name in names if name in os.environ}
    env["PORT"] = str(port)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _wait_for_exit(pids: list[int], timeout: float) -> bool:
    """Wait up to `timeout` seconds for any of `pids` to exit, on pidfds (which work for processes that are
    not our children); False if pidfds are not available here, so the caller waits on its own."""
    if not hasattr(os, "pidfd_open"):
        return False
    fds = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                return True  # gone already: list again now
            except OSError:
                return False
        if not fds:
            return False
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(timeout * 1000)  # readable once the process has exited (a zombie included)
        return True
    finally:
        for fd in fds:
            os.close(fd)


class LocalProvider(Provider):
    name = "local"
    settings_model = LocalSettings
    template_model = LocalTemplate

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        from config.settings import get_settings

        self.root = Path(self.settings.get("root") or get_settings().data_dir / "local").resolve()
        (self.root / "instances").mkdir(parents=True, exist_ok=True)
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)

    # ---- storage ---------------------------------------------------------------------------
    def _dir(self, ref: str) -> Path:
        if not ref or "/" in ref or ref.startswith("."):
            raise ProviderPermanent(f"invalid local instance reference {ref!r}")
        return self.root / "instances" / ref

    def _meta(self, ref: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._dir(ref) / "meta.json").read_text())
        except (OSError, ValueError):
            return None

    def _save(self, ref: str, meta: dict[str, Any]) -> None:
        tmp = self._dir(ref) / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(self._dir(ref) / "meta.json")

    def _observed(self, meta: dict[str, Any]) -> Observed:
        state, message = meta["state"], ""
        if state == "running" and not _alive(meta.get("pid")):
            state, message = "failed", "the instance process exited"
        tags = meta.get("tags", {})
        return Observed(ref=meta["ref"], state=state, instance_id=tags.get(INSTANCE_TAG), pool_id=tags.get(POOL_TAG),
                        owner=tags.get(OWNER_TAG), address=f"127.0.0.1:{meta['port']}" if state == "running" else "",
                        boot_ms=meta.get("boot_ms"), message=message)

    # ---- processes -------------------------------------------------------------------------
    def _spawn(self, ref: str, meta: dict[str, Any]) -> dict[str, Any]:
        port = _free_port()
        files = self._dir(ref) / "files"
        command = self.settings.get("command") or f"{shlex.quote(sys.executable)} -m http.server {{port}} --bind 127.0.0.1"
        argv = shlex.split(command.format(port=port, dir=str(files)))
        log = open(self._dir(ref) / "console.log", "ab")
        began = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=files, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True,
                                    env=child_environment(port, self.settings.get("pass_env") or ()))
        except OSError as exc:
            raise ProviderPermanent(f"cannot start {argv[0]!r}: {exc}") from exc
        finally:
            log.close()
        _children[proc.pid] = proc
        deadline = began + float(self.settings.get("ready_timeout", 15))
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ProviderTransient(f"instance process exited with {proc.returncode} before listening")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self._kill(proc.pid)
            raise ProviderTransient(f"instance process did not listen on port {port} in time")
        meta.update(state="running", pid=proc.pid, port=port, boot_ms=int((time.monotonic() - began) * 1000))
        return meta

    @staticmethod
    def _kill(pid: int | None) -> None:
        if not pid or not _alive(pid):
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            return
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        child = _children.pop(pid, None)
        if child is not None:
            child.wait(5)

    # ---- the contract ----------------------------------------------------------------------
    def create(self, spec: InstanceSpec, start: bool) -> Observed:
        ref = f"local-{spec.instance_id}"
        meta = self._meta(ref)
        if meta is None:
            target = self._dir(ref)
            if target.exists():
                shutil.rmtree(target)  # a half-made copy from an interrupted create
            source = self.root / "snapshots" / spec.snapshot_id if spec.snapshot_id else None
            if source is not None and source.is_dir():
                shutil.copytree(source, target / "files")
            elif spec.snapshot_id and not spec.snapshot_id.startswith("local-snap-"):
                raise ProviderPermanent(f"snapshot {spec.snapshot_id} does not exist on this machine")
            else:
                (target / "files").mkdir(parents=True)
            # `provisioning` until its process listens: an observer listing meanwhile sees it on its way.
            meta = {"ref": ref, "state": "provisioning" if start else "stopped", "template": spec.template,
                    "snapshot_id": spec.snapshot_id,
                    "tags": {OWNER_TAG: spec.owner, INSTANCE_TAG: spec.instance_id, POOL_TAG: spec.pool_id}}
            self._save(ref, meta)
        return self.start(ref) if start else self._observed(meta)

    def start(self, ref: str) -> Observed:
        meta = self._meta(ref)
        if meta is None:
            raise ProviderPermanent(f"no local instance {ref}")
        if meta["state"] == "running" and _alive(meta.get("pid")):
            return self._observed(meta)
        if meta["state"] != "provisioning":
            meta.update(state="starting", pid=None)
            self._save(ref, meta)
        meta = self._spawn(ref, meta)
        self._save(ref, meta)
        return self._observed(meta)

    def stop(self, ref: str) -> Observed:
        meta = self._meta(ref)
        if meta is None:
            raise ProviderPermanent(f"no local instance {ref}")
        self._kill(meta.get("pid"))
        meta.update(state="stopped", pid=None)
        self._save(ref, meta)
        return self._observed(meta)

    def delete(self, ref: str) -> None:
        meta = self._meta(ref)
        if meta is not None:
            self._kill(meta.get("pid"))
        shutil.rmtree(self._dir(ref), ignore_errors=True)

    def get(self, ref: str) -> Observed | None:
        meta = self._meta(ref)
        return self._observed(meta) if meta else None

    def _metas(self) -> list[dict[str, Any]]:
        metas = (self._meta(d.name) for d in sorted((self.root / "instances").iterdir()))
        return [m for m in metas if m is not None]

    def list(self, owner_tag: str | None = None) -> list[Observed]:
        out = [self._observed(meta) for meta in self._metas()]
        return [obs for obs in out if owner_tag is None or obs.owner == owner_tag]

    def observe(self, owner: str, stop: threading.Event) -> Iterator[Sighting]:
        """A full listing every `observer.local_list_seconds`, and one at once when a running instance's process exits."""
        from config.settings import get_settings

        interval = get_settings().observer.local_list_seconds
        while not stop.is_set():
            metas = [m for m in self._metas() if (m.get("tags") or {}).get(OWNER_TAG) == owner]
            listed = [self._observed(m) for m in metas]
            yield Sighting(listed, full=True)
            # The processes this listing reported running, alive or not by now: one that exited since the
            # listing (while the consumer held the generator) makes the wait return at once, not at the next list.
            pids = [m["pid"] for m, o in zip(metas, listed, strict=True) if o.state == "running" and m.get("pid")]
            if not _wait_for_exit(pids, interval):
                stop.wait(interval)

    def logs(self, ref: str, lines: int = 100) -> str:
        try:
            return "\n".join((self._dir(ref) / "console.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def halt_all(self) -> int:
        """Stop every instance process (files and records stay): `warmpool dev` calls this on exit so a
        laptop is not left with stray processes. The next orphan pass reports them failed; they are replaced."""
        halted = 0
        for d in (self.root / "instances").iterdir():
            meta = self._meta(d.name)
            if meta and _alive(meta.get("pid")):
                self._kill(meta["pid"])
                halted += 1
        return halted

    def snapshot(self, ref: str, name: str) -> str:
        if self._meta(ref) is None:
            raise ProviderPermanent(f"no local instance {ref}")
        snapshot_id = f"local-snap-{uuid.uuid4()}"
        shutil.copytree(self._dir(ref) / "files", self.root / "snapshots" / snapshot_id)
        return snapshot_id

    def delete_snapshot(self, snapshot_id: str) -> None:
        if "/" not in snapshot_id:
            shutil.rmtree(self.root / "snapshots" / snapshot_id, ignore_errors=True)
