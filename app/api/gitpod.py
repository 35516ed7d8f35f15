"""The Gitpod/Ona façade: PrebuildService, ProjectService and RunnerConfigurationService over Connect.

Thin: parse and validate the wire message, call one domain function, map the row back. The size
bounds (0..20) and the UUID checks are Gitpod's buf.validate rules, so they live here, not in the domain.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf.json_format import MessageToDict, ParseDict

from app.api.connect_common import call, optional_uuids, require_uuid, timestamp
from app.domain import catalog, pagination, pools, prebuilds
from app.domain.errors import InvalidArgument, NotFound
from app.domain.states import PoolKind, PoolPhase, PrebuildPhase
from config.settings import get_settings
from proto.gitpod.v1 import messages_pb2 as pb

if TYPE_CHECKING:  # rows as the domain returns them
    from app.models import EnvironmentClass, Pool, Prebuild, Project

WARM_POOL_PHASE = {
    PoolPhase.PENDING: pb.WARM_POOL_PHASE_PENDING,
    PoolPhase.READY: pb.WARM_POOL_PHASE_READY,
    PoolPhase.DEGRADED: pb.WARM_POOL_PHASE_DEGRADED,
    PoolPhase.DELETING: pb.WARM_POOL_PHASE_DELETING,
    PoolPhase.DELETED: pb.WARM_POOL_PHASE_DELETED,
}
PREBUILD_PHASE = {p: pb.PrebuildPhase.Value(f"PREBUILD_PHASE_{p.name}") for p in PrebuildPhase}
PREBUILD_PHASE_NAME = {v: k for k, v in PREBUILD_PHASE.items()}
TRIGGER = {"manual": pb.PrebuildMetadata.PREBUILD_TRIGGER_MANUAL, "scheduled": pb.PrebuildMetadata.PREBUILD_TRIGGER_SCHEDULED}
TRIGGER_NAME = {v: k for k, v in TRIGGER.items()}


def _page(req: Any) -> pagination.Page:
    g = get_settings().gitpod
    try:
        return pagination.page_request(req.pagination.token, req.pagination.page_size,
                                       default=g.default_page_size, maximum=g.max_page_size)
    except InvalidArgument as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, exc.message) from None


def _size(req: Any, field: str, low: int, high: int) -> int | None:
    if not req.HasField(field):
        return None
    value = getattr(req, field)
    if not low <= value <= high:
        raise ConnectError(Code.INVALID_ARGUMENT, f"{field} must be between {low} and {high}, got {value}")
    return value


def _sizes(req: Any, *, creating: bool) -> tuple[int | None, int | None]:
    """Gitpod's rules: min 0..20, max 1..20, deprecated desired_size (1..20) sets min = max = desired."""
    cap = get_settings().gitpod.max_pool_size
    desired = None
    if (req.HasField("desired_size") if not creating else req.desired_size != 0):
        desired = req.desired_size
        if not 1 <= desired <= cap:
            raise ConnectError(Code.INVALID_ARGUMENT, f"desired_size must be between 1 and {cap}, got {desired}")
    min_size = _size(req, "min_size", 0, cap)
    max_size = _size(req, "max_size", 1, cap)
    if desired is not None:
        if min_size is not None or max_size is not None:
            raise ConnectError(Code.INVALID_ARGUMENT, "desired_size is deprecated and cannot be combined with min_size/max_size")
        return desired, desired
    if min_size is not None and max_size is not None and min_size > max_size:
        raise ConnectError(Code.INVALID_ARGUMENT, f"min_size must be <= max_size (got min_size={min_size}, max_size={max_size})")
    return min_size, max_size


