"""Instance events: the schema on the Redis Stream `warmpool:events`, and the publisher.

Providers' observations (a state change) and the API's assignments (leased, returned) travel as one
kind of message. The event applier (workers/events.py) is the only consumer that writes observed
state. Consumers ignore unknown fields, so the schema can grow.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import redis

from config.settings import get_settings

KIND_STATE = "state"  # a provider observed `state` for the instance
KIND_LEASED = "leased"  # the instance was claimed by a lease (assignment changed)
KIND_RETURNED = "returned"  # a lease ended (returned or expired)
KIND_POOL = "pool"  # something about the pool changed; recount its status
KIND_FAILURE = "failure"  # a provider call failed transiently (message says why); counts toward DEGRADED
KIND_SUCCESS = "success"  # a provider call succeeded without a state change worth an event; clears failures


@dataclass(frozen=True)
class InstanceEvent:
    instance_id: str
    pool_id: str
    kind: str = KIND_STATE
    state: str = ""
    ref: str = ""
    seq: int = field(default_factory=lambda: time.time_ns() // 1000)
    """Per-instance order (microseconds at observation): an event applies only if newer than the last applied."""
    message: str = ""
    address: str = ""
    boot_ms: int | None = None
    observed_at: float = field(default_factory=time.time)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_fields(self) -> dict[str, str]:
        return {"data": json.dumps(asdict(self), separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> "InstanceEvent":
        raw = fields.get(b"data", fields.get("data"))
        data = json.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def redis_client() -> redis.Redis:
    return _client(get_settings().redis_url)


def publish(event: InstanceEvent, client: redis.Redis | None = None) -> str:
    """XADD the event to the stream (approximately capped); returns the stream entry id."""
    s = get_settings()
    client = client or redis_client()
    entry = client.xadd(s.engine.events_stream, event.to_fields(), maxlen=1_000_000, approximate=True)
    return entry.decode() if isinstance(entry, bytes) else entry


def notify(channel: str, message: str = "", client: redis.Redis | None = None) -> None:
    """Best-effort pub/sub wake-up (reservations waiting, SSE); never the only carrier of work."""
    (client or redis_client()).publish(channel, message)


def reservation_channel(reservation_id: str) -> str:
    return f"warmpool:reservation:{reservation_id}"
