"""The `fake` provider: a simulated cloud kept in Redis, so the API, workers and tests see one cloud.

It behaves like a cloud: `create` and `start` return at once in `provisioning`/`starting` (`stop` in
`stopping`), and the cloud itself moves the resource on after the configured latency. The pending
move is a due time in a sorted set; whoever looks at the cloud next once it is due (the observer's
watch, `get`, `list`) carries it out, and exactly one of them does (ZREM decides), so from outside the
resource changed at its due time. Every change is appended to the cloud's change feed (a Redis
Stream), which `observe` follows: the fake cloud's own watch.

Configurable per runner (runner settings) and live (a Redis hash the tests may change while the
engine runs, see `FakeCloud.configure`):
  namespace            which simulated cloud (default "default")
  boot_ms              latency of create (default 200), start_ms (100), stop_ms (50), delete_ms (20; also of a
                       create that leaves the resource stopped, as before)
  fail_<op>            failure rate 0..1 of create/start/stop/delete/snapshot (default 0)
  fail_<op>_permanent  "true": those failures are permanent instead of transient
  snapshots_broken     "true": snapshots taken from now on are bad (instances made from them go `failed`
                       at boot; FakeCloud.break_snapshot marks one directly)
  seed                 makes failures deterministic: the n-th attempt of an op on a resource fails or
                       not by a hash of (seed, op, resource, n), whatever process runs it
"""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis as redis_lib

from workers.providers.base import (
    INSTANCE_TAG, OWNER_TAG, POOL_TAG, InstanceSpec, Observed, Provider, ProviderError, ProviderPermanent,
    ProviderTransient, Sighting,
)
from workers.providers.models import FakeSettings, FakeTemplate

DEFAULTS = {"boot_ms": 200, "start_ms": 100, "stop_ms": 50, "delete_ms": 20, "snapshot_ms": 100}
# Redis times out a blocked read on its own timer (hz 10 by default): up to about 100 ms after the time asked
# for. The watch never blocks past a due move by more than that margin, and waits out the rest itself.
_REDIS_TIMER_MS = 110


