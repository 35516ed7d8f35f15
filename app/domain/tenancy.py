"""Organizations and their runners: where pools run. Their API tokens live in app.domain.tokens."""
from __future__ import annotations

from sqlmodel import Session, select

from app.domain import compute
from app.domain.errors import AlreadyExists, InvalidArgument, NotFound
from app.models import Organization, Runner


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


def create_runner(org_id: str, name: str, provider: str, settings: dict, *, session: Session) -> Runner:
    """A runner of an offered provider; its settings pass the provider's typed model before anything is
    stored, and its secret fields are stored encrypted (app.domain.compute)."""
    name = name.strip()
    if not name:
        raise InvalidArgument("runner name must not be empty")
    if not provider:
        raise InvalidArgument("runner provider must not be empty")
    existing = session.exec(select(Runner).where(Runner.organization_id == org_id, Runner.name == name)).first()
    if existing is not None:
        raise AlreadyExists(f"runner {name!r} already exists (id {existing.id})")
    stored = compute.stored_settings(provider, settings)
    runner = Runner(organization_id=org_id, name=name, provider=provider, settings=stored)
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
