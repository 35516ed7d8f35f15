"""/v1/events: pool status changes as Server-Sent Events, for the caller's organization only.

The event applier announces a pool's status change on that pool's channel under its organization
(app.domain.events.pool_channel); a stream subscribes to its own organization's channels and nothing
else (to one pool's channel when asked for one), so another tenant's notifications never reach this
process for it. Each notification is still read back through the domain under the caller's
organization before a frame is sent.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Query
from redis.exceptions import RedisError
from starlette.responses import StreamingResponse

from app.api import core
from app.api.native_common import ERRORS, ApiError, Org, require_id, run
from app.api.native_models import PoolEvent, pool_event
from app.domain import pools
from app.domain.errors import NotFound
from app.domain.events import organization_pools_pattern, pool_channel
from config.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter()  # included by app.api.native under /v1

KEEPALIVE_SECONDS = 15.0


class EventStream(StreamingResponse):
    """text/event-stream. Not FastAPI's SSE response class: as a route's response_class that one makes
    FastAPI drive the endpoint as a generator, with its own `: ping` keep-alives."""

    media_type = "text/event-stream"


def _json_error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "`event: pool` frames whose data is a PoolEvent, and `: keep-alive` comments",
          "content": {"text/event-stream": {"itemSchema": {
              "type": "object", "required": ["event", "data"],
              "properties": {"event": {"const": "pool"}, "data": {
                  "type": "string", "contentMediaType": "application/json",
                  "contentSchema": PoolEvent.model_json_schema()}}}}}},
    **{status: _json_error(d["description"]) for status, d in ERRORS.items()},
    503: _json_error("Redis is unreachable"),
}


@router.get("/events", response_class=EventStream, responses=EVENT_STREAM_DOC,
            summary="Pool status changes as Server-Sent Events (`event: pool`), keep-alive every 15 s")
async def stream_events(
    org_id: Org, pool_id: Annotated[str | None, Query(max_length=64, description="only this pool")] = None,
) -> EventStream:
    if pool_id is not None:
        pool_id = (await run(pools.get_pool, org_id, require_id(pool_id, "pool_id"))).id
    client = aioredis.Redis.from_url(get_settings().redis_url, socket_connect_timeout=2)
    pubsub = client.pubsub()
    try:
        await subscribe(pubsub, org_id, pool_id)
    except (RedisError, OSError) as exc:
        await close(pubsub, client)
        raise ApiError(503, "unavailable", f"cannot subscribe to pool changes: Redis is unreachable ({exc})") from None
    return EventStream(frames(pubsub, client, org_id, pool_id),
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def subscribe(pubsub: Any, org_id: str, pool_id: str | None = None) -> None:
    """Subscribe `pubsub` to the organization's pool channels (or one pool's), and wait for Redis to
    confirm: once the client sees the stream open, no change can be missed."""
    if pool_id is None:
        await pubsub.psubscribe(organization_pools_pattern(org_id))
    else:
        await pubsub.subscribe(pool_channel(org_id, pool_id))
    await pubsub.get_message(timeout=2)


async def frames(pubsub: Any, client: Any, org_id: str, pool_id: str | None) -> AsyncIterator[bytes]:
    """The SSE stream; the subscription is closed however it ends (the client leaving cancels it)."""
    try:
        async for frame in pool_events(pubsub, org_id, pool_id):
            yield frame
    except (RedisError, OSError) as exc:
        log.warning("pool event stream ended: Redis connection lost (%s)", exc)
    except Exception:
        log.warning("pool event stream ended by an unexpected error", exc_info=True)
    finally:
        await close(pubsub, client)


async def close(pubsub: Any, client: Any) -> None:
    with anyio.CancelScope(shield=True):  # runs during cancellation; unshielded awaits would be cut short
        try:
            await pubsub.aclose()
            await client.aclose()
        except (RedisError, OSError):
            pass



async def pool_events(pubsub: Any, org_id: str, only: str | None = None,
                      keepalive: float | None = None) -> AsyncIterator[bytes]:
    """SSE frames for the caller's pools from a `pubsub` subscribed by `subscribe`: `: connected`, then
    `event: pool` for each status change (a notification whose status_version was already sent is
    skipped) and a `: keep-alive` comment every `keepalive` seconds."""
    every = KEEPALIVE_SECONDS if keepalive is None else keepalive
    prefix = pool_channel(org_id, "")
    loop = asyncio.get_running_loop()
    sent: dict[str, int] = {}
    yield b": connected\n\n"
    next_ping = loop.time() + every
    while True:
        left = next_ping - loop.time()
        if left <= 0:
            yield b": keep-alive\n\n"
            next_ping += every
            continue
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if msg is None or msg.get("type") not in ("message", "pmessage"):
            continue
        channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else str(msg["channel"])
        if not channel.startswith(prefix):
            continue  # not one of this organization's channels: never ours to look at
        changed = channel.removeprefix(prefix)
        if only is not None and changed != only:
            continue
        try:  # read back under the caller's organization: a channel name is no proof of ownership
            pool = await core.run(pools.get_pool, org_id, changed)
        except NotFound:
            continue
        if sent.get(changed) == pool.status_version:
            continue
        sent[changed] = pool.status_version
        yield b"event: pool\ndata: " + pool_event(pool).model_dump_json().encode() + b"\n\n"
