"""Bearer-token authentication shared by every façade: token -> organization id, briefly cached."""
from __future__ import annotations

import threading
import time

from app.db import session_scope
from app.domain import tenancy
from app.domain.errors import Unauthenticated
from config.settings import get_settings

_cache: dict[str, tuple[str, float]] = {}
_lock = threading.Lock()


def bearer_from_header(value: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; Unauthenticated when absent or malformed."""
    if not value:
        raise Unauthenticated("missing Authorization: Bearer <token> header")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def cached_organization(token: str) -> str | None:
    """The organization of a recently verified token, without touching the database (None: unknown
    or expired, ask `organization_for`). Cheap enough for the event loop."""
    hit = _cache.get(tenancy.hash_token(token))
    return hit[0] if hit and hit[1] > time.monotonic() else None


def organization_for(token: str) -> str:
    """The organization id of `token`. Blocking (may read the database): call from a worker thread."""
    key = tenancy.hash_token(token)
    now = time.monotonic()
    hit = _cache.get(key)
    if hit and hit[1] > now:
        return hit[0]
    with session_scope() as session:
        org_id = tenancy.organization_for_token(token, session=session)
    if org_id is None:
        raise Unauthenticated("invalid or revoked API token")
    ttl = get_settings().auth_cache_seconds
    if ttl > 0:
        with _lock:
            if len(_cache) > 10000:
                _cache.clear()
            _cache[key] = (org_id, now + ttl)
    return org_id


def clear_cache() -> None:
    with _lock:
        _cache.clear()
