"""The providers' typed runner settings and templates: what a tenant may ask of each provider, and no more.

Every model refuses unknown keys. What a tenant must never choose (a command run on our hosts, a file
path, cluster credentials) is not a field: it is operator configuration (config.settings.ProvidersSettings),
merged in by workers.providers.catalog when an adapter is built. URLs must be http(s) to a host on the
operator's allow-list; secrets are `SecretStr` fields (stored encrypted) or `token_env`, the name of an
operator-set variable matching WARMPOOL_PROVIDER_SECRET_*.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

if TYPE_CHECKING:
    from config.settings import ProvidersSettings

TOKEN_ENV_RE = re.compile(r"^WARMPOOL_PROVIDER_SECRET_[A-Z0-9_]+$")
METRO_CODE_RE = re.compile(r"^[a-z]{2,8}[0-9]{0,3}$")
HOST_NAMESPACES = ("host_network", "hostNetwork", "host_pid", "hostPID", "host_ipc", "hostIPC", "privileged",
                   "security_context", "securityContext", "host_path", "hostPath")
# Annotations that loosen a container's confinement (AppArmor, seccomp) are not a tenant's to set.
CONFINEMENT_ANNOTATIONS = ("container.apparmor.security.beta.kubernetes.io/", "seccomp.security.alpha.kubernetes.io/",
                           "container.seccomp.security.alpha.kubernetes.io/")


def _operator() -> ProvidersSettings:
    from config.settings import get_settings

    return get_settings().providers


# ---- outbound URLs ------------------------------------------------------------------------------

def host_allowed(host: str, port: int | None, allowed: list[str]) -> bool:
    """`host[:port]` against entries `host`, `host:port` or `*.domain` (any subdomain, not the domain itself)."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.strip().lower()
        if not entry:
            continue
        parts = urlsplit("//" + entry)
        try:
            want_host, want_port = (parts.hostname or "").rstrip("."), parts.port
        except ValueError:
            continue
        if want_port is not None and want_port != port:
            continue
        if want_host.startswith("*."):
            if host.endswith(want_host[1:]) and host != want_host[2:]:
                return True
        elif host == want_host:
            return True
    return False


def check_url(value: str) -> str:
    """An http(s) URL to an allowed host, with no credentials in it; the error names the host, never the URL."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("must not carry credentials (use a secret field or token_env)")
    try:
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    allowed = _operator().allowed_hosts
    if not host or not host_allowed(host, port or (443 if parts.scheme == "https" else 80), allowed):
        shown = f"{host}:{port}" if port else host
        raise ValueError(f"host {shown!r} is not on this deployment's allow-list "
                         f"({', '.join(allowed) or 'empty'}; WARMPOOL_PROVIDERS__ALLOWED_HOSTS)")
    return value.strip()


AllowedUrl = Annotated[str, Field(max_length=2048), AfterValidator(check_url)]


def _token_env(value: str | None) -> str | None:
    if value is not None and not TOKEN_ENV_RE.match(value):
        raise ValueError("must name an environment variable matching WARMPOOL_PROVIDER_SECRET_* (upper case); "
                         "the operator sets it on the workers")
    return value


TokenEnv = Annotated[str | None, Field(None, max_length=128), AfterValidator(_token_env)]


# ---- bases ----------------------------------------------------------------------------------------

class RunnerSettingsModel(BaseModel):
    """A provider's runner settings. `operator_only` maps keys tenants may not set to where operators do."""

    model_config = ConfigDict(extra="forbid", str_max_length=1024)
    operator_only: ClassVar[dict[str, str]] = {}


class TemplateModel(BaseModel):
    """What every instance of a pool is made from. Keys every provider accepts: image and zone."""

    model_config = ConfigDict(extra="forbid", str_max_length=4096)
    operator_only: ClassVar[dict[str, str]] = {}

    image: str = Field("", max_length=512, description="image or OCI reference (unused by local)")
    zone: str = Field("", max_length=64, description="zone reported to lease clients")


