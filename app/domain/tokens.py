"""API tokens: scopes, expiry, last use and revocation. The plain token is shown once; only its hash is kept."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Session, col, select

from app.domain.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from app.models import ApiToken, Organization, utcnow

TOKEN_PREFIX = "wp_"


class Scope(StrEnum):
    """What a token may do. One scope per token; `GRANTS` says which other scopes it includes."""

    ADMIN = "admin"      # runners, tokens, quotas; and everything a member may do
    MEMBER = "member"    # pools, prebuilds, projects, environment classes, pod pools, leases
    LEASE = "lease"      # the VMPoolLeaseService only (gRPC and Connect)
    METRICS = "metrics"  # operator scope: /metrics of every organization, nothing else


GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset({Scope.ADMIN, Scope.MEMBER, Scope.LEASE}),
    Scope.MEMBER: frozenset({Scope.MEMBER, Scope.LEASE}),
    Scope.LEASE: frozenset({Scope.LEASE}),
    Scope.METRICS: frozenset({Scope.METRICS}),
}
# Scopes an organization's admin may mint through the API; `metrics` sees every organization, so
# only the operator (the CLI) creates it.
TENANT_SCOPES = frozenset({Scope.ADMIN, Scope.MEMBER, Scope.LEASE})
DEFAULT_SCOPE = Scope.MEMBER
MAX_LIFETIME = timedelta(days=3650)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scope(value: str) -> Scope:
    try:
        return Scope(value)
    except ValueError:
        raise InvalidArgument(f"unknown scope {value!r}; one of: {', '.join(s.value for s in Scope)}") from None


def allows(scope: Scope, needed: Scope) -> bool:
    return needed in GRANTS.get(scope, frozenset())


def require_scope(scope: Scope, needed: Scope, what: str) -> None:
    """PermissionDenied, naming the scope needed, unless `scope` includes `needed`."""
    if not allows(scope, needed):
        also = [s.value for s in Scope if s != needed and needed in GRANTS[s]]
        alternatives = f" (or {', '.join(repr(s) for s in also)})" if also else ""
        raise PermissionDenied(f"{what} needs a token with scope {needed.value!r}{alternatives}; "
                               f"this token's scope is {scope.value!r}")


def lifetime(value: timedelta) -> timedelta:
    if value <= timedelta(0) or value > MAX_LIFETIME:
        raise InvalidArgument(f"a token's lifetime is more than 0 and at most {MAX_LIFETIME.days} days")
    return value


def create_token(org: Organization | str, *, session: Session, scope: Scope, name: str = "",
                 expires_in: timedelta | None = None) -> tuple[ApiToken, str]:
    """A new token for `org` (an Organization or its id): the stored row and the plain token, which
    is returned this once and kept nowhere."""
    scope = parse_scope(scope)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(organization_id=org if isinstance(org, str) else org.id, token_hash=hash_token(token),
                   prefix=token[:10], name=name, scope=scope.value,
                   expires_at=utcnow() + lifetime(expires_in) if expires_in is not None else None)
    session.add(row)
    session.flush()
    return row, token


def create_tenant_token(org_id: str, *, session: Session, scope: Scope, name: str = "",
                        expires_in: timedelta | None = None) -> tuple[ApiToken, str]:
    """A token an organization's admin mints for its own organization: never the operator's `metrics`."""
    scope = parse_scope(scope)
    if scope not in TENANT_SCOPES:
        raise PermissionDenied(f"scope {scope.value!r} is the operator's: create it with "
                               f"`warmpool token create --scope {scope.value}`; an organization's admin may "
                               f"mint {', '.join(sorted(s.value for s in TENANT_SCOPES))}")
    return create_token(org_id, session=session, scope=scope, name=name, expires_in=expires_in)


@dataclass(frozen=True, slots=True)
class Verified:
    token_id: str
    organization_id: str
    scope: Scope
    expires_at: datetime | None


def verify(token: str, *, session: Session, touch_every: float, now: datetime | None = None) -> Verified:
    """The token's organization and scope; Unauthenticated when unknown, revoked or expired.

    Also records the use in `last_used_at`, but only when the stored value is older than
    `touch_every` seconds: a conditional UPDATE, so concurrent verifiers write it once.
    """
    now = now or utcnow()
    row = session.exec(select(ApiToken.id, ApiToken.organization_id, ApiToken.scope, ApiToken.expires_at,
                              ApiToken.revoked_at, ApiToken.last_used_at)
                        .where(ApiToken.token_hash == hash_token(token))).first()
    if row is None:
        raise Unauthenticated("invalid API token")
    token_id, org_id, scope, expires_at, revoked_at, last_used_at = row
    if revoked_at is not None:
        raise Unauthenticated("this API token was revoked")
    if expires_at is not None and expires_at <= now:
        raise Unauthenticated(f"this API token expired at {expires_at.isoformat(timespec='seconds')}")
    stale_before = now - timedelta(seconds=touch_every)
    if last_used_at is None or last_used_at < stale_before:
        session.execute(sa.update(ApiToken)
                        .where(ApiToken.id == token_id,
                               sa.or_(col(ApiToken.last_used_at).is_(None), col(ApiToken.last_used_at) < stale_before))
                        .values(last_used_at=now))
    return Verified(token_id, org_id, Scope(scope), expires_at)


def list_tokens(*, session: Session, org_id: str | None = None) -> list[ApiToken]:
    """Tokens of one organization (or of all, for the operator), oldest first; revoked ones included."""
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if org_id is not None:
        query = query.where(ApiToken.organization_id == org_id)
    return list(session.exec(query).all())


def revoke(token_id: str, *, session: Session, org_id: str | None = None) -> ApiToken:
    """Revoke a token (of `org_id` when given: another organization's token is not_found). Revoking
    twice keeps the first time."""
    row = session.get(ApiToken, token_id)
    if row is None or (org_id is not None and row.organization_id != org_id):
        raise NotFound(f"token {token_id} not found")
    session.execute(sa.update(ApiToken).where(ApiToken.id == row.id, ApiToken.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
    session.refresh(row)
    return row
