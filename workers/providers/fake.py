"""The `fake` provider: a simulated cloud kept in Redis, so the API, workers and tests see one cloud.

Configurable per runner (runner settings) and live (a Redis hash the tests may change while the
engine runs, see `FakeCloud.configure`):
  namespace            which simulated cloud (default "default")
  boot_ms              latency of create (default 200), start_ms (100), stop_ms (50), delete_ms (20)
  fail_<op>            failure rate 0..1 of create/start/stop/delete/snapshot (default 0)
  fail_<op>_permanent  "true": those failures are permanent instead of transient
  seed                 makes failures deterministic: the n-th attempt of an op on a resource fails or
                       not by a hash of (seed, op, resource, n), whatever process runs it
"""
from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

import redis as redis_lib

from workers.providers.base import (
    INSTANCE_TAG, OWNER_TAG, POOL_TAG, InstanceSpec, Observed, Provider, ProviderPermanent, ProviderTransient,
)
from workers.providers.models import FakeSettings, FakeTemplate

DEFAULTS = {"boot_ms": 200, "start_ms": 100, "stop_ms": 50, "delete_ms": 20, "snapshot_ms": 100}


class FakeCloud:
    """The Redis keys of one simulated cloud."""

    def __init__(self, client: redis_lib.Redis, namespace: str = "default") -> None:
        self.r = client
        base = f"warmpool:fake:{namespace}"
        self.resources, self.config_key, self.attempts = f"{base}:resources", f"{base}:config", f"{base}:attempts"
        self.snapshots = f"{base}:snapshots"

    def configure(self, **values: Any) -> None:
        """Change the cloud's behaviour for every process at once (e.g. fail_create=1, boot_ms=500)."""
        if values:
            self.r.hset(self.config_key, mapping={k: str(v) for k, v in values.items()})

    def reset_config(self) -> None:
        self.r.delete(self.config_key)

    def config(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self.config_key).items()}

    def put(self, ref: str, record: dict[str, Any]) -> None:
        self.r.hset(self.resources, ref, json.dumps(record))

    def load(self, ref: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.resources, ref)
        return json.loads(raw) if raw else None

    def drop(self, ref: str) -> None:
        self.r.hdel(self.resources, ref)

    def all(self) -> dict[str, dict[str, Any]]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(self.resources).items()}

    def leak(self, instance_id: str, pool_id: str, owner: str, state: str = "running") -> str:
        """Create a resource tagged as ours behind the engine's back (for orphan-collection tests)."""
        ref = f"fake-{instance_id}"
        self.put(ref, {"ref": ref, "state": state, "tags": {OWNER_TAG: owner, INSTANCE_TAG: instance_id, POOL_TAG: pool_id},
                       "address": "", "boot_ms": 0, "log": []})
        return ref