def warm_pool_message(pool: Pool) -> pb.WarmPool:
    spec = pb.WarmPoolSpec(
        spec_version=pool.spec_version, desired_phase=WARM_POOL_PHASE[PoolPhase(pool.desired_phase)],
        min_size=pool.min_size, max_size=pool.max_size,
    )
    if pool.min_size == pool.max_size:
        spec.desired_size = pool.max_size
    if pool.snapshot_id:
        spec.snapshot_id = pool.snapshot_id
    return pb.WarmPool(
        id=pool.id,
        metadata=pb.WarmPoolMetadata(
            organization_id=pool.organization_id, project_id=pool.project_id or "",
            environment_class_id=pool.environment_class_id or "", runner_id=pool.runner_id or "",
            created_at=timestamp(pool.created_at), updated_at=timestamp(pool.updated_at),
        ),
        spec=spec,
        status=pb.WarmPoolStatus(
            phase=WARM_POOL_PHASE[PoolPhase(pool.phase)], failure_message=pool.failure_message,
            status_version=pool.status_version, running_instances=pool.ready_instances,
            stopped_instances=pool.stopped_instances, desired_size=pool.desired_size,
        ),
    )


def prebuild_message(p: Prebuild) -> pb.Prebuild:
    msg = pb.Prebuild(
        id=p.id,
        metadata=pb.PrebuildMetadata(
            organization_id=p.organization_id, project_id=p.project_id, environment_class_id=p.environment_class_id,
            creator=pb.Subject(id=p.creator_id) if p.creator_id else pb.Subject(),
            created_at=timestamp(p.created_at), updated_at=timestamp(p.updated_at),
            triggered_by=TRIGGER.get(p.triggered_by, 0),
        ),
        spec=pb.PrebuildSpec(spec_version=p.spec_version, desired_phase=PREBUILD_PHASE[PrebuildPhase(p.desired_phase)]),
        status=pb.PrebuildStatus(
            phase=PREBUILD_PHASE[PrebuildPhase(p.phase)], failure_message=p.failure_message,
            status_version=p.status_version, warning_message=p.warning_message, log_url=p.log_url,
            environment_id=p.environment_id, snapshot_completion_percentage=p.snapshot_completion_percentage,
            snapshot_size_bytes=p.snapshot_size_bytes,
        ),
    )
    msg.spec.timeout.seconds = p.timeout_seconds
    if p.completion_time:
        msg.status.completion_time.CopyFrom(timestamp(p.completion_time))
    return msg


def project_message(project: Project) -> pb.Project:
    msg = pb.Project()
    ParseDict(project.document, msg, ignore_unknown_fields=True)
    msg.id = project.id
    msg.metadata.CopyFrom(pb.ProjectMetadata(
        organization_id=project.organization_id, name=project.name,
        created_at=timestamp(project.created_at), updated_at=timestamp(project.updated_at),
    ))
    msg.desired_phase = pb.PROJECT_PHASE_ACTIVE
    return msg


def environment_class_message(ec: EnvironmentClass) -> pb.EnvironmentClass:
    return pb.EnvironmentClass(
        id=ec.id, display_name=ec.display_name, description=ec.description, runner_id=ec.runner_id,
        enabled=ec.enabled, configuration=[pb.FieldValue(key=c["key"], value=c.get("value", "")) for c in ec.configuration],
    )


