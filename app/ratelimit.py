"""The per-organization rate limit on Lease: a token bucket in Redis, shared by every API process.

Each organization's bucket holds up to `lease_burst` tokens (its quota; 0: one second of the rate) and
refills at `lease_rate` tokens per second; a Lease call takes one. The bucket is one Redis hash updated
by one Lua script, which reads the time from Redis itself, so API hosts with skewed clocks share one
bucket correctly. A refused call learns when the next token is due: that is its Retry-After.

The limits come from the organization's quota (app.domain.quotas; `warmpool quota set --lease-rate`),
cached here for QUOTA_TTL seconds so the lease path does not read the database for them. An
organization without a rate (the default) costs nothing: no Redis call at all. If Redis cannot be
reached the call is let through (logged): leasing does not stop because the limiter is down.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from redis.exceptions import RedisError

from app.domain.errors import RateLimited

log = logging.getLogger(__name__)

QUOTA_TTL = 10.0
KEY = "warmpool:ratelimit:lease:"

# KEYS[1] bucket; ARGV rate (tokens/s), burst (tokens). Returns {allowed (0/1), milliseconds to wait}.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(now - at, 0) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""

_limits: dict[str, tuple[float, int, int]] = {}  # org id -> (read at, rate, burst)
_lock = threading.Lock()


def limits_of(org_id: str) -> tuple[int, int]:
    """(rate, burst) of the organization, from its quota; cached for QUOTA_TTL seconds. Blocking on a miss."""
    now = time.monotonic()
    cached = _limits.get(org_id)
    if cached is not None and now - cached[0] < QUOTA_TTL:
        return cached[1], cached[2]
    from app.db import session_scope
    from app.domain import quotas

    with session_scope() as session:
        quota = quotas.quota_of(org_id, session=session)
    rate = max(quota.lease_rate, 0)
    burst = quota.lease_burst if quota.lease_burst > 0 else max(rate, 1)
    with _lock:
        _limits[org_id] = (now, rate, burst)
    return rate, burst


def cached_limits(org_id: str) -> tuple[int, int] | None:
    """The cached (rate, burst), or None when it must be read (`limits_of`, on a thread)."""
    cached = _limits.get(org_id)
    if cached is None or time.monotonic() - cached[0] >= QUOTA_TTL:
        return None
    return cached[1], cached[2]


def forget() -> None:
    """Drop cached limits (tests, and after `warmpool quota set` in this process)."""
    with _lock:
        _limits.clear()


def refusal(org_id: str, rate: int, wait_ms: int) -> RateLimited:
    wait = max(1, math.ceil(wait_ms / 1000))
    return RateLimited(f"this organization is over its lease rate of {rate}/s; retry in {wait} s", retry_after=wait)


def check(org_id: str, client: Any) -> None:
    """Take a token for one Lease call of `org_id`, or raise RateLimited with the wait. Blocking."""
    rate, burst = limits_of(org_id)
    if rate <= 0:
        return
    try:
        allowed, wait_ms = client.eval(TOKEN_BUCKET, 1, KEY + org_id, rate, burst)
    except RedisError as exc:
        log.warning("lease rate limit not checked (Redis: %s); letting the call through", exc)
        return
    if not int(allowed):
        raise refusal(org_id, rate, int(wait_ms))


async def check_async(org_id: str, client: Any, limits: tuple[int, int]) -> None:
    """`check` on the event loop with an asyncio Redis client and the limits already known."""
    rate, burst = limits
    if rate <= 0:
        return
    try:
        allowed, wait_ms = await client.eval(TOKEN_BUCKET, 1, KEY + org_id, rate, burst)
    except RedisError as exc:
        log.warning("lease rate limit not checked (Redis: %s); letting the call through", exc)
        return
    if not int(allowed):
        raise refusal(org_id, rate, int(wait_ms))


_async_clients: dict[Any, Any] = {}  # event loop -> redis.asyncio client (a client belongs to one loop)


def _async_client() -> Any:
    import asyncio

    import redis.asyncio as aioredis

    from config.settings import get_settings

    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(get_settings().redis_url, socket_connect_timeout=2,
                                                                socket_timeout=2)
    return client


async def admit(org_id: str) -> None:
    """The lease path's check, on the event loop: nothing at all for an organization without a rate (its
    limits cached), else one Redis call; RateLimited with the wait when the bucket is empty."""
    import asyncio

    limits = cached_limits(org_id)
    if limits is None:
        limits = await asyncio.to_thread(limits_of, org_id)
    if limits[0] > 0:
        await check_async(org_id, _async_client(), limits)