class PodFields(TemplateModel):
    """A pod pool's template (openYuanrong): pod fields, already shaped by the pod-pool façade. Providers
    other than kubernetes keep them as data and ignore what they cannot use."""

    init_image: str = Field("", max_length=512)
    resources: dict[str, dict[str, str]] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    runtime_class_name: str = Field("", max_length=64)
    pod_pending_duration_threshold: int = Field(0, ge=0, le=86400)
    volumes: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    affinity: dict[str, Any] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    topology_spread_constraints: list[dict[str, Any]] = Field(default_factory=list, max_length=16)


# ---- fake -------------------------------------------------------------------------------------------

Ms = Annotated[float, Field(ge=0, le=600_000)]
Rate = Annotated[float, Field(ge=0, le=1)]


class FakeSettings(RunnerSettingsModel):
    namespace: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="which simulated cloud")
    boot_ms: Ms | None = None
    start_ms: Ms | None = None
    stop_ms: Ms | None = None
    delete_ms: Ms | None = None
    snapshot_ms: Ms | None = None
    reset_ms: Ms | None = None
    fail_create: Rate | None = None
    fail_start: Rate | None = None
    fail_stop: Rate | None = None
    fail_delete: Rate | None = None
    fail_snapshot: Rate | None = None
    fail_reset: Rate | None = None
    fail_create_permanent: bool | None = None
    fail_start_permanent: bool | None = None
    fail_stop_permanent: bool | None = None
    fail_delete_permanent: bool | None = None
    fail_snapshot_permanent: bool | None = None
    fail_reset_permanent: bool | None = None
    snapshots_broken: bool | None = None
    seed: int | None = None


class FakeTemplate(PodFields):
    """The fake runs nothing: a template is data it records, so any key is kept."""

    model_config = ConfigDict(extra="allow", str_max_length=4096)


# ---- local ------------------------------------------------------------------------------------------

LOCAL_COMMAND = ("the local provider's process command is operator configuration "
                 "(WARMPOOL_PROVIDERS__LOCAL__COMMAND), never a runner setting or a template")


class LocalSettings(RunnerSettingsModel):
    operator_only: ClassVar[dict[str, str]] = {
        "command": LOCAL_COMMAND, "root": "where local instances live is operator configuration (WARMPOOL_DATA_DIR)"}

    ready_timeout: float = Field(15, gt=0, le=300, description="seconds to wait for the instance's port")


class LocalTemplate(PodFields):
    operator_only: ClassVar[dict[str, str]] = {"command": LOCAL_COMMAND, "args": LOCAL_COMMAND}


# ---- unikraft ---------------------------------------------------------------------------------------

Seconds = Annotated[int, Field(ge=0, le=3600)]


class UnikraftSettings(RunnerSettingsModel):
    metro: str = Field("fra", max_length=2048, description="metro code (fra, dal…) or an allowed https URL")
    token: SecretStr | None = Field(None, description="API token, stored encrypted; or token_env")
    token_env: TokenEnv
    default_memory_mb: int | None = Field(None, ge=16, le=1 << 20)
    default_vcpus: int | None = Field(None, ge=1, le=256)
    stopped_tier: Literal["standby", "stopped"] | None = None
    standby_boot: bool | None = None
    drain_timeout_ms: int | None = Field(None, ge=-1, le=3_600_000)
    start_timeout_s: Seconds | None = None
    stop_timeout_s: Seconds | None = None
    snapshot_kind: Literal["checkpoint", "template"] | None = None
    snapshot_timeout_s: Seconds | None = None
    timeout_s: float | None = Field(None, gt=0, le=600)
    name_prefix: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,15}$")
    page_size: int | None = Field(None, ge=1, le=1000)

    @field_validator("metro")
    @classmethod
    def _metro(cls, value: str) -> str:
        value = value.strip()
        if METRO_CODE_RE.match(value):
            check_url(f"https://api.{value}.unikraft.cloud")  # what the SDK's metro_base_url makes of a code
            return value
        if "://" not in value:
            raise ValueError("must be a metro code (fra, dal, sin…) or an http(s) URL")
        return check_url(value)

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> UnikraftSettings:
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        return self