def _document(msg: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """The echoable part of a project message, as proto-JSON (camelCase) for storage."""
    out: dict[str, Any] = {}
    full = MessageToDict(msg)
    for name in fields:
        json_name = msg.DESCRIPTOR.fields_by_name[name].json_name
        if json_name in full:
            out[json_name] = full[json_name]
    return out


PROJECT_FIELDS = ("initializer", "devcontainer_file_path", "automations_file_path", "technical_description",
                  "prebuild_configuration")
UPDATE_PROJECT_FIELDS = (*PROJECT_FIELDS, "recommended_editors")


class PrebuildService:
    """gitpod.v1.PrebuildService: warm pools and prebuilds."""

    async def create_warm_pool(self, req: pb.CreateWarmPoolRequest, ctx: Any) -> pb.CreateWarmPoolResponse:
        project_id = require_uuid(req.project_id, "project_id")
        ec_id = require_uuid(req.environment_class_id, "environment_class_id")
        min_size, max_size = _sizes(req, creating=True)
        if min_size is None and max_size is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "give min_size and max_size (or the deprecated desired_size)")
        if max_size is None:
            max_size = max(min_size or 0, 1)
        if min_size is None:
            min_size = 0
        if min_size > max_size:
            raise ConnectError(Code.INVALID_ARGUMENT, f"min_size must be <= max_size (got min_size={min_size}, max_size={max_size})")
        pool = await call(ctx, pools.create_warm_pool, project_id, ec_id, min_size=min_size, max_size=max_size)
        return pb.CreateWarmPoolResponse(warm_pool=warm_pool_message(pool))

    async def get_warm_pool(self, req: pb.GetWarmPoolRequest, ctx: Any) -> pb.GetWarmPoolResponse:
        pool_id = require_uuid(req.warm_pool_id, "warm_pool_id")
        pool = await call(ctx, _get_gitpod_pool, pool_id)
        return pb.GetWarmPoolResponse(warm_pool=warm_pool_message(pool))

    async def list_warm_pools(self, req: pb.ListWarmPoolsRequest, ctx: Any) -> pb.ListWarmPoolsResponse:
        page = _page(req)
        project_ids = optional_uuids(req.filter.project_ids, "filter.project_ids")
        ec_ids = optional_uuids(req.filter.environment_class_ids, "filter.environment_class_ids")
        rows, next_token = await call(ctx, pools.list_pools, page, kind=PoolKind.GITPOD,
                                      project_ids=project_ids, environment_class_ids=ec_ids)
        return pb.ListWarmPoolsResponse(pagination=pb.PaginationResponse(next_token=next_token),
                                        warm_pools=[warm_pool_message(p) for p in rows])

    async def update_warm_pool(self, req: pb.UpdateWarmPoolRequest, ctx: Any) -> pb.UpdateWarmPoolResponse:
        pool_id = require_uuid(req.warm_pool_id, "warm_pool_id")
        min_size, max_size = _sizes(req, creating=False)
        pool = await call(ctx, _resize_gitpod_pool, pool_id, min_size, max_size)
        return pb.UpdateWarmPoolResponse(warm_pool=warm_pool_message(pool))

    async def delete_warm_pool(self, req: pb.DeleteWarmPoolRequest, ctx: Any) -> pb.DeleteWarmPoolResponse:
        pool_id = require_uuid(req.warm_pool_id, "warm_pool_id")
        await call(ctx, _delete_gitpod_pool, pool_id)
        return pb.DeleteWarmPoolResponse()

    async def create_prebuild(self, req: pb.CreatePrebuildRequest, ctx: Any) -> pb.CreatePrebuildResponse:
        project_id = require_uuid(req.project_id, "project_id")
        ec_id = require_uuid(req.environment_class_id, "environment_class_id") if req.HasField("environment_class_id") else None
        timeout = req.spec.timeout.seconds if req.spec.HasField("timeout") else None
        p = await call(ctx, prebuilds.create_prebuild, project_id, ec_id, timeout_seconds=timeout)
        return pb.CreatePrebuildResponse(prebuild=prebuild_message(p))

    async def get_prebuild(self, req: pb.GetPrebuildRequest, ctx: Any) -> pb.GetPrebuildResponse:
        p = await call(ctx, prebuilds.get_prebuild, require_uuid(req.prebuild_id, "prebuild_id"))
        return pb.GetPrebuildResponse(prebuild=prebuild_message(p))

    async def list_prebuilds(self, req: pb.ListPrebuildsRequest, ctx: Any) -> pb.ListPrebuildsResponse:
        page = _page(req)
        f = req.filter
        phases = [str(PREBUILD_PHASE_NAME[v]) for v in f.phases if v in PREBUILD_PHASE_NAME]
        rows, next_token = await call(
            ctx, prebuilds.list_prebuilds, page, project_ids=optional_uuids(f.project_ids, "filter.project_ids"),
            phases=phases, triggered_by=[TRIGGER_NAME[t] for t in f.triggered_by if t in TRIGGER_NAME],
            creator_ids=optional_uuids(f.creator_ids, "filter.creator_ids"),
        )
        return pb.ListPrebuildsResponse(pagination=pb.PaginationResponse(next_token=next_token),
                                        prebuilds=[prebuild_message(p) for p in rows])

    async def cancel_prebuild(self, req: pb.CancelPrebuildRequest, ctx: Any) -> pb.CancelPrebuildResponse:
        p = await call(ctx, prebuilds.cancel_prebuild, require_uuid(req.prebuild_id, "prebuild_id"))
        return pb.CancelPrebuildResponse(prebuild=prebuild_message(p))

    async def delete_prebuild(self, req: pb.DeletePrebuildRequest, ctx: Any) -> pb.DeletePrebuildResponse:
        await call(ctx, prebuilds.delete_prebuild, require_uuid(req.prebuild_id, "prebuild_id"))
        return pb.DeletePrebuildResponse()

    async def create_prebuild_logs_token(self, req: pb.CreatePrebuildLogsTokenRequest, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, "prebuild logs are not served by warmpool; a warm pool instance's "
                                               "console output is at GET /v1/instances/{id}/logs")


