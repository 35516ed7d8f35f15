"""Opaque keyset page tokens over (created_at, id): stable while rows are added or removed."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from app.domain.errors import InvalidArgument


@dataclass(frozen=True)
class Page:
    size: int
    after: tuple[datetime, str] | None = None


def encode_token(created_at: datetime, row_id: str) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": row_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return datetime.fromisoformat(data["c"]), str(data["i"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"invalid page token {token!r}: pass the nextToken of a previous response") from exc


def page_request(token: str, page_size: int, *, default: int, maximum: int) -> Page:
    """Validate a (token, page size) pair: 0 means the default, negative or above `maximum` is an error."""
    if page_size < 0 or page_size > maximum:
        raise InvalidArgument(f"pagination.pageSize must be between 0 and {maximum} (0 means {default}), got {page_size}")
    return Page(size=page_size or default, after=decode_token(token) if token else None)


def apply(stmt: Any, model: Any, page: Page) -> Any:
    """Order `stmt` by (created_at, id) and restrict it to the page after the token (one row extra)."""
    if page.after is not None:
        created, row_id = page.after
        stmt = stmt.where(
            sa.or_(model.created_at > created, sa.and_(model.created_at == created, model.id > row_id))
        )
    return stmt.order_by(model.created_at, model.id).limit(page.size + 1)


def split(rows: list[Any], page: Page) -> tuple[list[Any], str]:
    """The rows of this page and the token of the next one ('' on the last page)."""
    if len(rows) <= page.size:
        return rows, ""
    rows = rows[: page.size]
    return rows, encode_token(rows[-1].created_at, rows[-1].id)