class UnikraftTemplate(PodFields):
    """unikraft_template.py documents the keys; each takes its typed or its flat-string (Gitpod) spelling."""

    args: list[str] | str | None = None
    env: dict[str, str] | str | None = None
    memory_mb: int | str | None = None
    memory: int | str | None = None
    vcpus: int | str | None = None
    ports: list[int | str | dict[str, Any]] | int | str | None = None
    domains: list[str] | str | None = None
    service_group: str | dict[str, Any] | None = None
    scale_to_zero: str | dict[str, Any] | None = None
    scale_to_zero_stateful: bool | str | None = None
    scale_to_zero_cooldown_ms: int | str | None = None
    scale_to_zero_notify_ms: int | str | None = None
    restart_policy: Literal["never", "always", "on-failure"] | None = None
    features: list[str] | str | None = None
    tags: list[str] | str | None = None
    unikraft: dict[str, Any] | str | None = None

    @model_validator(mode="after")
    def _builds(self) -> UnikraftTemplate:
        """The template must translate into a create request (the same parser the adapter runs)."""
        from workers.providers.base import InstanceSpec, ProviderPermanent
        from workers.providers.unikraft_template import create_body

        data = self.model_dump(exclude_none=True)
        spec = InstanceSpec("check", "check", "check", template=data,
                            snapshot_id=None if data.get("image") else "template:check")
        try:
            create_body(spec, name="check", start=True, start_timeout_s=0, default_memory_mb=None, default_vcpus=None,
                        snapshot_kind="template")
        except ProviderPermanent as exc:
            raise ValueError(str(exc).removeprefix("pool template: ")) from None
        return self


# ---- kubernetes ---------------------------------------------------------------------------------

class KubernetesSettings(RunnerSettingsModel):
    operator_only: ClassVar[dict[str, str]] = {
        key: f"the cluster connection is operator configuration (WARMPOOL_PROVIDERS__KUBERNETES__{key.upper()})"
        for key in ("kubeconfig", "context", "in_cluster", "service_account")}

    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    request_timeout_s: float | None = Field(None, gt=0, le=300)
    delete_grace_s: int | None = Field(None, ge=0, le=3600)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None

    @field_validator("namespace")
    @classmethod
    def _allowed_namespace(cls, value: str) -> str:
        allowed = _operator().kubernetes.namespaces
        if value not in allowed:
            raise ValueError(f"namespace {value!r} is not offered here (allowed: {', '.join(allowed) or 'none'}; "
                             "WARMPOOL_PROVIDERS__KUBERNETES__NAMESPACES)")
        return value


class KubernetesTemplate(PodFields):
    operator_only: ClassVar[dict[str, str]] = {
        key: "pods never get host namespaces, privileges or host paths from a template" for key in HOST_NAMESPACES}

    command: list[str] | None = Field(None, max_length=256, description="the container's entrypoint (runs in the pod)")
    args: list[str] | None = Field(None, max_length=256)

    @field_validator("volumes")
    @classmethod
    def _volume_types(cls, volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        allowed = _operator().kubernetes.volume_types
        for n, volume in enumerate(volumes):
            sources = [k for k in volume if k != "name"]
            refused = [k for k in sources if k not in allowed]
            if refused or len(sources) != 1:
                what = f"{refused[0]} volumes are" if refused else "a volume needs exactly one source and is"
                raise ValueError(f"volumes[{n}] ({volume.get('name', '?')!r}): {what} not allowed on this deployment "
                                 f"(allowed volume types: {', '.join(allowed) or 'none'}; "
                                 "WARMPOOL_PROVIDERS__KUBERNETES__VOLUME_TYPES)")
        return volumes

    @field_validator("annotations")
    @classmethod
    def _confinement(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            if key.startswith(CONFINEMENT_ANNOTATIONS):
                raise ValueError(f"annotation {key!r} would change the container's confinement; it is not allowed")
        return annotations
