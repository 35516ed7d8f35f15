"""Bearer-token authentication and scope checks shared by every façade: token -> (organization,
scope), briefly cached so the hot path (a lease) stays on the event loop without a database read.

A revoked or expired token is refused within `auth_cache_seconds` (the cache keeps a verified token
that long; an expiry inside that window is honoured exactly). Revoking through the API clears this
process's entry at once (`forget`); other processes notice at their next database read.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from app.db import session_scope
from app.domain import tokens
from app.domain.errors import Unauthenticated
from app.domain.tokens import Scope
from app.models import utcnow
from config.settings import get_settings

MAX_ENTRIES = 10000


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the token's organization and scope (and the token's id, to revoke it)."""

    organization_id: str
    scope: Scope
    token_id: str

    def allows(self, needed: Scope) -> bool:
        return tokens.allows(self.scope, needed)


_cache: dict[str, tuple[Caller, float]] = {}  # token hash -> (caller, monotonic deadline)
_lock = threading.Lock()


def bearer_from_header(value: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; Unauthenticated when absent or malformed."""
    if not value:
        raise Unauthenticated("missing Authorization: Bearer <token> header")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def cached(token: str) -> Caller | None:
    """The caller of a recently verified token, without touching the database (None: unknown or
    stale, ask `authenticate`). Cheap enough for the event loop."""
    hit = _cache.get(tokens.hash_token(token))
    return hit[0] if hit and hit[1] > time.monotonic() else None


def authenticate(token: str) -> Caller:
    """The caller of `token`. Blocking (may read the database): call from a worker thread."""
    key = tokens.hash_token(token)
    hit = _cache.get(key)
    if hit and hit[1] > time.monotonic():
        return hit[0]
    settings = get_settings()
    with session_scope() as session:
        found = tokens.verify(token, session=session, touch_every=settings.token_touch_seconds)
    caller = Caller(found.organization_id, found.scope, found.token_id)
    _remember(key, caller, settings.auth_cache_seconds, found.expires_at)
    return caller


def authorize(caller: Caller, needed: Scope, what: str) -> Caller:
    """`caller` if its scope includes `needed`; else PermissionDenied naming the scope needed."""
    tokens.require_scope(caller.scope, needed, what)
    return caller


def require(token: str, needed: Scope, what: str) -> Caller:
    """Authenticate and authorize in one call. Blocking on a cache miss: call from a worker thread."""
    return authorize(authenticate(token), needed, what)


async def authenticate_async(token: str) -> Caller:
    """`authenticate` for the event loop: the cached path never leaves it; a miss hops to a thread."""
    caller = cached(token)
    return caller if caller is not None else await run_in_threadpool(authenticate, token)


async def require_async(token: str, needed: Scope, what: str) -> Caller:
    """`require` for the event loop (see `authenticate_async`)."""
    return authorize(await authenticate_async(token), needed, what)


def _remember(key: str, caller: Caller, ttl: float, expires_at: datetime | None) -> None:
    if ttl <= 0:
        return
    if expires_at is not None:  # never trust a token past its expiry, however fresh the entry
        ttl = min(ttl, (expires_at - utcnow()).total_seconds())
    with _lock:
        if len(_cache) >= MAX_ENTRIES:
            _cache.clear()
        _cache[key] = (caller, time.monotonic() + ttl)


def forget(token_id: str) -> None:
    """Drop a token from this process's cache (after revoking it), so it is refused at once."""
    with _lock:
        for key in [k for k, (c, _) in _cache.items() if c.token_id == token_id]:
            del _cache[key]


def clear_cache() -> None:
    with _lock:
        _cache.clear()