class FakeCloud:
    """The Redis keys of one simulated cloud."""

    def __init__(self, client: redis_lib.Redis, namespace: str = "default") -> None:
        self.r = client
        base = f"warmpool:fake:{namespace}"
        self.resources, self.config_key, self.attempts = f"{base}:resources", f"{base}:config", f"{base}:attempts"
        self.snapshots = f"{base}:snapshots"
        self.broken = f"{base}:broken"  # snapshots whose instances fail to boot (a bad prebuild)
        self.due, self.changes = f"{base}:due", f"{base}:changes"
        self.calls_key = f"{base}:calls"
        self.batch_log = f"{base}:batches"

    def configure(self, **values: Any) -> None:
        """Change the cloud's behaviour for every process at once (e.g. fail_create=1, boot_ms=500)."""
        if values:
            self.r.hset(self.config_key, mapping={k: str(v) for k, v in values.items()})

    def break_snapshot(self, snapshot_id: str) -> None:
        """Instances created from this snapshot from now on go `failed` where they would be `running`."""
        self.r.sadd(self.broken, snapshot_id)

    def reset_config(self) -> None:
        self.r.delete(self.config_key)

    def config(self) -> dict[str, str]:
        return self.decoded(self.r.hgetall(self.config_key))

    @staticmethod
    def decoded(raw: dict[Any, Any]) -> dict[str, str]:
        """The config hash as HGETALL returns it, as text."""
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}

    def put(self, ref: str, record: dict[str, Any]) -> None:
        """Store the record and announce it on the change feed; a pending move (record["next"]) gets its due time."""
        self.put_many({ref: record})

    def put_many(self, records: dict[str, dict[str, Any]], batch: tuple[str, int] | None = None) -> None:
        """`put` for many records in one round trip; `batch` (operation, size) records a batch call (`batches`)
        and, for `create`, counts each record made (`calls`)."""
        # One encoding per record, and one command per kind of write rather than per record, but still one
        # change-feed entry per record (what a watch reports).
        encoded = {ref: json.dumps(record, separators=(",", ":")) for ref, record in records.items()}
        due = {ref: record["next"]["at"] for ref, record in records.items() if record.get("next")}
        settled = [ref for ref, record in records.items() if not record.get("next")]
        # MULTI/EXEC: the record, its due time and its feed entry land together. Without it another process's
        # `advance` could claim the due move between the ZADD and the XADD and announce `running` before this
        # announces `provisioning`: a watch then ends on `provisioning` for a resource that runs, and the
        # instance never becomes ready (seen in tests/e2e/test_lease_race.py with 0 ms boots).
        pipe = self.r.pipeline(transaction=True)
        if batch and batch[0] == "create":
            for record in records.values():
                pipe.hincrby(self.calls_key, f"create:{record['tags'][INSTANCE_TAG]}", 1)
        if encoded:
            pipe.hset(self.resources, mapping=encoded)
        if due:
            pipe.zadd(self.due, due)
        if settled:
            pipe.zrem(self.due, *settled)
        for ref, raw in encoded.items():
            pipe.xadd(self.changes, {"ref": ref, "record": raw}, maxlen=100_000, approximate=True)
        if batch:
            pipe.rpush(self.batch_log, f"{batch[0]}:{batch[1]}")
            pipe.ltrim(self.batch_log, -1000, -1)
        pipe.execute()

    def put_existing(self, records: dict[str, dict[str, Any]]) -> None:
        """`put_many` for records that may have been deleted since they were read: each is written (with its due
        time and its feed entry) only if it is still there, in one step. A plain write after a concurrent `drop`
        brought the resource back: `advance` read a booting record, a delete dropped it, and the move to
        `running` stored it again, a resource no instance owns (tests/integration/test_delete_inflight.py)."""
        args: list[Any] = [100_000]
        for ref, record in records.items():
            nxt = record.get("next")
            args += [ref, json.dumps(record, separators=(",", ":")), nxt["at"] if nxt else ""]
        self.r.eval(_PUT_EXISTING, 3, self.resources, self.due, self.changes, *args)

    def batches(self, op: str = "create") -> list[int]:
        """The sizes of the last batch calls of `op` this cloud answered, oldest first (what tests look at)."""
        sizes = [raw.decode() if isinstance(raw, bytes) else raw for raw in self.r.lrange(self.batch_log, 0, -1)]
        return [int(n) for name, _, n in (x.partition(":") for x in sizes) if name == op]

    def load(self, ref: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.resources, ref)
        return json.loads(raw) if raw else None

    def drop(self, ref: str) -> None:
        pipe = self.r.pipeline()
        pipe.hdel(self.resources, ref)
        pipe.zrem(self.due, ref)
        pipe.xadd(self.changes, {"ref": ref, "record": ""}, maxlen=100_000, approximate=True)
        pipe.execute()

    def advance(self, now_ms: float | None = None) -> int:
        """Carry out every pending move that is due (provisioning -> running, …); returns how many this call
        made. Each is claimed by ZREM, so concurrent callers never make the same move twice. A few round
        trips per thousand moves, however many fall due at once."""
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        moved = 0
        while True:
            due = [raw.decode() if isinstance(raw, bytes) else raw
                   for raw in self.r.zrangebyscore(self.due, "-inf", now_ms, start=0, num=1000)]
            if not due:
                return moved
            pipe = self.r.pipeline(transaction=False)
            for ref in due:
                pipe.zrem(self.due, ref)
            won = [ref for ref, removed in zip(due, pipe.execute()) if removed]  # the others: another caller's
            records = {}
            for ref, raw in zip(won, self.r.hmget(self.resources, won) if won else []):
                record = json.loads(raw) if raw else None
                if record is None or not record.get("next"):
                    continue
                nxt = record.pop("next")
                record["state"] = nxt["state"]
                record["boot_ms"] = nxt.get("boot_ms", record.get("boot_ms"))
                if nxt["state"] == "running":
                    record["address"] = record.get("address") or nxt.get("address", "")
                elif nxt["state"] == "stopped":
                    record["address"] = ""
                record.setdefault("log", []).append(nxt["state"])
                records[ref] = record
            if records:
                self.put_existing(records)
            moved += len(records)
            if len(due) < 1000:
                return moved

    def next_due(self) -> float | None:
        """Epoch ms of the earliest pending move, or None."""
        first = self.r.zrange(self.due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def feed_position(self) -> str:
        last = self.r.xrevrange(self.changes, count=1)
        return str(last[0][0].decode() if isinstance(last[0][0], bytes) else last[0][0]) if last else "0-0"

    def all(self) -> dict[str, dict[str, Any]]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(self.resources).items()}

    # ---- work done, counted by the cloud itself (tests/chaos asserts no resource is made twice) ----
    def count(self, op: str, key: str) -> None:
        """One unit of work the cloud did (`create` made a resource, `delete` removed one), per resource key.
        Kept in the cloud's own Redis, so it dies with the cloud (a flush is a new cloud)."""
        self.r.hincrby(self.calls_key, f"{op}:{key}", 1)

    def calls(self, op: str) -> dict[str, int]:
        """How many times the cloud did `op`, by key (instance id for create, ref for delete)."""
        prefix = f"{op}:"
        return {k.decode()[len(prefix):]: int(v) for k, v in self.r.hgetall(self.calls_key).items()
                if k.decode().startswith(prefix)}

    def leak(self, instance_id: str, pool_id: str, owner: str, state: str = "running") -> str:
        """Create a resource tagged as ours behind the engine's back (for orphan-collection tests)."""
        ref = f"fake-{instance_id}"
        self.put(ref, {"ref": ref, "state": state, "tags": {OWNER_TAG: owner, INSTANCE_TAG: instance_id, POOL_TAG: pool_id},
                       "address": "", "boot_ms": 0, "log": []})
        return ref


