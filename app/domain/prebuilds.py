"""Prebuilds: a snapshot of (project, environment class) that warm pools start their instances from."""
from __future__ import annotations

from sqlmodel import Session, select

from app.domain import effects, pagination, transitions
from app.domain.catalog import get_environment_class, get_project
from app.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from app.domain.pagination import Page
from app.domain.states import PREBUILD_CANCELLABLE, PrebuildPhase
from app.models import Prebuild, utcnow

MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 300, 7200, 3600


def create_prebuild(
    org_id: str, project_id: str, environment_class_id: str | None, *, session: Session,
    timeout_seconds: int | None = None, creator_id: str = "", triggered_by: str = "manual",
) -> Prebuild:
    project = get_project(org_id, project_id, session=session)
    if not environment_class_id:
        if not project.prebuild_environment_class_ids:
            raise FailedPrecondition(
                f"project {project_id} has no environment class in its prebuild configuration; pass environmentClassId"
            )
        environment_class_id = project.prebuild_environment_class_ids[0]
    ec = get_environment_class(org_id, environment_class_id, session=session)
    timeout = timeout_seconds or DEFAULT_TIMEOUT
    if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        raise InvalidArgument(f"spec.timeout must be between {MIN_TIMEOUT}s and {MAX_TIMEOUT}s, got {timeout}s")
    prebuild = Prebuild(
        organization_id=org_id, project_id=project.id, environment_class_id=ec.id, timeout_seconds=timeout,
        creator_id=creator_id, triggered_by=triggered_by,
    )
    session.add(prebuild)
    session.flush()
    effects.defer(session, "run_prebuild", prebuild_id=prebuild.id)
    return prebuild


def get_prebuild(org_id: str, prebuild_id: str, *, session: Session, for_update: bool = False) -> Prebuild:
    stmt = select(Prebuild).where(Prebuild.id == prebuild_id, Prebuild.organization_id == org_id)
    if for_update:
        stmt = stmt.with_for_update()
    prebuild = session.exec(stmt).first()
    if prebuild is None:
        raise NotFound(f"prebuild {prebuild_id} not found")
    return prebuild


def move_prebuild(prebuild: Prebuild, phase: PrebuildPhase, *, session: Session, message: str = "",
                  **values: object) -> bool:
    """Move a prebuild along its lifecycle (a compare-and-set through the prebuild machine); False, and no
    change, if its current phase may not move there (cancelled or deleted meanwhile, or already past it)."""
    now = utcnow()
    values.update(status_version=prebuild.status_version + 1, updated_at=now)
    if message:
        values["failure_message"] = message
    if phase in (PrebuildPhase.COMPLETED, PrebuildPhase.FAILED, PrebuildPhase.CANCELLED):
        values["completion_time"] = now
    return bool(transitions.PREBUILD.move(session, prebuild, phase, now=now, **values))


def cancel_prebuild(org_id: str, prebuild_id: str, *, session: Session) -> Prebuild:
    prebuild = get_prebuild(org_id, prebuild_id, session=session, for_update=True)
    phase = PrebuildPhase(prebuild.phase)
    if phase in (PrebuildPhase.CANCELLING, PrebuildPhase.CANCELLED):
        return prebuild
    if phase not in PREBUILD_CANCELLABLE:
        raise FailedPrecondition(f"prebuild {prebuild_id} is {phase.value} and can no longer be cancelled")
    # Not started yet: nothing runs, so it is cancelled at once; otherwise the runner stops it.
    to = PrebuildPhase.CANCELLED if phase == PrebuildPhase.PENDING else PrebuildPhase.CANCELLING
    if not move_prebuild(prebuild, to, session=session, desired_phase=str(PrebuildPhase.CANCELLED)):
        raise FailedPrecondition(f"prebuild {prebuild_id} moved on meanwhile; get it again")
    if phase != PrebuildPhase.PENDING:
        effects.defer(session, "run_prebuild", prebuild_id=prebuild.id)
    return prebuild


def delete_prebuild(org_id: str, prebuild_id: str, *, session: Session) -> None:
    prebuild = get_prebuild(org_id, prebuild_id, session=session, for_update=True)
    if prebuild.phase in (PrebuildPhase.DELETING, PrebuildPhase.DELETED):
        return
    move_prebuild(prebuild, PrebuildPhase.DELETED, session=session, desired_phase=str(PrebuildPhase.DELETED))


def list_prebuilds(
    org_id: str, page: Page, *, session: Session, project_ids: list[str] | None = None,
    phases: list[str] | None = None, triggered_by: list[str] | None = None, creator_ids: list[str] | None = None,
) -> tuple[list[Prebuild], str]:
    stmt = select(Prebuild).where(Prebuild.organization_id == org_id)
    if project_ids:
        stmt = stmt.where(Prebuild.project_id.in_(project_ids))
    if phases:
        stmt = stmt.where(Prebuild.phase.in_(phases))
    else:
        stmt = stmt.where(Prebuild.phase != str(PrebuildPhase.DELETED))
    if triggered_by:
        stmt = stmt.where(Prebuild.triggered_by.in_(triggered_by))
    if creator_ids:
        stmt = stmt.where(Prebuild.creator_id.in_(creator_ids))
    rows = list(session.exec(pagination.apply(stmt, Prebuild, page)).all())
    return pagination.split(rows, page)


def advance(prebuild_id: str, phase: PrebuildPhase, *, session: Session, message: str = "",
            provider_ref: str | None = None) -> Prebuild | None:
    """The runner moves a prebuild along (compare-and-set under the row lock); None if it cannot move
    (cancelled or deleted meanwhile, or already past that phase)."""
    prebuild = session.exec(select(Prebuild).where(Prebuild.id == prebuild_id).with_for_update()).first()
    if prebuild is None or not move_prebuild(prebuild, phase, session=session, message=message):
        return None
    if provider_ref is not None:
        prebuild.provider_ref = provider_ref
    session.add(prebuild)
    return prebuild


def complete(prebuild_id: str, snapshot_id: str, *, session: Session) -> Prebuild | None:
    """Mark the prebuild COMPLETED with its snapshot and rotate every pool of its pair onto it."""
    from app.domain.pools import pools_of_pair, set_snapshot

    prebuild = advance(prebuild_id, PrebuildPhase.COMPLETED, session=session)
    if prebuild is None:
        return None
    prebuild.snapshot_id = snapshot_id
    prebuild.snapshot_completion_percentage = 100
    for pool in pools_of_pair(prebuild.project_id, prebuild.environment_class_id, session=session):
        set_snapshot(pool, snapshot_id, session=session)
    return prebuild


def rotate_all(limit: int, *, session: Session) -> int:
    """Sweep: point every live pool of a (project, class) pair at the pair's newest completed snapshot."""
    from app.domain.pools import latest_snapshot, set_snapshot
    from app.models import Pool

    moved = 0
    pools = session.exec(
        select(Pool).where(Pool.project_id.is_not(None), Pool.environment_class_id.is_not(None), Pool.deleted_at.is_(None))
        .order_by(Pool.id).limit(limit)
    ).all()
    for pool in pools:
        snapshot = latest_snapshot(pool.project_id, pool.environment_class_id, session=session)
        if snapshot and set_snapshot(pool, snapshot, session=session):
            moved += 1
    return moved
