import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CountResponseRelation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COUNT_RESPONSE_RELATION_UNSPECIFIED: _ClassVar[CountResponseRelation]
    COUNT_RESPONSE_RELATION_EQ: _ClassVar[CountResponseRelation]
    COUNT_RESPONSE_RELATION_GTE: _ClassVar[CountResponseRelation]

class PrebuildPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREBUILD_PHASE_UNSPECIFIED: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_PENDING: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_STARTING: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_RUNNING: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_STOPPING: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_SNAPSHOTTING: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_COMPLETED: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_FAILED: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_CANCELLING: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_CANCELLED: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_DELETING: _ClassVar[PrebuildPhase]
    PREBUILD_PHASE_DELETED: _ClassVar[PrebuildPhase]

class Principal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRINCIPAL_UNSPECIFIED: _ClassVar[Principal]
    PRINCIPAL_ACCOUNT: _ClassVar[Principal]
    PRINCIPAL_USER: _ClassVar[Principal]
    PRINCIPAL_RUNNER: _ClassVar[Principal]
    PRINCIPAL_ENVIRONMENT: _ClassVar[Principal]
    PRINCIPAL_SERVICE_ACCOUNT: _ClassVar[Principal]
    PRINCIPAL_RUNNER_MANAGER: _ClassVar[Principal]

class ProjectPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROJECT_PHASE_UNSPECIFIED: _ClassVar[ProjectPhase]
    PROJECT_PHASE_ACTIVE: _ClassVar[ProjectPhase]
    PROJECT_PHASE_DELETED: _ClassVar[ProjectPhase]

class RunnerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNNER_KIND_UNSPECIFIED: _ClassVar[RunnerKind]
    RUNNER_KIND_LOCAL: _ClassVar[RunnerKind]
    RUNNER_KIND_REMOTE: _ClassVar[RunnerKind]
    RUNNER_KIND_LOCAL_CONFIGURATION: _ClassVar[RunnerKind]

