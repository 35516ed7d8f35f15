"""Environment classes and projects: what a warm pool is made from and who may have one."""
from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from app.domain import pagination
from app.domain.errors import InvalidArgument, NotFound
from app.domain.pagination import Page
from app.models import EnvironmentClass, Pool, Project, utcnow


# ---- environment classes -------------------------------------------------------------------

def create_environment_class(
    org_id: str, runner_id: str, display_name: str, description: str, configuration: list[dict[str, str]],
    *, session: Session,
) -> EnvironmentClass:
    from app.domain import compute
    from app.domain.tenancy import get_runner

    runner = get_runner(org_id, runner_id, session=session)
    compute.check_template(runner.provider, {c["key"]: c.get("value", "") for c in configuration})
    ec = EnvironmentClass(
        organization_id=org_id, runner_id=runner_id, display_name=display_name, description=description,
        configuration=[{"key": c["key"], "value": c.get("value", "")} for c in configuration],
    )
    session.add(ec)
    session.flush()
    return ec


def get_environment_class(org_id: str, ec_id: str, *, session: Session) -> EnvironmentClass:
    ec = session.get(EnvironmentClass, ec_id)
    if ec is None or ec.organization_id != org_id:
        raise NotFound(f"environment class {ec_id} not found")
    return ec


def update_environment_class(
    org_id: str, ec_id: str, *, session: Session, display_name: str | None = None,
    description: str | None = None, enabled: bool | None = None,
) -> EnvironmentClass:
    ec = get_environment_class(org_id, ec_id, session=session)
    if display_name is not None:
        ec.display_name = display_name
    if description is not None:
        ec.description = description
    if enabled is not None:
        ec.enabled = enabled
    ec.updated_at = utcnow()
    session.add(ec)
    return ec


def list_environment_classes(
    org_id: str, page: Page, *, session: Session, runner_ids: list[str] | None = None, enabled: bool | None = None,
) -> tuple[list[EnvironmentClass], str]:
    stmt = select(EnvironmentClass).where(EnvironmentClass.organization_id == org_id)
    if runner_ids:
        stmt = stmt.where(EnvironmentClass.runner_id.in_(runner_ids))
    if enabled is not None:
        stmt = stmt.where(EnvironmentClass.enabled == enabled)
    rows = list(session.exec(pagination.apply(stmt, EnvironmentClass, page)).all())
    return pagination.split(rows, page)


def template_of(ec: EnvironmentClass) -> dict[str, Any]:
    """The instance template an environment class describes: its configuration as a flat dict."""
    return {c["key"]: c.get("value", "") for c in ec.configuration}


# ---- projects ------------------------------------------------------------------------------

def _prebuild_fields(document: dict[str, Any]) -> tuple[bool, list[str]]:
    cfg = document.get("prebuildConfiguration") or {}
    return bool(cfg.get("enabled", False)), [str(x) for x in cfg.get("environmentClassIds", [])]


def create_project(org_id: str, name: str, document: dict[str, Any], *, session: Session) -> Project:
    enabled, class_ids = _prebuild_fields(document)
    _check_classes(org_id, class_ids, session=session)
    project = Project(
        organization_id=org_id, name=name, document=document,
        prebuild_enabled=enabled, prebuild_environment_class_ids=class_ids,
    )
    session.add(project)
    session.flush()
    return project


def get_project(org_id: str, project_id: str, *, session: Session) -> Project:
    project = session.get(Project, project_id)
    if project is None or project.organization_id != org_id:
        raise NotFound(f"project {project_id} not found")
    return project


def update_project(
    org_id: str, project_id: str, changes: dict[str, Any], *, session: Session, name: str | None = None,
) -> Project:
    """Merge `changes` (top-level document fields) into the project. Warm pools whose class leaves
    the enabled prebuild configuration are deleted, as upstream documents."""
    from app.domain.pools import delete_pool

    project = get_project(org_id, project_id, session=session)
    document = dict(project.document)
    document.update(changes)
    enabled, class_ids = _prebuild_fields(document)
    _check_classes(org_id, class_ids, session=session)
    project.document = document
    if name is not None:
        project.name = name
    project.prebuild_enabled = enabled
    project.prebuild_environment_class_ids = class_ids
    project.updated_at = utcnow()
    session.add(project)
    allowed = set(class_ids) if enabled else set()
    for pool in live_pools_of_project(project.id, session=session):
        if pool.environment_class_id not in allowed:
            delete_pool(org_id, pool.id, session=session)
    return project


def delete_project(org_id: str, project_id: str, *, session: Session) -> None:
    from app.domain.pools import delete_pool

    project = get_project(org_id, project_id, session=session)
    for pool in live_pools_of_project(project.id, session=session):
        delete_pool(org_id, pool.id, session=session)
    session.flush()
    session.delete(project)


def list_projects(
    org_id: str, page: Page, *, session: Session, project_ids: list[str] | None = None, search: str = "",
) -> tuple[list[Project], str]:
    stmt = select(Project).where(Project.organization_id == org_id)
    if project_ids:
        stmt = stmt.where(Project.id.in_(project_ids))
    if search:
        stmt = stmt.where(Project.name.contains(search))
    rows = list(session.exec(pagination.apply(stmt, Project, page)).all())
    return pagination.split(rows, page)


def live_pools_of_project(project_id: str, *, session: Session) -> list[Pool]:
    return list(session.exec(select(Pool).where(Pool.project_id == project_id, Pool.deleted_at.is_(None))).all())


def _check_classes(org_id: str, class_ids: list[str], *, session: Session) -> None:
    for ec_id in class_ids:
        ec = session.get(EnvironmentClass, ec_id)
        if ec is None or ec.organization_id != org_id:
            raise InvalidArgument(f"prebuildConfiguration.environmentClassIds: environment class {ec_id} not found")