class FakeProvider(Provider):
    name = "fake"
    settings_model = FakeSettings
    template_model = FakeTemplate

    def __init__(self, settings: dict[str, Any] | None = None, client: redis_lib.Redis | None = None) -> None:
        super().__init__(settings)
        if client is None:
            from app.events import redis_client

            client = redis_client()
        self.cloud = FakeCloud(client, str(self.settings.get("namespace", "default")))

    # ---- behaviour -----------------------------------------------------------------------
    def _behaviour(self) -> dict[str, Any]:
        """The cloud's behaviour for one operation: defaults, runner settings, then live changes (one read)."""
        return {**DEFAULTS, **self.settings, **self.cloud.config()}

    @staticmethod
    def _pause(op: str, conf: dict[str, Any]) -> None:
        ms = float(conf.get(f"{op}_ms", 0) or 0)
        if ms > 0:
            time.sleep(ms / 1000.0)

    def _maybe_fail(self, op: str, key: str, conf: dict[str, Any]) -> None:
        rate = float(conf.get(f"fail_{op}", 0) or 0)
        if rate <= 0:
            return
        attempt = self.cloud.r.hincrby(self.cloud.attempts, f"{op}:{key}", 1)
        seed = conf.get("seed")
        rng = random.Random(f"{seed}:{op}:{key}:{attempt}") if seed is not None else random.Random()
        if rng.random() < rate:
            message = f"fake cloud: {op} of {key} failed (attempt {attempt})"
            if str(conf.get(f"fail_{op}_permanent", "false")).lower() == "true":
                raise ProviderPermanent(message)
            raise ProviderTransient(message, retry_after=0.1)

    @staticmethod
    def _observed(record: dict[str, Any]) -> Observed:
        tags = record.get("tags", {})
        return Observed(
            ref=record["ref"], state=record["state"], instance_id=tags.get(INSTANCE_TAG), pool_id=tags.get(POOL_TAG),
            owner=tags.get(OWNER_TAG), address=record.get("address", ""), boot_ms=record.get("boot_ms"),
            extra={"snapshot_id": record.get("snapshot_id")},
        )

    def _require(self, ref: str) -> dict[str, Any]:
        record = self.cloud.load(ref)
        if record is None:
            raise ProviderPermanent(f"fake cloud: no resource {ref}")
        return record

    # ---- the contract --------------------------------------------------------------------
    def create(self, spec: InstanceSpec, start: bool) -> Observed:
        ref = f"fake-{spec.instance_id}"
        existing = self.cloud.load(ref)
        if existing is not None:  # idempotent: our instance id is the key
            return self.start(ref) if start else self._observed(existing)
        conf = self._behaviour()
        self._maybe_fail("create", spec.instance_id, conf)
        began = time.monotonic()
        self._pause("boot" if start else "delete", conf)
        record = {
            "ref": ref, "state": "running" if start else "stopped", "snapshot_id": spec.snapshot_id,
            "template": spec.template, "address": f"10.0.{random.randint(0, 255)}.{random.randint(1, 254)}" if start else "",
            "boot_ms": int((time.monotonic() - began) * 1000), "log": [f"created from {spec.snapshot_id or 'image'}"],
            "tags": {OWNER_TAG: spec.owner, INSTANCE_TAG: spec.instance_id, POOL_TAG: spec.pool_id},
        }
        self.cloud.put(ref, record)
        return self._observed(record)

    def start(self, ref: str) -> Observed:
        record = self._require(ref)
        if record["state"] != "running":
            conf = self._behaviour()
            self._maybe_fail("start", ref, conf)
            began = time.monotonic()
            self._pause("start", conf)
            record.update(state="running", boot_ms=int((time.monotonic() - began) * 1000),
                          address=record.get("address") or f"10.1.{random.randint(0, 255)}.{random.randint(1, 254)}")
            record["log"].append("started")
            self.cloud.put(ref, record)
        return self._observed(record)

    def stop(self, ref: str) -> Observed:
        record = self._require(ref)
        if record["state"] != "stopped":
            conf = self._behaviour()
            self._maybe_fail("stop", ref, conf)
            self._pause("stop", conf)
            record.update(state="stopped", address="")
            record["log"].append("stopped")
            self.cloud.put(ref, record)
        return self._observed(record)

    def reset(self, ref: str) -> Observed:
        record = self._require(ref)
        conf = self._behaviour()
        self._maybe_fail("reset", ref, conf)
        self._pause("reset", conf)
        record["log"].append("reset for the next lease")
        self.cloud.put(ref, record)
        return self._observed(record)

    def delete(self, ref: str) -> None:
        if self.cloud.load(ref) is None:
            return
        conf = self._behaviour()
        self._maybe_fail("delete", ref, conf)
        self._pause("delete", conf)
        self.cloud.drop(ref)

    def get(self, ref: str) -> Observed | None:
        record = self.cloud.load(ref)
        return self._observed(record) if record else None

    def list(self, owner_tag: str | None = None) -> list[Observed]:
        out = [self._observed(r) for r in self.cloud.all().values()]
        return [o for o in out if owner_tag is None or o.owner == owner_tag]

    def logs(self, ref: str, lines: int = 100) -> str:
        return "\n".join(self._require(ref).get("log", [])[-lines:])

    def snapshot(self, ref: str, name: str) -> str:
        self._require(ref)
        conf = self._behaviour()
        self._maybe_fail("snapshot", ref, conf)
        self._pause("snapshot", conf)
        snapshot_id = f"fake-snap-{uuid.uuid4()}"
        self.cloud.r.sadd(self.cloud.snapshots, snapshot_id)
        return snapshot_id

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.cloud.r.srem(self.cloud.snapshots, snapshot_id)
