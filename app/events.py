"""Instance events on Redis: the publisher of the stream `warmpool:events` and of the pub/sub wake-ups.
The schema and the channel names are the domain's (app.domain.events), re-exported here."""
from __future__ import annotations

from functools import lru_cache

import redis

from app.domain.events import (  # noqa: F401 - re-exported: the workers and the tests import them from here
    KIND_FAILURE, KIND_LEASED, KIND_POOL, KIND_RECYCLED, KIND_RETURNED, KIND_SEEN, KIND_STATE, KIND_SUCCESS,
    InstanceEvent,
    MalformedEvent, one_per_pool, organization_pools_pattern, pool_channel, reservation_channel,
)
from config.settings import get_settings


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


def publish_many(batch: list[InstanceEvent], client: redis.Redis | None = None,
                 notices: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
    """`publish` for many events (a batched provider call's observations, a burst of leases), then `notify`
    for each (channel, message) in `notices`, in order, in one round trip."""
    if not batch and not notices:
        return
    s = get_settings()
    pipe = (client or redis_client()).pipeline(transaction=False)
    for event in batch:
        pipe.xadd(s.engine.events_stream, event.to_fields(), maxlen=1_000_000, approximate=True)
    for channel, message in notices:
        pipe.publish(channel, message)
    pipe.execute()


def notify(channel: str, message: str = "", client: redis.Redis | None = None) -> None:
    """Best-effort pub/sub wake-up (reservations waiting, SSE); never the only carrier of work."""
    (client or redis_client()).publish(channel, message)