# KEYS: resources, due, changes; ARGV: the feed's maxlen, then (ref, record, due time or "") per record.
_PUT_EXISTING = """
for i = 2, #ARGV, 3 do
  local ref, raw, at = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HEXISTS', KEYS[1], ref) == 1 then
    redis.call('HSET', KEYS[1], ref, raw)
    if at ~= '' then redis.call('ZADD', KEYS[2], at, ref) else redis.call('ZREM', KEYS[2], ref) end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'ref', ref, 'record', raw)
  end
end
return 0
"""


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
    def _behaviour(self, live: dict[str, str] | None = None) -> dict[str, Any]:
        """The cloud's behaviour for one operation: defaults, runner settings, then live changes (one read, or
        `live` as the caller read it)."""
        return {**DEFAULTS, **self.settings, **(self.cloud.config() if live is None else live)}

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

    # ---- the contract ----------------------------------------------------------------------
    @staticmethod
    def _schedule(record: dict[str, Any], state: str, ms: float, **more: Any) -> None:
        record["next"] = {"state": state, "at": time.time() * 1000 + ms, "boot_ms": int(ms), **more}

    @staticmethod
    def _latency(op: str, conf: dict[str, Any]) -> float:
        return max(float(conf.get(f"{op}_ms", 0) or 0), 0.0)

    def _new_record(self, spec: InstanceSpec, start: bool, conf: dict[str, Any], *, broken: bool = False) -> dict[str, Any]:
        """A new resource in `provisioning`, its next move scheduled (a broken snapshot's boot fails)."""
        record = {
            "ref": f"fake-{spec.instance_id}", "state": "provisioning", "snapshot_id": spec.snapshot_id,
            "template": spec.template, "address": "", "boot_ms": None,
            "log": [f"created from {spec.snapshot_id or 'image'}"],
            "tags": {OWNER_TAG: spec.owner, INSTANCE_TAG: spec.instance_id, POOL_TAG: spec.pool_id},
        }
        if start and broken:
            self._schedule(record, "failed", self._latency("boot", conf))
        elif start:
            self._schedule(record, "running", self._latency("boot", conf),
                           address=f"10.0.{random.randint(0, 255)}.{random.randint(1, 254)}")
        else:
            self._schedule(record, "stopped", self._latency("delete", conf))
        return record

    def create(self, spec: InstanceSpec, start: bool) -> Observed:
        """Returns at once in `provisioning`; the cloud makes it `running` after boot_ms (or `stopped` after
        delete_ms when not started)."""
        ref = f"fake-{spec.instance_id}"
        existing = self.cloud.load(ref)
        if existing is not None:  # idempotent: our instance id is the key
            return self.start(ref) if start else self._observed(existing)
        conf = self._behaviour()
        self._maybe_fail("create", spec.instance_id, conf)
        broken = start and bool(spec.snapshot_id) and bool(self.cloud.r.sismember(self.cloud.broken, spec.snapshot_id))
        record = self._new_record(spec, start, conf, broken=broken)
        self.cloud.put(ref, record)
        self.cloud.count("create", spec.instance_id)
        return self._observed(record)

    def create_many(self, specs: list[InstanceSpec], start: bool) -> list[Observed | ProviderError]:
        """The fake cloud's batch endpoint: one round trip finds which already exist (our instance id is the
        key, as for `create`) with the cloud's behaviour and its broken snapshots, one stores the new ones,
        whatever the batch's size; failures are drawn per instance as for `create`. Each call is recorded
        (`FakeCloud.batches`)."""
        if not specs:
            return []
        refs = [f"fake-{spec.instance_id}" for spec in specs]
        snapshots = sorted({spec.snapshot_id for spec in specs if spec.snapshot_id}) if start else []
        pipe = self.cloud.r.pipeline(transaction=False)
        pipe.hmget(self.cloud.resources, refs)
        pipe.hgetall(self.cloud.config_key)
        if snapshots:
            pipe.smismember(self.cloud.broken, snapshots)
        found, live, *bad = pipe.execute()
        existing = dict(zip(refs, found))
        broken = {snap for snap, is_bad in zip(snapshots, bad[0]) if is_bad} if snapshots else set()
        conf = self._behaviour(FakeCloud.decoded(live))
        made: dict[str, dict[str, Any]] = {}
        out: list[Observed | ProviderError] = []
        for spec, ref in zip(specs, refs):
            try:
                if ref in made:  # the same instance twice in one batch: one resource
                    out.append(self._observed(made[ref]))
                elif existing[ref] is not None:
                    out.append(self.start(ref) if start else self._observed(json.loads(existing[ref])))
                else:
                    self._maybe_fail("create", spec.instance_id, conf)
                    made[ref] = self._new_record(spec, start, conf, broken=spec.snapshot_id in broken)
                    out.append(self._observed(made[ref]))
            except ProviderError as exc:
                out.append(exc)
        self.cloud.put_many(made, batch=("create", len(specs)))
        return out

    def start(self, ref: str) -> Observed:
        """Returns at once in `starting` (a resource running or on its way there is left as it is); `running`
        after start_ms."""
        record = self._require(ref)
        if record["state"] == "running" or (record.get("next") or {}).get("state") == "running":
            return self._observed(record)
        conf = self._behaviour()
        self._maybe_fail("start", ref, conf)
        record["state"] = "starting"
        self._schedule(record, "running", self._latency("start", conf),
                       address=record.get("address") or f"10.1.{random.randint(0, 255)}.{random.randint(1, 254)}")
        record["log"].append("starting")
        self.cloud.put(ref, record)
        return self._observed(record)

    def stop(self, ref: str) -> Observed:
        """Returns at once in `stopping`; `stopped` after stop_ms."""
        record = self._require(ref)
        if record["state"] == "stopped" or (record.get("next") or {}).get("state") == "stopped":
            return self._observed(record)
        conf = self._behaviour()
        self._maybe_fail("stop", ref, conf)
        record["state"] = "stopping"
        self._schedule(record, "stopped", self._latency("stop", conf), boot_ms=record.get("boot_ms"))
        record["log"].append("stopping")
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
        self.cloud.count("delete", ref)

    def get(self, ref: str) -> Observed | None:
        self.cloud.advance()
        record = self.cloud.load(ref)
        return self._observed(record) if record else None

    def list(self, owner_tag: str | None = None) -> list[Observed]:
        self.cloud.advance()
        out = [self._observed(r) for r in self.cloud.all().values()]
        return [o for o in out if owner_tag is None or o.owner == owner_tag]

    def observe(self, owner: str, stop: threading.Event) -> Iterator[Sighting]:
        """The cloud's change feed: a full listing, then every change as the cloud makes it (this loop also
        carries out the moves that fall due while it waits)."""
        position = self.cloud.feed_position()  # read before listing: nothing between the two is missed
        yield Sighting(self.list(owner), full=True)
        while not stop.is_set():
            self.cloud.advance()
            due = self.cloud.next_due()
            wait_ms = 1000 if due is None else min(1000, max(int(due - time.time() * 1000), 1))
            if wait_ms > _REDIS_TIMER_MS:  # woken by a change at once, by the timeout up to _REDIS_TIMER_MS late
                response = self.cloud.r.xread({self.cloud.changes: position}, count=1000,
                                              block=wait_ms - _REDIS_TIMER_MS if due is not None else wait_ms)
            else:  # a move falls due sooner than Redis would time out: keep the cloud's clock here
                stop.wait(min(wait_ms, 10) / 1000)
                response = self.cloud.r.xread({self.cloud.changes: position}, count=1000)
            changed: dict[str, Observed] = {}  # by ref, the last change of each: one batch says where each ended
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    position = entry_id
                    raw = fields.get(b"record", fields.get("record"))
                    ref = fields.get(b"ref", fields.get("ref"))
                    ref = ref.decode() if isinstance(ref, bytes) else ref
                    changed.pop(ref, None)
                    if raw:
                        obs = self._observed(json.loads(raw))
                        if obs.owner == owner:
                            changed[ref] = obs
                    else:  # dropped: its tags are gone with it, the observer knows them
                        changed[ref] = Observed(ref=ref, state="deleted")
            if changed:
                yield Sighting(list(changed.values()))

    def logs(self, ref: str, lines: int = 100) -> str:
        return "\n".join(self._require(ref).get("log", [])[-lines:])

    def snapshot(self, ref: str, name: str) -> str:
        self._require(ref)
        conf = self._behaviour()
        self._maybe_fail("snapshot", ref, conf)
        self._pause("snapshot", conf)
        snapshot_id = f"fake-snap-{uuid.uuid4()}"
        self.cloud.r.sadd(self.cloud.snapshots, snapshot_id)
        if str(conf.get("snapshots_broken", "false")).lower() == "true":
            self.cloud.break_snapshot(snapshot_id)
        return snapshot_id

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.cloud.r.srem(self.cloud.snapshots, snapshot_id)
