"""Organizations, their API tokens and their runners: who may call, and where pools run."""
from __future__ import annotations

import hashlib
import secrets

from sqlmodel import Session, select

from app.domain.errors import AlreadyExists, InvalidArgument, NotFound
from app.models import ApiToken, Organization, Runner, utcnow

TOKEN_PREFIX = "wp_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_organization(name: str, *, session: Session) -> Organization:
    """The organization called `name`, created if it does not exist yet."""
    name = name.strip()
    if not name:
        raise InvalidArgument("organization name must not be empty")
    org = session.exec(select(Organization).where(Organization.name == name)).first()
    if org is None:
        org = Organization(name=name)
        session.add(org)
        session.flush()
    return org


def create_token(org: Organization, *, session: Session, name: str = "") -> str:
    """A new bearer token for `org`. Only its hash is stored: the plain token is returned once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(organization_id=org.id, token_hash=hash_token(token), prefix=token[:10], name=name))
    session.flush()
    return token


def organization_for_token(token: str, *, session: Session) -> str | None:
    """The organization id a (non-revoked) token belongs to, or None."""
    row = session.exec(
        select(ApiToken.organization_id).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    ).first()
    return row


def revoke_token(org_id: str, prefix: str, *, session: Session) -> int:
    rows = session.exec(
        select(ApiToken).where(ApiToken.organization_id == org_id, ApiToken.prefix == prefix, ApiToken.revoked_at.is_(None))
    ).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)


def create_runner(org_id: str, name: str, provider: str, settings: dict, *, session: Session) -> Runner:
    name = name.strip()
    if not name:
        raise InvalidArgument("runner name must not be empty")
    if not provider:
        raise InvalidArgument("runner provider must not be empty")
    existing = session.exec(select(Runner).where(Runner.organization_id == org_id, Runner.name == name)).first()
    if existing is not None:
        raise AlreadyExists(f"runner {name!r} already exists (id {existing.id})")
    runner = Runner(organization_id=org_id, name=name, provider=provider, settings=dict(settings))
    session.add(runner)
    session.flush()
    return runner


def get_runner(org_id: str, runner_id: str, *, session: Session) -> Runner:
    runner = session.get(Runner, runner_id)
    if runner is None or runner.organization_id != org_id:
        raise NotFound(f"runner {runner_id} not found")
    return runner


def list_runners(org_id: str, *, session: Session) -> list[Runner]:
    return list(session.exec(select(Runner).where(Runner.organization_id == org_id).order_by(Runner.created_at)).all())