def _get_gitpod_pool(org_id: str, pool_id: str, *, session: Any) -> Pool:
    pool = pools.get_pool(org_id, pool_id, session=session)
    if pool.kind != PoolKind.GITPOD:
        raise NotFound(f"warm pool {pool_id} not found")
    return pool


def _resize_gitpod_pool(org_id: str, pool_id: str, min_size: int | None, max_size: int | None, *, session: Any) -> Pool:
    _get_gitpod_pool(org_id, pool_id, session=session)
    return pools.resize_pool(org_id, pool_id, min_size=min_size, max_size=max_size, session=session)


def _delete_gitpod_pool(org_id: str, pool_id: str, *, session: Any) -> Pool:
    _get_gitpod_pool(org_id, pool_id, session=session)
    return pools.delete_pool(org_id, pool_id, session=session)


class ProjectService:
    """gitpod.v1.ProjectService: the projects whose prebuild configuration allows warm pools."""

    async def create_project(self, req: pb.CreateProjectRequest, ctx: Any) -> pb.CreateProjectResponse:
        _check_project_name(req.name)
        doc = _document(req, PROJECT_FIELDS)
        _check_class_ids(req.prebuild_configuration)
        project = await call(ctx, catalog.create_project, req.name, doc)
        return pb.CreateProjectResponse(project=project_message(project))

    async def get_project(self, req: pb.GetProjectRequest, ctx: Any) -> pb.GetProjectResponse:
        project = await call(ctx, catalog.get_project, require_uuid(req.project_id, "project_id"))
        return pb.GetProjectResponse(project=project_message(project))

    async def update_project(self, req: pb.UpdateProjectRequest, ctx: Any) -> pb.UpdateProjectResponse:
        project_id = require_uuid(req.project_id, "project_id")
        if req.HasField("prebuild_configuration"):
            _check_class_ids(req.prebuild_configuration)
        changes = _document(req, UPDATE_PROJECT_FIELDS)
        if req.HasField("prebuild_configuration") and "prebuildConfiguration" not in changes:
            changes["prebuildConfiguration"] = {}  # explicitly set to the empty (disabled) configuration
        name = _check_project_name(req.name) if req.HasField("name") else None
        project = await call(ctx, catalog.update_project, project_id, changes, name=name)
        return pb.UpdateProjectResponse(project=project_message(project))

    async def list_projects(self, req: pb.ListProjectsRequest, ctx: Any) -> pb.ListProjectsResponse:
        page = _page(req)
        rows, next_token = await call(ctx, catalog.list_projects, page,
                                      project_ids=optional_uuids(req.filter.project_ids, "filter.project_ids"),
                                      search=req.filter.search)
        return pb.ListProjectsResponse(pagination=pb.PaginationResponse(next_token=next_token),
                                       projects=[project_message(p) for p in rows])

    async def delete_project(self, req: pb.DeleteProjectRequest, ctx: Any) -> pb.DeleteProjectResponse:
        await call(ctx, catalog.delete_project, require_uuid(req.project_id, "project_id"))
        return pb.DeleteProjectResponse()

    async def list_project_environment_classes(self, req: Any, ctx: Any) -> pb.ListProjectEnvironmentClassesResponse:
        project = await call(ctx, catalog.get_project, require_uuid(req.project_id, "project_id"))
        msg = project_message(project)
        return pb.ListProjectEnvironmentClassesResponse(project_environment_classes=list(msg.environment_classes))

    async def update_project_environment_classes(self, req: Any, ctx: Any) -> pb.UpdateProjectEnvironmentClassesResponse:
        project_id = require_uuid(req.project_id, "project_id")
        if len(req.project_environment_classes) > 30:
            raise ConnectError(Code.INVALID_ARGUMENT, "project_environment_classes takes at most 30 entries")
        doc = MessageToDict(pb.Project(environment_classes=req.project_environment_classes))
        await call(ctx, catalog.update_project, project_id, {"environmentClasses": doc.get("environmentClasses", [])})
        return pb.UpdateProjectEnvironmentClassesResponse()


