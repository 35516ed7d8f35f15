"""Organizations and their runners: where pools run. Their API tokens live in app.domain.tokens."""
from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, select

from app.domain import compute
from app.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from app.domain.states import PoolPhase
from app.models import EnvironmentClass, Organization, Pool, Runner


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


def find_runner(org_id: str, id_or_name: str, *, session: Session) -> Runner:
    """A runner of the organization by its id or, failing that, its name."""
    runner = session.get(Runner, id_or_name)
    if runner is None or runner.organization_id != org_id:
        runner = session.exec(select(Runner).where(Runner.organization_id == org_id, Runner.name == id_or_name)).first()
    if runner is None:
        raise NotFound(f"runner {id_or_name!r} not found")
    return runner


def pools_using_runner(runner_id: str, *, session: Session) -> list[Pool]:
    """Pools that still need the runner: every pool not yet DELETED (a DELETING pool drains through it)."""
    return list(session.exec(
        select(Pool).where(Pool.runner_id == runner_id, Pool.phase != str(PoolPhase.DELETED)).order_by(Pool.name)
    ).all())


def delete_runner(org_id: str, id_or_name: str, *, session: Session) -> tuple[Runner, int]:
    """Delete a runner no pool uses any more, with its environment classes (the schema cascades);
    returns (the runner, how many environment classes went with it). FailedPrecondition naming the
    pools otherwise. The runner row is locked FOR UPDATE, which a pool insert's foreign-key check (a key-share
    lock on PostgreSQL; SQLite's BEGIN IMMEDIATE serialises writers) waits for: a pool made beside the check
    is either seen by it or refused by the foreign key."""
    runner = find_runner(org_id, id_or_name, session=session)
    session.exec(select(Runner).where(Runner.id == runner.id).with_for_update()).first()
    using = pools_using_runner(runner.id, session=session)
    if using:
        shown = ", ".join(f"{p.name} ({p.phase})" for p in using[:10]) + (f" and {len(using) - 10} more" if len(using) > 10 else "")
        raise FailedPrecondition(f"runner {runner.name!r} is used by {len(using)} live pool(s): {shown}; "
                                 "delete them first (a deleting pool needs its runner until it is drained)")
    classes = session.execute(
        sa.select(sa.func.count()).select_from(EnvironmentClass).where(EnvironmentClass.runner_id == runner.id)
    ).scalar_one()
    session.delete(runner)
    session.flush()
    return runner, int(classes)
