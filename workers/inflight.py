"""One in-flight task per (pool, kind) and per (instance, operation), so a task storm cannot form.

Enqueueing takes a Redis key (TTL about the task's expected life); while it exists, a second enqueue
of the same (task, id) is dropped.
- A provider task (provision/start/stop/delete of one instance) holds its key from enqueue to end:
  refreshed when it starts and when it schedules a retry (the retry is the same task in flight),
  released when it ends. The reconciler's re-kicks of a stuck instance are dropped meanwhile.
- `reconcile_pool` is level-triggered, so a change committed while a pass runs needs a pass of its
  own: the key says `queued` until the task starts, then `running`. A write's enqueue (after commit)
  goes through when the key is absent or `running`, and marks it `queued`; the beat sweep enqueues
  only when the key is absent, so it never stacks a pass behind one already queued or running. The
  end of a pass drops the key only if it still says `running`. The sweep's own passes run on their
  queue with a key of their own (`swept_reconcile`), held until the pass ends, and are not sent while
  the pool has a pass queued or running.
If Redis forgets a key, or a slow task outlives its TTL, the worst case is one duplicate of an
idempotent task; a key whose task was lost (a worker killed mid-call) only delays the sweep's
re-enqueue until the TTL runs out, never loses it. So the TTL is short, about one task's life.
"""
from __future__ import annotations

import logging
from typing import Any

import redis as redis_lib

from app import events
from config.settings import get_settings

log = logging.getLogger(__name__)

PREFIX = "warmpool:inflight"
QUEUED, RUNNING = "queued", "running"
# effect / task short name -> the payload field that identifies what it works on
KEYED = {
    "reconcile_pool": "pool_id",
    "swept_reconcile": "pool_id",
    "provision_instance": "instance_id",
    "start_instance": "instance_id",
    "stop_instance": "instance_id",
    "delete_instance": "instance_id",
}
# Take the key if it is absent or (ARGV[3] == "1") says running; 1 if taken.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v == false or (ARGV[3] == '1' and v == 'running') then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
_DROP_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def key_for(name: str, payload: dict[str, Any]) -> str | None:
    field = KEYED.get(name)
    if field is None or not payload.get(field):
        return None
    return f"{PREFIX}:{name}:{payload[field]}"


def _ttl(name: str) -> int:
    e = get_settings().engine
    seconds = e.inflight_reconcile_seconds if name.endswith("reconcile_pool") or name == "swept_reconcile" \
        else e.inflight_provider_seconds
    return max(int(seconds), 1)


def _redis(client: redis_lib.Redis | None) -> redis_lib.Redis:
    return client or events.redis_client()


def claim(name: str, payload: dict[str, Any], *, behind_running: bool = False,
          client: redis_lib.Redis | None = None) -> bool:
    """True if the task should be enqueued now (nothing identical is queued, or running unless
    `behind_running`); takes the key as `queued`."""
    key = key_for(name, payload)
    if key is None:
        return True
    try:
        return bool(_redis(client).eval(_CLAIM, 1, key, QUEUED, _ttl(name), "1" if behind_running else "0"))
    except redis_lib.RedisError:
        log.warning("dedupe key %s unavailable; enqueueing anyway (tasks are idempotent)", key, exc_info=True)
        return True


def busy(name: str, payload: dict[str, Any], client: redis_lib.Redis | None = None) -> bool:
    """Whether a task of this (task, id) is queued or running (unknown when Redis is unreachable: no)."""
    key = key_for(name, payload)
    try:
        return key is not None and bool(_redis(client).exists(key))
    except redis_lib.RedisError:
        return False


def busy_many(name: str, field: str, ids: list[str], client: redis_lib.Redis | None = None) -> list[bool]:
    """`busy` for many ids of one kind in one round trip."""
    if not ids:
        return []
    try:
        pipe = _redis(client).pipeline(transaction=False)
        for i in ids:
            pipe.exists(key_for(name, {field: i}))
        return [bool(n) for n in pipe.execute()]
    except redis_lib.RedisError:
        return [False] * len(ids)