def _check_project_name(name: str) -> str:
    if not name.strip():
        raise ConnectError(Code.INVALID_ARGUMENT, "name is required")
    if len(name) > 80:
        raise ConnectError(Code.INVALID_ARGUMENT, f"name must be at most 80 characters long, got {len(name)}")
    return name


def _check_class_ids(cfg: pb.ProjectPrebuildConfiguration) -> None:
    optional_uuids(cfg.environment_class_ids, "prebuild_configuration.environment_class_ids", limit=100)
    if cfg.HasField("timeout") and not 300 <= cfg.timeout.seconds <= 7200:
        raise ConnectError(Code.INVALID_ARGUMENT, f"prebuild_configuration.timeout must be between 300s and 7200s, got {cfg.timeout.seconds}s")


class RunnerConfigurationService:
    """gitpod.v1.RunnerConfigurationService: environment classes (a runner + an instance template)."""

    async def create_environment_class(self, req: pb.CreateEnvironmentClassRequest, ctx: Any) -> pb.CreateEnvironmentClassResponse:
        runner_id = require_uuid(req.runner_id, "runner_id")
        if not 3 <= len(req.display_name) <= 127:
            raise ConnectError(Code.INVALID_ARGUMENT, "display_name must be 3 to 127 characters long")
        if req.description and not 3 <= len(req.description) <= 200:
            raise ConnectError(Code.INVALID_ARGUMENT, "description must be 3 to 200 characters long")
        config = [{"key": c.key, "value": c.value} for c in req.configuration]
        if any(not c["key"] for c in config):
            raise ConnectError(Code.INVALID_ARGUMENT, "configuration entries need a key")
        ec = await call(ctx, catalog.create_environment_class, runner_id, req.display_name, req.description, config)
        return pb.CreateEnvironmentClassResponse(id=ec.id)

    async def get_environment_class(self, req: pb.GetEnvironmentClassRequest, ctx: Any) -> pb.GetEnvironmentClassResponse:
        ec = await call(ctx, catalog.get_environment_class, require_uuid(req.environment_class_id, "environment_class_id"))
        return pb.GetEnvironmentClassResponse(environment_class=environment_class_message(ec))

    async def list_environment_classes(self, req: pb.ListEnvironmentClassesRequest, ctx: Any) -> pb.ListEnvironmentClassesResponse:
        page = _page(req)
        enabled = req.filter.enabled if req.filter.HasField("enabled") else None
        rows, next_token = await call(ctx, catalog.list_environment_classes, page,
                                      runner_ids=optional_uuids(req.filter.runner_ids, "filter.runner_ids"), enabled=enabled)
        return pb.ListEnvironmentClassesResponse(pagination=pb.PaginationResponse(next_token=next_token),
                                                 environment_classes=[environment_class_message(e) for e in rows])

    async def update_environment_class(self, req: pb.UpdateEnvironmentClassRequest, ctx: Any) -> pb.UpdateEnvironmentClassResponse:
        ec_id = require_uuid(req.environment_class_id, "environment_class_id")
        if req.HasField("display_name") and not 3 <= len(req.display_name) <= 127:
            raise ConnectError(Code.INVALID_ARGUMENT, "display_name must be 3 to 127 characters long")
        if req.HasField("description") and not 3 <= len(req.description) <= 200:
            raise ConnectError(Code.INVALID_ARGUMENT, "description must be 3 to 200 characters long")
        await call(
            ctx, catalog.update_environment_class, ec_id,
            display_name=req.display_name if req.HasField("display_name") else None,
            description=req.description if req.HasField("description") else None,
            enabled=req.enabled if req.HasField("enabled") else None,
        )
        return pb.UpdateEnvironmentClassResponse()