class RunnerProvider(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNNER_PROVIDER_UNSPECIFIED: _ClassVar[RunnerProvider]
    RUNNER_PROVIDER_AWS_EC2: _ClassVar[RunnerProvider]
    RUNNER_PROVIDER_LINUX_HOST: _ClassVar[RunnerProvider]
    RUNNER_PROVIDER_DESKTOP_MAC: _ClassVar[RunnerProvider]
    RUNNER_PROVIDER_MANAGED: _ClassVar[RunnerProvider]
    RUNNER_PROVIDER_GCP: _ClassVar[RunnerProvider]
    RUNNER_PROVIDER_DEV_AGENT: _ClassVar[RunnerProvider]

class SortOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SORT_ORDER_UNSPECIFIED: _ClassVar[SortOrder]
    SORT_ORDER_ASC: _ClassVar[SortOrder]
    SORT_ORDER_DESC: _ClassVar[SortOrder]

class WarmPoolPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WARM_POOL_PHASE_UNSPECIFIED: _ClassVar[WarmPoolPhase]
    WARM_POOL_PHASE_PENDING: _ClassVar[WarmPoolPhase]
    WARM_POOL_PHASE_READY: _ClassVar[WarmPoolPhase]
    WARM_POOL_PHASE_DEGRADED: _ClassVar[WarmPoolPhase]
    WARM_POOL_PHASE_DELETING: _ClassVar[WarmPoolPhase]
    WARM_POOL_PHASE_DELETED: _ClassVar[WarmPoolPhase]
COUNT_RESPONSE_RELATION_UNSPECIFIED: CountResponseRelation
COUNT_RESPONSE_RELATION_EQ: CountResponseRelation
COUNT_RESPONSE_RELATION_GTE: CountResponseRelation
PREBUILD_PHASE_UNSPECIFIED: PrebuildPhase
PREBUILD_PHASE_PENDING: PrebuildPhase
PREBUILD_PHASE_STARTING: PrebuildPhase
PREBUILD_PHASE_RUNNING: PrebuildPhase
PREBUILD_PHASE_STOPPING: PrebuildPhase
PREBUILD_PHASE_SNAPSHOTTING: PrebuildPhase
PREBUILD_PHASE_COMPLETED: PrebuildPhase
PREBUILD_PHASE_FAILED: PrebuildPhase
PREBUILD_PHASE_CANCELLING: PrebuildPhase
PREBUILD_PHASE_CANCELLED: PrebuildPhase
PREBUILD_PHASE_DELETING: PrebuildPhase
PREBUILD_PHASE_DELETED: PrebuildPhase
PRINCIPAL_UNSPECIFIED: Principal
PRINCIPAL_ACCOUNT: Principal
PRINCIPAL_USER: Principal
PRINCIPAL_RUNNER: Principal
PRINCIPAL_ENVIRONMENT: Principal
PRINCIPAL_SERVICE_ACCOUNT: Principal
PRINCIPAL_RUNNER_MANAGER: Principal
PROJECT_PHASE_UNSPECIFIED: ProjectPhase
PROJECT_PHASE_ACTIVE: ProjectPhase
PROJECT_PHASE_DELETED: ProjectPhase
RUNNER_KIND_UNSPECIFIED: RunnerKind
RUNNER_KIND_LOCAL: RunnerKind
RUNNER_KIND_REMOTE: RunnerKind
RUNNER_KIND_LOCAL_CONFIGURATION: RunnerKind
RUNNER_PROVIDER_UNSPECIFIED: RunnerProvider
RUNNER_PROVIDER_AWS_EC2: RunnerProvider
RUNNER_PROVIDER_LINUX_HOST: RunnerProvider
RUNNER_PROVIDER_DESKTOP_MAC: RunnerProvider
RUNNER_PROVIDER_MANAGED: RunnerProvider
RUNNER_PROVIDER_GCP: RunnerProvider
RUNNER_PROVIDER_DEV_AGENT: RunnerProvider
SORT_ORDER_UNSPECIFIED: SortOrder
SORT_ORDER_ASC: SortOrder
SORT_ORDER_DESC: SortOrder
WARM_POOL_PHASE_UNSPECIFIED: WarmPoolPhase
WARM_POOL_PHASE_PENDING: WarmPoolPhase
WARM_POOL_PHASE_READY: WarmPoolPhase
WARM_POOL_PHASE_DEGRADED: WarmPoolPhase
WARM_POOL_PHASE_DELETING: WarmPoolPhase
WARM_POOL_PHASE_DELETED: WarmPoolPhase

class CancelPrebuildRequest(_message.Message):
    __slots__ = ("prebuild_id",)
    PREBUILD_ID_FIELD_NUMBER: _ClassVar[int]
    prebuild_id: str
    def __init__(self, prebuild_id: _Optional[str] = ...) -> None: ...

class CancelPrebuildResponse(_message.Message):
    __slots__ = ("prebuild",)
    PREBUILD_FIELD_NUMBER: _ClassVar[int]
    prebuild: Prebuild
    def __init__(self, prebuild: _Optional[_Union[Prebuild, _Mapping]] = ...) -> None: ...

class ContextURLInitializer(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("include",)
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    include: bool
    def __init__(self, include: _Optional[bool] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("value", "relation")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    value: int
    relation: CountResponseRelation
    def __init__(self, value: _Optional[int] = ..., relation: _Optional[_Union[CountResponseRelation, str]] = ...) -> None: ...

class CreateEnvironmentClassRequest(_message.Message):
    __slots__ = ("runner_id", "display_name", "description", "configuration")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    display_name: str
    description: str
    configuration: _containers.RepeatedCompositeFieldContainer[FieldValue]
    def __init__(self, runner_id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., configuration: _Optional[_Iterable[_Union[FieldValue, _Mapping]]] = ...) -> None: ...

class CreateEnvironmentClassResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CreatePrebuildLogsTokenRequest(_message.Message):
    __slots__ = ("prebuild_id",)
    PREBUILD_ID_FIELD_NUMBER: _ClassVar[int]
    prebuild_id: str
    def __init__(self, prebuild_id: _Optional[str] = ...) -> None: ...

class CreatePrebuildLogsTokenResponse(_message.Message):
    __slots__ = ("access_token",)
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    def __init__(self, access_token: _Optional[str] = ...) -> None: ...

class CreatePrebuildRequest(_message.Message):
    __slots__ = ("project_id", "environment_class_id", "spec")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_class_id: str
    spec: PrebuildSpec
    def __init__(self, project_id: _Optional[str] = ..., environment_class_id: _Optional[str] = ..., spec: _Optional[_Union[PrebuildSpec, _Mapping]] = ...) -> None: ...

class CreatePrebuildResponse(_message.Message):
    __slots__ = ("prebuild",)
    PREBUILD_FIELD_NUMBER: _ClassVar[int]
    prebuild: Prebuild
    def __init__(self, prebuild: _Optional[_Union[Prebuild, _Mapping]] = ...) -> None: ...

class CreateProjectRequest(_message.Message):
    __slots__ = ("name", "initializer", "devcontainer_file_path", "automations_file_path", "technical_description", "prebuild_configuration")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    DEVCONTAINER_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIONS_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    TECHNICAL_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PREBUILD_CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    initializer: EnvironmentInitializer
    devcontainer_file_path: str
    automations_file_path: str
    technical_description: str
    prebuild_configuration: ProjectPrebuildConfiguration
    def __init__(self, name: _Optional[str] = ..., initializer: _Optional[_Union[EnvironmentInitializer, _Mapping]] = ..., devcontainer_file_path: _Optional[str] = ..., automations_file_path: _Optional[str] = ..., technical_description: _Optional[str] = ..., prebuild_configuration: _Optional[_Union[ProjectPrebuildConfiguration, _Mapping]] = ...) -> None: ...

class CreateProjectResponse(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: Project
    def __init__(self, project: _Optional[_Union[Project, _Mapping]] = ...) -> None: ...

class CreateWarmPoolRequest(_message.Message):
    __slots__ = ("project_id", "environment_class_id", "desired_size", "min_size", "max_size")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_class_id: str
    desired_size: int
    min_size: int
    max_size: int
    def __init__(self, project_id: _Optional[str] = ..., environment_class_id: _Optional[str] = ..., desired_size: _Optional[int] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...

class CreateWarmPoolResponse(_message.Message):
    __slots__ = ("warm_pool",)
    WARM_POOL_FIELD_NUMBER: _ClassVar[int]
    warm_pool: WarmPool
    def __init__(self, warm_pool: _Optional[_Union[WarmPool, _Mapping]] = ...) -> None: ...

class DeletePrebuildRequest(_message.Message):
    __slots__ = ("prebuild_id",)
    PREBUILD_ID_FIELD_NUMBER: _ClassVar[int]
    prebuild_id: str
    def __init__(self, prebuild_id: _Optional[str] = ...) -> None: ...

class DeletePrebuildResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteProjectRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class DeleteProjectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteWarmPoolRequest(_message.Message):
    __slots__ = ("warm_pool_id",)
    WARM_POOL_ID_FIELD_NUMBER: _ClassVar[int]
    warm_pool_id: str
    def __init__(self, warm_pool_id: _Optional[str] = ...) -> None: ...

class DeleteWarmPoolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EditorVersions(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, versions: _Optional[_Iterable[str]] = ...) -> None: ...

class EnvironmentClass(_message.Message):
    __slots__ = ("id", "display_name", "description", "configuration", "runner_id", "enabled")
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    id: str
    display_name: str
    description: str
    configuration: _containers.RepeatedCompositeFieldContainer[FieldValue]
    runner_id: str
    enabled: bool
    def __init__(self, id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., configuration: _Optional[_Iterable[_Union[FieldValue, _Mapping]]] = ..., runner_id: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class EnvironmentInitializer(_message.Message):
    __slots__ = ("specs",)
    class Spec(_message.Message):
        __slots__ = ("git", "context_url")
        GIT_FIELD_NUMBER: _ClassVar[int]
        CONTEXT_URL_FIELD_NUMBER: _ClassVar[int]
        git: GitInitializer
        context_url: ContextURLInitializer
        def __init__(self, git: _Optional[_Union[GitInitializer, _Mapping]] = ..., context_url: _Optional[_Union[ContextURLInitializer, _Mapping]] = ...) -> None: ...
    SPECS_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[EnvironmentInitializer.Spec]
    def __init__(self, specs: _Optional[_Iterable[_Union[EnvironmentInitializer.Spec, _Mapping]]] = ...) -> None: ...

class FieldValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class GetEnvironmentClassRequest(_message.Message):
    __slots__ = ("environment_class_id",)
    ENVIRONMENT_CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    environment_class_id: str
    def __init__(self, environment_class_id: _Optional[str] = ...) -> None: ...

class GetEnvironmentClassResponse(_message.Message):
    __slots__ = ("environment_class",)
    ENVIRONMENT_CLASS_FIELD_NUMBER: _ClassVar[int]
    environment_class: EnvironmentClass
    def __init__(self, environment_class: _Optional[_Union[EnvironmentClass, _Mapping]] = ...) -> None: ...

class GetPrebuildRequest(_message.Message):
    __slots__ = ("prebuild_id",)
    PREBUILD_ID_FIELD_NUMBER: _ClassVar[int]
    prebuild_id: str
    def __init__(self, prebuild_id: _Optional[str] = ...) -> None: ...

class GetPrebuildResponse(_message.Message):
    __slots__ = ("prebuild",)
    PREBUILD_FIELD_NUMBER: _ClassVar[int]
    prebuild: Prebuild
    def __init__(self, prebuild: _Optional[_Union[Prebuild, _Mapping]] = ...) -> None: ...

class GetProjectRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class GetProjectResponse(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: Project
    def __init__(self, project: _Optional[_Union[Project, _Mapping]] = ...) -> None: ...

class GetWarmPoolRequest(_message.Message):
    __slots__ = ("warm_pool_id",)
    WARM_POOL_ID_FIELD_NUMBER: _ClassVar[int]
    warm_pool_id: str
    def __init__(self, warm_pool_id: _Optional[str] = ...) -> None: ...

class GetWarmPoolResponse(_message.Message):
    __slots__ = ("warm_pool",)
    WARM_POOL_FIELD_NUMBER: _ClassVar[int]
    warm_pool: WarmPool
    def __init__(self, warm_pool: _Optional[_Union[WarmPool, _Mapping]] = ...) -> None: ...

class GitInitializer(_message.Message):
    __slots__ = ("remote_uri", "upstream_remote_uri", "target_mode", "clone_target", "checkout_location")
    class CloneTargetMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CLONE_TARGET_MODE_UNSPECIFIED: _ClassVar[GitInitializer.CloneTargetMode]
        CLONE_TARGET_MODE_REMOTE_HEAD: _ClassVar[GitInitializer.CloneTargetMode]
        CLONE_TARGET_MODE_REMOTE_COMMIT: _ClassVar[GitInitializer.CloneTargetMode]
        CLONE_TARGET_MODE_REMOTE_BRANCH: _ClassVar[GitInitializer.CloneTargetMode]
        CLONE_TARGET_MODE_LOCAL_BRANCH: _ClassVar[GitInitializer.CloneTargetMode]
        CLONE_TARGET_MODE_REMOTE_TAG: _ClassVar[GitInitializer.CloneTargetMode]
    CLONE_TARGET_MODE_UNSPECIFIED: GitInitializer.CloneTargetMode
    CLONE_TARGET_MODE_REMOTE_HEAD: GitInitializer.CloneTargetMode
    CLONE_TARGET_MODE_REMOTE_COMMIT: GitInitializer.CloneTargetMode
    CLONE_TARGET_MODE_REMOTE_BRANCH: GitInitializer.CloneTargetMode
    CLONE_TARGET_MODE_LOCAL_BRANCH: GitInitializer.CloneTargetMode
    CLONE_TARGET_MODE_REMOTE_TAG: GitInitializer.CloneTargetMode
    REMOTE_URI_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_REMOTE_URI_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODE_FIELD_NUMBER: _ClassVar[int]
    CLONE_TARGET_FIELD_NUMBER: _ClassVar[int]
    CHECKOUT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    remote_uri: str
    upstream_remote_uri: str
    target_mode: GitInitializer.CloneTargetMode
    clone_target: str
    checkout_location: str
    def __init__(self, remote_uri: _Optional[str] = ..., upstream_remote_uri: _Optional[str] = ..., target_mode: _Optional[_Union[GitInitializer.CloneTargetMode, str]] = ..., clone_target: _Optional[str] = ..., checkout_location: _Optional[str] = ...) -> None: ...

class ListEnvironmentClassesRequest(_message.Message):
    __slots__ = ("pagination", "filter")
    class Filter(_message.Message):
        __slots__ = ("runner_ids", "enabled", "can_create_environments", "runner_kinds", "runner_providers")
        RUNNER_IDS_FIELD_NUMBER: _ClassVar[int]
        ENABLED_FIELD_NUMBER: _ClassVar[int]
        CAN_CREATE_ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
        RUNNER_KINDS_FIELD_NUMBER: _ClassVar[int]
        RUNNER_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
        runner_ids: _containers.RepeatedScalarFieldContainer[str]
        enabled: bool
        can_create_environments: bool
        runner_kinds: _containers.RepeatedScalarFieldContainer[RunnerKind]
        runner_providers: _containers.RepeatedScalarFieldContainer[RunnerProvider]
        def __init__(self, runner_ids: _Optional[_Iterable[str]] = ..., enabled: _Optional[bool] = ..., can_create_environments: _Optional[bool] = ..., runner_kinds: _Optional[_Iterable[_Union[RunnerKind, str]]] = ..., runner_providers: _Optional[_Iterable[_Union[RunnerProvider, str]]] = ...) -> None: ...
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationRequest
    filter: ListEnvironmentClassesRequest.Filter
    def __init__(self, pagination: _Optional[_Union[PaginationRequest, _Mapping]] = ..., filter: _Optional[_Union[ListEnvironmentClassesRequest.Filter, _Mapping]] = ...) -> None: ...

class ListEnvironmentClassesResponse(_message.Message):
    __slots__ = ("pagination", "environment_classes")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASSES_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationResponse
    environment_classes: _containers.RepeatedCompositeFieldContainer[EnvironmentClass]
    def __init__(self, pagination: _Optional[_Union[PaginationResponse, _Mapping]] = ..., environment_classes: _Optional[_Iterable[_Union[EnvironmentClass, _Mapping]]] = ...) -> None: ...

class ListPrebuildsRequest(_message.Message):
    __slots__ = ("pagination", "filter")
    class Filter(_message.Message):
        __slots__ = ("project_ids", "phases", "triggered_by", "creator_ids", "executor_ids")
        PROJECT_IDS_FIELD_NUMBER: _ClassVar[int]
        PHASES_FIELD_NUMBER: _ClassVar[int]
        TRIGGERED_BY_FIELD_NUMBER: _ClassVar[int]
        CREATOR_IDS_FIELD_NUMBER: _ClassVar[int]
        EXECUTOR_IDS_FIELD_NUMBER: _ClassVar[int]
        project_ids: _containers.RepeatedScalarFieldContainer[str]
        phases: _containers.RepeatedScalarFieldContainer[PrebuildPhase]
        triggered_by: _containers.RepeatedScalarFieldContainer[PrebuildMetadata.PrebuildTrigger]
        creator_ids: _containers.RepeatedScalarFieldContainer[str]
        executor_ids: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, project_ids: _Optional[_Iterable[str]] = ..., phases: _Optional[_Iterable[_Union[PrebuildPhase, str]]] = ..., triggered_by: _Optional[_Iterable[_Union[PrebuildMetadata.PrebuildTrigger, str]]] = ..., creator_ids: _Optional[_Iterable[str]] = ..., executor_ids: _Optional[_Iterable[str]] = ...) -> None: ...
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationRequest
    filter: ListPrebuildsRequest.Filter
    def __init__(self, pagination: _Optional[_Union[PaginationRequest, _Mapping]] = ..., filter: _Optional[_Union[ListPrebuildsRequest.Filter, _Mapping]] = ...) -> None: ...

class ListPrebuildsResponse(_message.Message):
    __slots__ = ("pagination", "prebuilds")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    PREBUILDS_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationResponse
    prebuilds: _containers.RepeatedCompositeFieldContainer[Prebuild]
    def __init__(self, pagination: _Optional[_Union[PaginationResponse, _Mapping]] = ..., prebuilds: _Optional[_Iterable[_Union[Prebuild, _Mapping]]] = ...) -> None: ...

class ListProjectEnvironmentClassesRequest(_message.Message):
    __slots__ = ("pagination", "project_id")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationRequest
    project_id: str
    def __init__(self, pagination: _Optional[_Union[PaginationRequest, _Mapping]] = ..., project_id: _Optional[str] = ...) -> None: ...

class ListProjectEnvironmentClassesResponse(_message.Message):
    __slots__ = ("pagination", "project_environment_classes")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ENVIRONMENT_CLASSES_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationResponse
    project_environment_classes: _containers.RepeatedCompositeFieldContainer[ProjectEnvironmentClass]
    def __init__(self, pagination: _Optional[_Union[PaginationResponse, _Mapping]] = ..., project_environment_classes: _Optional[_Iterable[_Union[ProjectEnvironmentClass, _Mapping]]] = ...) -> None: ...

class ListProjectsRequest(_message.Message):
    __slots__ = ("pagination", "filter", "sort", "count")
    class Filter(_message.Message):
        __slots__ = ("project_ids", "search", "runner_ids", "runner_kinds", "spec_remote_uris", "creator_ids")
        PROJECT_IDS_FIELD_NUMBER: _ClassVar[int]
        SEARCH_FIELD_NUMBER: _ClassVar[int]
        RUNNER_IDS_FIELD_NUMBER: _ClassVar[int]
        RUNNER_KINDS_FIELD_NUMBER: _ClassVar[int]
        SPEC_REMOTE_URIS_FIELD_NUMBER: _ClassVar[int]
        CREATOR_IDS_FIELD_NUMBER: _ClassVar[int]
        project_ids: _containers.RepeatedScalarFieldContainer[str]
        search: str
        runner_ids: _containers.RepeatedScalarFieldContainer[str]
        runner_kinds: _containers.RepeatedScalarFieldContainer[RunnerKind]
        spec_remote_uris: _containers.RepeatedScalarFieldContainer[str]
        creator_ids: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, project_ids: _Optional[_Iterable[str]] = ..., search: _Optional[str] = ..., runner_ids: _Optional[_Iterable[str]] = ..., runner_kinds: _Optional[_Iterable[_Union[RunnerKind, str]]] = ..., spec_remote_uris: _Optional[_Iterable[str]] = ..., creator_ids: _Optional[_Iterable[str]] = ...) -> None: ...
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationRequest
    filter: ListProjectsRequest.Filter
    sort: Sort
    count: CountRequest
    def __init__(self, pagination: _Optional[_Union[PaginationRequest, _Mapping]] = ..., filter: _Optional[_Union[ListProjectsRequest.Filter, _Mapping]] = ..., sort: _Optional[_Union[Sort, _Mapping]] = ..., count: _Optional[_Union[CountRequest, _Mapping]] = ...) -> None: ...

class ListProjectsResponse(_message.Message):
    __slots__ = ("pagination", "projects", "count")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationResponse
    projects: _containers.RepeatedCompositeFieldContainer[Project]
    count: CountResponse
    def __init__(self, pagination: _Optional[_Union[PaginationResponse, _Mapping]] = ..., projects: _Optional[_Iterable[_Union[Project, _Mapping]]] = ..., count: _Optional[_Union[CountResponse, _Mapping]] = ...) -> None: ...

class ListWarmPoolsRequest(_message.Message):
    __slots__ = ("pagination", "filter")
    class Filter(_message.Message):
        __slots__ = ("project_ids", "environment_class_ids")
        PROJECT_IDS_FIELD_NUMBER: _ClassVar[int]
        ENVIRONMENT_CLASS_IDS_FIELD_NUMBER: _ClassVar[int]
        project_ids: _containers.RepeatedScalarFieldContainer[str]
        environment_class_ids: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, project_ids: _Optional[_Iterable[str]] = ..., environment_class_ids: _Optional[_Iterable[str]] = ...) -> None: ...
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationRequest
    filter: ListWarmPoolsRequest.Filter
    def __init__(self, pagination: _Optional[_Union[PaginationRequest, _Mapping]] = ..., filter: _Optional[_Union[ListWarmPoolsRequest.Filter, _Mapping]] = ...) -> None: ...

class ListWarmPoolsResponse(_message.Message):
    __slots__ = ("pagination", "warm_pools")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    WARM_POOLS_FIELD_NUMBER: _ClassVar[int]
    pagination: PaginationResponse
    warm_pools: _containers.RepeatedCompositeFieldContainer[WarmPool]
    def __init__(self, pagination: _Optional[_Union[PaginationResponse, _Mapping]] = ..., warm_pools: _Optional[_Iterable[_Union[WarmPool, _Mapping]]] = ...) -> None: ...

class PaginationRequest(_message.Message):
    __slots__ = ("page_size", "token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    token: str
    def __init__(self, page_size: _Optional[int] = ..., token: _Optional[str] = ...) -> None: ...

class PaginationResponse(_message.Message):
    __slots__ = ("next_token",)
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    next_token: str
    def __init__(self, next_token: _Optional[str] = ...) -> None: ...

class Prebuild(_message.Message):
    __slots__ = ("id", "metadata", "spec", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    metadata: PrebuildMetadata
    spec: PrebuildSpec
    status: PrebuildStatus
    def __init__(self, id: _Optional[str] = ..., metadata: _Optional[_Union[PrebuildMetadata, _Mapping]] = ..., spec: _Optional[_Union[PrebuildSpec, _Mapping]] = ..., status: _Optional[_Union[PrebuildStatus, _Mapping]] = ...) -> None: ...

class PrebuildMetadata(_message.Message):
    __slots__ = ("organization_id", "project_id", "environment_class_id", "creator", "created_at", "updated_at", "triggered_by", "executor")
    class PrebuildTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PREBUILD_TRIGGER_UNSPECIFIED: _ClassVar[PrebuildMetadata.PrebuildTrigger]
        PREBUILD_TRIGGER_MANUAL: _ClassVar[PrebuildMetadata.PrebuildTrigger]
        PREBUILD_TRIGGER_SCHEDULED: _ClassVar[PrebuildMetadata.PrebuildTrigger]
    PREBUILD_TRIGGER_UNSPECIFIED: PrebuildMetadata.PrebuildTrigger
    PREBUILD_TRIGGER_MANUAL: PrebuildMetadata.PrebuildTrigger
    PREBUILD_TRIGGER_SCHEDULED: PrebuildMetadata.PrebuildTrigger
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRIGGERED_BY_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    organization_id: str
    project_id: str
    environment_class_id: str
    creator: Subject
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    triggered_by: PrebuildMetadata.PrebuildTrigger
    executor: Subject
    def __init__(self, organization_id: _Optional[str] = ..., project_id: _Optional[str] = ..., environment_class_id: _Optional[str] = ..., creator: _Optional[_Union[Subject, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., triggered_by: _Optional[_Union[PrebuildMetadata.PrebuildTrigger, str]] = ..., executor: _Optional[_Union[Subject, _Mapping]] = ...) -> None: ...

class PrebuildSpec(_message.Message):
    __slots__ = ("spec_version", "desired_phase", "timeout")
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_PHASE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    spec_version: int
    desired_phase: PrebuildPhase
    timeout: _duration_pb2.Duration
    def __init__(self, spec_version: _Optional[int] = ..., desired_phase: _Optional[_Union[PrebuildPhase, str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PrebuildStatus(_message.Message):
    __slots__ = ("phase", "completion_time", "failure_message", "log_url", "environment_id", "status_version", "warning_message", "snapshot_completion_percentage", "snapshot_size_bytes")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TIME_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOG_URL_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    WARNING_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COMPLETION_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    phase: PrebuildPhase
    completion_time: _timestamp_pb2.Timestamp
    failure_message: str
    log_url: str
    environment_id: str
    status_version: int
    warning_message: str
    snapshot_completion_percentage: int
    snapshot_size_bytes: int
    def __init__(self, phase: _Optional[_Union[PrebuildPhase, str]] = ..., completion_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failure_message: _Optional[str] = ..., log_url: _Optional[str] = ..., environment_id: _Optional[str] = ..., status_version: _Optional[int] = ..., warning_message: _Optional[str] = ..., snapshot_completion_percentage: _Optional[int] = ..., snapshot_size_bytes: _Optional[int] = ...) -> None: ...

class PrebuildTrigger(_message.Message):
    __slots__ = ("daily_schedule",)
    class DailySchedule(_message.Message):
        __slots__ = ("hour_utc",)
        HOUR_UTC_FIELD_NUMBER: _ClassVar[int]
        hour_utc: int
        def __init__(self, hour_utc: _Optional[int] = ...) -> None: ...
    DAILY_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    daily_schedule: PrebuildTrigger.DailySchedule
    def __init__(self, daily_schedule: _Optional[_Union[PrebuildTrigger.DailySchedule, _Mapping]] = ...) -> None: ...

class Project(_message.Message):
    __slots__ = ("id", "metadata", "initializer", "environment_class", "devcontainer_file_path", "environment_classes", "used_by", "automations_file_path", "technical_description", "prebuild_configuration", "desired_phase", "recommended_editors")
    class UsedBy(_message.Message):
        __slots__ = ("subjects", "total_subjects")
        SUBJECTS_FIELD_NUMBER: _ClassVar[int]
        TOTAL_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
        subjects: _containers.RepeatedCompositeFieldContainer[Subject]
        total_subjects: int
        def __init__(self, subjects: _Optional[_Iterable[_Union[Subject, _Mapping]]] = ..., total_subjects: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEVCONTAINER_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASSES_FIELD_NUMBER: _ClassVar[int]
    USED_BY_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIONS_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    TECHNICAL_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PREBUILD_CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_PHASE_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_EDITORS_FIELD_NUMBER: _ClassVar[int]
    id: str
    metadata: ProjectMetadata
    initializer: EnvironmentInitializer
    environment_class: ProjectEnvironmentClass
    devcontainer_file_path: str
    environment_classes: _containers.RepeatedCompositeFieldContainer[ProjectEnvironmentClass]
    used_by: Project.UsedBy
    automations_file_path: str
    technical_description: str
    prebuild_configuration: ProjectPrebuildConfiguration
    desired_phase: ProjectPhase
    recommended_editors: RecommendedEditors
    def __init__(self, id: _Optional[str] = ..., metadata: _Optional[_Union[ProjectMetadata, _Mapping]] = ..., initializer: _Optional[_Union[EnvironmentInitializer, _Mapping]] = ..., environment_class: _Optional[_Union[ProjectEnvironmentClass, _Mapping]] = ..., devcontainer_file_path: _Optional[str] = ..., environment_classes: _Optional[_Iterable[_Union[ProjectEnvironmentClass, _Mapping]]] = ..., used_by: _Optional[_Union[Project.UsedBy, _Mapping]] = ..., automations_file_path: _Optional[str] = ..., technical_description: _Optional[str] = ..., prebuild_configuration: _Optional[_Union[ProjectPrebuildConfiguration, _Mapping]] = ..., desired_phase: _Optional[_Union[ProjectPhase, str]] = ..., recommended_editors: _Optional[_Union[RecommendedEditors, _Mapping]] = ...) -> None: ...

class ProjectEnvironmentClass(_message.Message):
    __slots__ = ("local_runner", "environment_class_id", "order")
    LOCAL_RUNNER_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    local_runner: bool
    environment_class_id: str
    order: int
    def __init__(self, local_runner: _Optional[bool] = ..., environment_class_id: _Optional[str] = ..., order: _Optional[int] = ...) -> None: ...

class ProjectMetadata(_message.Message):
    __slots__ = ("organization_id", "name", "creator", "created_at", "updated_at")
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    organization_id: str
    name: str
    creator: Subject
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, organization_id: _Optional[str] = ..., name: _Optional[str] = ..., creator: _Optional[_Union[Subject, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProjectPrebuildConfiguration(_message.Message):
    __slots__ = ("enabled", "environment_class_ids", "timeout", "trigger", "executor", "enable_jetbrains_warmup")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASS_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ENABLE_JETBRAINS_WARMUP_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    environment_class_ids: _containers.RepeatedScalarFieldContainer[str]
    timeout: _duration_pb2.Duration
    trigger: PrebuildTrigger
    executor: Subject
    enable_jetbrains_warmup: bool
    def __init__(self, enabled: _Optional[bool] = ..., environment_class_ids: _Optional[_Iterable[str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trigger: _Optional[_Union[PrebuildTrigger, _Mapping]] = ..., executor: _Optional[_Union[Subject, _Mapping]] = ..., enable_jetbrains_warmup: _Optional[bool] = ...) -> None: ...

class RecommendedEditors(_message.Message):
    __slots__ = ("editors",)
    class EditorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: EditorVersions
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[EditorVersions, _Mapping]] = ...) -> None: ...
    EDITORS_FIELD_NUMBER: _ClassVar[int]
    editors: _containers.MessageMap[str, EditorVersions]
    def __init__(self, editors: _Optional[_Mapping[str, EditorVersions]] = ...) -> None: ...

class Sort(_message.Message):
    __slots__ = ("field", "order")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    field: str
    order: SortOrder
    def __init__(self, field: _Optional[str] = ..., order: _Optional[_Union[SortOrder, str]] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("id", "principal")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    principal: Principal
    def __init__(self, id: _Optional[str] = ..., principal: _Optional[_Union[Principal, str]] = ...) -> None: ...

class UpdateEnvironmentClassRequest(_message.Message):
    __slots__ = ("environment_class_id", "display_name", "description", "enabled")
    ENVIRONMENT_CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    environment_class_id: str
    display_name: str
    description: str
    enabled: bool
    def __init__(self, environment_class_id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class UpdateEnvironmentClassResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateProjectEnvironmentClassesRequest(_message.Message):
    __slots__ = ("project_id", "project_environment_classes")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ENVIRONMENT_CLASSES_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    project_environment_classes: _containers.RepeatedCompositeFieldContainer[ProjectEnvironmentClass]
    def __init__(self, project_id: _Optional[str] = ..., project_environment_classes: _Optional[_Iterable[_Union[ProjectEnvironmentClass, _Mapping]]] = ...) -> None: ...

class UpdateProjectEnvironmentClassesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateProjectRequest(_message.Message):
    __slots__ = ("project_id", "name", "initializer", "devcontainer_file_path", "automations_file_path", "technical_description", "prebuild_configuration", "recommended_editors")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    DEVCONTAINER_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIONS_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    TECHNICAL_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PREBUILD_CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_EDITORS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    name: str
    initializer: EnvironmentInitializer
    devcontainer_file_path: str
    automations_file_path: str
    technical_description: str
    prebuild_configuration: ProjectPrebuildConfiguration
    recommended_editors: RecommendedEditors
    def __init__(self, project_id: _Optional[str] = ..., name: _Optional[str] = ..., initializer: _Optional[_Union[EnvironmentInitializer, _Mapping]] = ..., devcontainer_file_path: _Optional[str] = ..., automations_file_path: _Optional[str] = ..., technical_description: _Optional[str] = ..., prebuild_configuration: _Optional[_Union[ProjectPrebuildConfiguration, _Mapping]] = ..., recommended_editors: _Optional[_Union[RecommendedEditors, _Mapping]] = ...) -> None: ...

class UpdateProjectResponse(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: Project
    def __init__(self, project: _Optional[_Union[Project, _Mapping]] = ...) -> None: ...

class UpdateWarmPoolRequest(_message.Message):
    __slots__ = ("warm_pool_id", "desired_size", "min_size", "max_size")
    WARM_POOL_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    warm_pool_id: str
    desired_size: int
    min_size: int
    max_size: int
    def __init__(self, warm_pool_id: _Optional[str] = ..., desired_size: _Optional[int] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...

class UpdateWarmPoolResponse(_message.Message):
    __slots__ = ("warm_pool",)
    WARM_POOL_FIELD_NUMBER: _ClassVar[int]
    warm_pool: WarmPool
    def __init__(self, warm_pool: _Optional[_Union[WarmPool, _Mapping]] = ...) -> None: ...

class WarmPool(_message.Message):
    __slots__ = ("id", "metadata", "spec", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    metadata: WarmPoolMetadata
    spec: WarmPoolSpec
    status: WarmPoolStatus
    def __init__(self, id: _Optional[str] = ..., metadata: _Optional[_Union[WarmPoolMetadata, _Mapping]] = ..., spec: _Optional[_Union[WarmPoolSpec, _Mapping]] = ..., status: _Optional[_Union[WarmPoolStatus, _Mapping]] = ...) -> None: ...

class WarmPoolMetadata(_message.Message):
    __slots__ = ("organization_id", "project_id", "environment_class_id", "runner_id", "created_at", "updated_at")
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    organization_id: str
    project_id: str
    environment_class_id: str
    runner_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, organization_id: _Optional[str] = ..., project_id: _Optional[str] = ..., environment_class_id: _Optional[str] = ..., runner_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WarmPoolSpec(_message.Message):
    __slots__ = ("spec_version", "desired_size", "snapshot_id", "desired_phase", "min_size", "max_size")
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_SIZE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_PHASE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    spec_version: int
    desired_size: int
    snapshot_id: str
    desired_phase: WarmPoolPhase
    min_size: int
    max_size: int
    def __init__(self, spec_version: _Optional[int] = ..., desired_size: _Optional[int] = ..., snapshot_id: _Optional[str] = ..., desired_phase: _Optional[_Union[WarmPoolPhase, str]] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...

class WarmPoolStatus(_message.Message):
    __slots__ = ("phase", "failure_message", "status_version", "running_instances", "stopped_instances", "desired_size")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    STOPPED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    DESIRED_SIZE_FIELD_NUMBER: _ClassVar[int]
    phase: WarmPoolPhase
    failure_message: str
    status_version: int
    running_instances: int
    stopped_instances: int
    desired_size: int
    def __init__(self, phase: _Optional[_Union[WarmPoolPhase, str]] = ..., failure_message: _Optional[str] = ..., status_version: _Optional[int] = ..., running_instances: _Optional[int] = ..., stopped_instances: _Optional[int] = ..., desired_size: _Optional[int] = ...) -> None: ...