def mark_running(name: str, extra_seconds: float = 0.0, client: redis_lib.Redis | None = None, **payload: Any) -> None:
    """The task is running (or about to retry in `extra_seconds`): hold the key for another TTL."""
    key = key_for(name, payload)
    if key is None:
        return
    try:
        _redis(client).set(key, RUNNING, ex=_ttl(name) + max(int(extra_seconds), 0))
    except redis_lib.RedisError:
        log.warning("could not refresh dedupe key %s", key, exc_info=True)


def release(name: str, client: redis_lib.Redis | None = None, **payload: Any) -> None:
    """The task ended: drop its key unless a newer pass was queued meanwhile (that one keeps it)."""
    key = key_for(name, payload)
    if key is None:
        return
    try:
        _redis(client).eval(_DROP_IF, 1, key, RUNNING)
    except redis_lib.RedisError:
        log.warning("could not release dedupe key %s; it expires on its own", key, exc_info=True)


def forget(name: str, client: redis_lib.Redis | None = None, **payload: Any) -> None:
    """Drop the key whatever it says (an enqueue that failed to send)."""
    key = key_for(name, payload)
    if key is None:
        return
    try:
        _redis(client).delete(key)
    except redis_lib.RedisError:
        log.warning("could not drop dedupe key %s; it expires on its own", key, exc_info=True)


def claim_many(name: str, field: str, ids: list[str], client: redis_lib.Redis | None = None, *,
               behind_running: bool = False) -> list[str]:
    """`claim` for many ids of one kind in one round trip (a batch task holds each id's own key, so a later
    one-instance re-kick is still dropped while the batch runs); returns the ids taken."""
    if not ids:
        return []
    keys = [key_for(name, {field: i}) for i in ids]
    try:
        pipe = _redis(client).pipeline(transaction=False)
        for key in keys:
            pipe.eval(_CLAIM, 1, key, QUEUED, _ttl(name), "1" if behind_running else "0")
        taken = pipe.execute()
    except redis_lib.RedisError:
        log.warning("dedupe keys of %d %s unavailable; enqueueing anyway (tasks are idempotent)", len(ids), name,
                    exc_info=True)
        return list(ids)
    return [i for i, ok in zip(ids, taken) if ok]


def mark_running_many(name: str, field: str, ids: list[str], extra_seconds: float = 0.0,
                      client: redis_lib.Redis | None = None) -> None:
    """`mark_running` for many ids in one round trip."""
    try:
        pipe = _redis(client).pipeline(transaction=False)
        for i in ids:
            pipe.set(key_for(name, {field: i}), RUNNING, ex=_ttl(name) + max(int(extra_seconds), 0))
        pipe.execute()
    except redis_lib.RedisError:
        log.warning("could not refresh the dedupe keys of %d %s", len(ids), name, exc_info=True)


def release_many(name: str, field: str, ids: list[str], client: redis_lib.Redis | None = None) -> None:
    """`release` for many ids in one round trip."""
    try:
        pipe = _redis(client).pipeline(transaction=False)
        for i in ids:
            pipe.eval(_DROP_IF, 1, key_for(name, {field: i}), RUNNING)
        pipe.execute()
    except redis_lib.RedisError:
        log.warning("could not release the dedupe keys of %d %s; they expire on their own", len(ids), name, exc_info=True)


def forget_many(name: str, field: str, ids: list[str], client: redis_lib.Redis | None = None) -> None:
    """`forget` for many ids in one round trip."""
    if not ids:
        return
    try:
        _redis(client).delete(*[key_for(name, {field: i}) for i in ids])
    except redis_lib.RedisError:
        log.warning("could not drop the dedupe keys of %d %s; they expire on their own", len(ids), name, exc_info=True)
