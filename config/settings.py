"""The one Settings object: every knob warmpool reads, grouped per subsystem, WARMPOOL_ env prefix."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_FLOWER_PASSWORD = "warmpool-dev"
# Database passwords refused under WARMPOOL_ENV=prod: docker-compose.yml's fallback and the usual guesses.
DEFAULT_DATABASE_PASSWORDS = frozenset({"change-me", "changeme", "postgres", "password"})


def database_password(url: str) -> str | None:
    """The password in a database URL (None if it has none or does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except ArgumentError:
        return None


class GitpodSettings(BaseModel):
    """Limits of the Gitpod/Ona warm-pool façade (upstream's own bounds)."""

    max_pool_size: int = Field(20, description="Upper bound of minSize/maxSize on a Gitpod warm pool.")
    default_page_size: int = Field(25, description="Page size when a list request gives none.")
    max_page_size: int = Field(100, description="Largest page size a list request may ask for.")


class PoolDefaults(BaseModel):
    """Defaults a new pool gets when its façade says nothing."""

    lease_default_seconds: int = Field(1800, description="Lease duration when the caller asks for none.")
    lease_max_seconds: int = Field(86400, description="Longest lease a pool grants; longer asks are clamped.")
    reservation_ttl_seconds: int = Field(300, description="How long a queued reservation lives after its last Lease call.")
    rotation_max_surge: int = Field(2, description="Extra instances allowed above max_size while rotating to a new snapshot.")
    stopped_tier_size: int = Field(0, description="Stopped (backfill) instances kept behind the running ones.")
    idle_recycle_scaled_seconds: int = Field(300, description="Instances above the running target idle this long are "
                                             "stopped or deleted (-1: never).")


class EngineSettings(BaseModel):
    """The reconciler, the event applier and the beat sweeps."""

    reconcile_interval_seconds: float = Field(15.0, description="Beat interval of the reconcile sweep.")
    rotation_interval_seconds: float = Field(30.0, description="Beat interval of the snapshot rotation sweep.")
    lease_expiry_interval_seconds: float = Field(5.0, description="Beat interval of the lease/reservation expiry sweep.")
    orphan_interval_seconds: float = Field(60.0, description="Beat interval of orphan collection.")
    schedule_interval_seconds: float = Field(15.0, description="Beat interval of scheduled sizing: a firing (or a "
                                             "schedule change) takes effect within this long.")
    schedule_batch: int = Field(500, description="Most due pool schedules one scheduled-sizing pass applies.")
    failure_threshold: int = Field(3, description="Consecutive provider failures before a pool is DEGRADED.")
    backoff_base_seconds: float = Field(2.0, description="First backoff after a failure; doubles each time.")
    backoff_max_seconds: float = Field(120.0, description="Longest backoff between creation attempts.")
    events_stream: str = Field("warmpool:events", description="Redis Stream carrying instance events.")
    events_group: str = Field("appliers", description="Consumer group of the event appliers.")
    events_max_deliveries: int = Field(5, description="Deliveries before an event goes to the dead-letter stream.")
    events_claim_idle_ms: int = Field(30000, description="Idle time after which a dead consumer's entries are reclaimed.")
    events_dead_consumer_ms: int = Field(300000, description="A consumer of the applier group idle this long with "
                                         "nothing pending is a dead applier's and is removed from the group.")
    events_retry_max_seconds: float = Field(5.0, description="Longest backoff of the applier while Redis or the "
                                            "database is unreachable.")
    events_batch: int = Field(500, ge=1, le=10000, description="Most events the applier reads (XREADGROUP COUNT) and "
                              "applies in one transaction.")
    broker_visibility_seconds: int = Field(30, description="Redis broker visibility timeout: a task a dead worker "
                                           "held is delivered again this long after it was taken. Every task "
                                           "countdown is kept below it (longer waits live in Postgres columns).")
    stuck_after_seconds: float = Field(30.0, description="An instance whose observed state lags its desired state "
                                       "this long gets its provider task enqueued again (tasks are idempotent).")
    sweep_batch: int = Field(500, description="Most pools one reconcile sweep enqueues.")
    sweep_per_org: int = Field(25, description="Most pools of one organization a reconcile sweep enqueues, so one "
                               "tenant's many pools cannot crowd out another's.")
    sweep_backstop_seconds: float = Field(600.0, description="The reconcile sweep passes over pools that need work "
                                          "(app.domain.sweep); a pool not reconciled for this long gets a pass "
                                          "anyway, the level-triggered backstop.")
    sweep_backstop_batch: int = Field(50, description="Most backstop passes (pools chosen only for their age) one "
                                      "reconcile sweep enqueues, the oldest first.")
    inflight_reconcile_seconds: float = Field(60.0, description="How long a queued reconcile_pool holds its pool's "
                                              "dedupe key (no second one is enqueued meanwhile); a lost task delays "
                                              "the sweep's re-enqueue this long at most.")
    inflight_provider_seconds: float = Field(120.0, description="How long a provider task holds its (instance, "
                                             "operation) dedupe key, refreshed when it starts and when it retries.")
    provider_retries: int = Field(5, description="Retries of a transient provider error before the instance fails.")
    worker_concurrency: int = Field(32, description="Threads of the `provider` queue worker (provider calls block).")
    provision_batch: int = Field(100, description="Instances one `provision_instances` task creates with one batched "
                                 "provider call (a batch endpoint, or concurrent creates); 1: one task per instance.")
    reconcile_pace: float = Field(3.0, ge=0, description="A pool's reconcile passes asked by writes start at least "
                                  "this many times its last pass's duration apart (workers.pacing): a burst of "
                                  "leases on a big pool gets a few passes, each replacing all taken since, not "
                                  "passes back to back; 0: no pacing.")
    reconcile_pace_max_seconds: float = Field(0.5, ge=0, description="The longest a pool's reconcile pass waits for "
                                              "its pace.")
    nice: int = Field(0, ge=0, le=19, description="Niceness `warmpool worker`, `events`, `observe` and `beat` "
                      "run at (never `api`), with their PostgreSQL backends where the server runs on the same host: on "
                      "a host they share with the api, refills and sweeps yield the CPU to the latency-critical Lease "
                      "path; 0: the scheduler's default.")


class QuotaSettings(BaseModel):
    """Per-organization limits every tenant gets unless the operator sets its own (`warmpool quota set`)."""

    max_pool_size: int = Field(100, description="Largest min/max/stopped size of any one pool.")
    max_pools: int = Field(200, description="Live (not deleted) pools an organization may have.")
    max_instances: int = Field(1000, description="Instances an organization may hold: the live pools' max sizes "
                               "(plus stopped tiers) must fit, and the reconciler creates none beyond it.")
    max_pools_per_request: int = Field(100, description="Pod pools one openYuanrong create request may carry; "
                                       "a larger request is refused whole.")
    max_creating: int = Field(10, description="Instances of the organization being created at once (requested, or "
                              "provisioning at the provider). Creates go out as batched provider calls, so a wave costs "
                              "one task; its landings, about two events each, queue on the event stream every tenant "
                              "shares: a wave delays another tenant's events by about 2 x max_creating applies.")
    lease_rate: int = Field(0, description="Lease calls per second the organization may make (a token bucket in "
                            "Redis, shared by every API process); 0: no limit. A refused call is answered like an "
                            "exhausted pool: 429 with Retry-After, or RESOURCE_EXHAUSTED with the hint.")
    lease_burst: int = Field(0, description="Lease calls the organization may make at once above its rate (the "
                             "bucket's size); 0: one second's worth of the rate.")


class ObserverSettings(BaseModel):
    """`warmpool observe`: one observer per runner, sharded between replicas by a Redis lease per runner."""

    lease_ms: int = Field(10000, description="Time-to-live of a replica's Redis lease on a runner; another replica "
                                             "takes the runner over this long after the holder stops renewing.")
    renew_seconds: float = Field(2.0, description="How often a replica renews its leases on runners.")
    discover_seconds: float = Field(0.5, description="How often a replica looks for runners nobody observes.")
    poll_seconds: float = Field(5.0, description="Poll interval of providers without a watch when nothing is on its way.")
    poll_fast_seconds: float = Field(0.5, description="Poll interval while an instance is provisioning, starting or stopping.")
    local_list_seconds: float = Field(1.0, description="The local provider's periodic re-list (process exits are seen at once).")


class FlowerSettings(BaseModel):
    """Celery's Flower dashboard."""

    port: int = Field(5555, description="Port Flower listens on.")
    address: str = Field("127.0.0.1", description="Address Flower binds to.")
    user: str = Field("admin", description="Basic-auth user of Flower.")
    password: SecretStr = Field(SecretStr(DEV_FLOWER_PASSWORD),
                                description="Basic-auth password of Flower; must be changed outside dev.")


class InputSettings(BaseModel):
    """Input hygiene and request size limits, the same at every façade (app/api/hygiene.py, app/api/edge.py)."""

    max_body_bytes: int = Field(1_048_576, description="Largest request body any HTTP façade (Connect, pod pools, "
                                "/v1) reads, checked from Content-Length and while streaming; larger is refused.")
    max_grpc_message_bytes: int = Field(1_048_576, description="Largest gRPC request message (grpc.max_receive_message_length).")
    max_json_depth: int = Field(32, description="Deepest nesting of JSON objects and arrays (and protobuf messages) "
                                "a request may carry.")


# ---- providers: which compute this deployment offers (operator configuration, never tenant data) ----

def _comma_list(value: Any) -> Any:
    """A list setting from the environment: "a,b" or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class LocalProviderSettings(BaseModel):
    """The `local` provider (dev only): what its instance processes run."""

    command: str = Field("", description="Command line of every local instance process, {port} and {dir} filled in "
                         "(empty: python -m http.server on {port}, serving the instance's files). Operator "
                         "configuration only: no runner setting or template can set it.")
    pass_env: CommaList = Field(default_factory=list, description="Extra environment variable names passed to "
                                "instance processes (besides PATH, HOME, LANG, TZ…); WARMPOOL_* never are.")

    _split = field_validator("pass_env", mode="before")(lambda cls, v: _comma_list(v))


class KubernetesProviderSettings(BaseModel):
    """The `kubernetes` provider: which cluster, and what a tenant's pod template may ask for."""

    kubeconfig: str = Field("", description="Path of the kubeconfig file (empty: $KUBECONFIG or ~/.kube/config).")
    context: str = Field("", description="Context of the kubeconfig to use (empty: its current context).")
    in_cluster: bool = Field(False, description="Use the service account of the pod warmpool runs in.")
    service_account: str = Field("", description="Service account of tenant pods (empty: the namespace's default).")
    namespaces: CommaList = Field(default_factory=lambda: ["default"],
                                  description="Namespaces a kubernetes runner may use (comma-separated).")
    volume_types: CommaList = Field(
        default_factory=lambda: ["emptyDir", "configMap", "downwardAPI"],
        description="Volume sources a pod template may use (comma-separated); hostPath, secret and the rest "
                    "are refused unless listed here.")

    _split = field_validator("namespaces", "volume_types", mode="before")(lambda cls, v: _comma_list(v))


class ProvidersSettings(BaseModel):
    """Which providers this deployment offers, where they may connect, and their operator-only settings."""

    enabled: CommaList = Field(default_factory=lambda: ["fake", "local", "unikraft", "kubernetes"],
                               description="Providers tenants may create runners of (comma-separated); "
                                           "`local` is offered only when WARMPOOL_ENV=dev.")
    allowed_hosts: CommaList = Field(
        default_factory=lambda: ["*.unikraft.cloud"],
        description="Hosts a runner's URLs may point at (comma-separated): `host`, `host:port` or `*.domain`. "
                    "Anything else, and any scheme but http(s), is refused.")
    local: LocalProviderSettings = Field(default_factory=LocalProviderSettings,
                                         description="The local provider (WARMPOOL_PROVIDERS__LOCAL__*).")
    kubernetes: KubernetesProviderSettings = Field(default_factory=KubernetesProviderSettings,
                                                   description="The kubernetes provider (WARMPOOL_PROVIDERS__KUBERNETES__*).")

    _split = field_validator("enabled", "allowed_hosts", mode="before")(lambda cls, v: _comma_list(v))


class Settings(BaseSettings):
    """warmpool configuration, read from WARMPOOL_* environment variables and an optional .env file.

    Nested groups use a double underscore: WARMPOOL_ENGINE__FAILURE_THRESHOLD=5.
    """

    model_config = SettingsConfigDict(
        env_prefix="WARMPOOL_", env_nested_delimiter="__", env_file=".env", extra="ignore",
        hide_input_in_errors=True,  # a refusal must not echo the values it saw: URLs and keys hold secrets
    )

    env: str = Field("dev", description="dev | test | prod. Outside dev, default secrets are refused.")
    database_url: str = Field(
        "sqlite:///.data/warmpool.sqlite3",
        description="SQLAlchemy URL of the database. PostgreSQL (postgresql+psycopg://…) in production; "
        "SQLite is the embedded default of `warmpool dev`.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL: Celery broker, event stream, wake-ups.")
    http_host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    http_port: int = Field(8080, description="Port of the HTTP server (Connect, REST, metrics, health).")
    grpc_port: int = Field(50051, description="Port of the gRPC server (VMPoolLeaseService, health, reflection).")
    api_workers: int = Field(0, description="Processes of `warmpool api`, each serving HTTP and gRPC on the same "
                             "ports (the lease path is CPU-bound in Python: about one per core). 0: one per core, "
                             "except under WARMPOOL_ENV=dev or test, or on SQLite (one).")
    data_dir: Path = Field(Path(".data"), description="Where local state lives (SQLite file, local provider instances).")
    log_level: str = Field("INFO", description="Root log level.")
    db_pool_size: int = Field(10, description="Connections kept per process in the SQLAlchemy pool.")
    lease_db_concurrency: int = Field(2, ge=1, description="Units of work (Lease, Return, ExtendTo, GetLease) each "
                                      "event loop of `warmpool api` runs on PostgreSQL at once; the others wait their "
                                      "turn in the loop, in order. More concurrent claims than the database has cores "
                                      "only contend on the same index and heap pages; raise it for a database far "
                                      "away, where round trips rather than its CPU bound the rate.")
    auth_cache_seconds: float = Field(5.0, description="How long a verified token is trusted without a database read "
                                      "(a revoked token is refused within this time).")
    token_touch_seconds: float = Field(60.0, description="A token's last_used_at is written at most once per this "
                                       "many seconds, never on every request.")
    lease_wait_seconds: float = Field(20.0, description="Longest a Lease call waits for its queued reservation to be "
                                      "served before answering UNAVAILABLE (a shorter client deadline wins).")
    owner: str = Field("warmpool", description="Owner tag put on every provider resource; orphan collection only "
                       "ever deletes resources carrying it. Give each deployment sharing a cloud its own.")
    metrics_public: bool = Field(False, description="Serve /metrics without a token (for a scraper inside a private network).")

    gitpod: GitpodSettings = Field(default_factory=GitpodSettings, description="The Gitpod/Ona façade (WARMPOOL_GITPOD__*).")
    pools: PoolDefaults = Field(default_factory=PoolDefaults, description="Defaults of new pools (WARMPOOL_POOLS__*).")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Reconciler, applier, sweeps (WARMPOOL_ENGINE__*).")
    flower: FlowerSettings = Field(default_factory=FlowerSettings, description="Flower dashboard (WARMPOOL_FLOWER__*).")
    observer: ObserverSettings = Field(default_factory=ObserverSettings,
                                       description="Provider observers, `warmpool observe` (WARMPOOL_OBSERVER__*).")
    input: InputSettings = Field(default_factory=InputSettings, description="Request size and input limits (WARMPOOL_INPUT__*).")
    providers: ProvidersSettings = Field(default_factory=ProvidersSettings,
                                         description="Compute offered to tenants (WARMPOOL_PROVIDERS__*).")
    secret_keys: SecretStr = Field(
        SecretStr(""), description="Fernet keys encrypting runner secrets at rest, comma-separated: the first "
        "encrypts, all decrypt (rotation). Required outside dev; under dev one is made in the data dir.")
    quotas: QuotaSettings = Field(default_factory=QuotaSettings, description="Per-organization defaults (WARMPOOL_QUOTAS__*).")

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.env == "prod" and self.flower.password.get_secret_value() == DEV_FLOWER_PASSWORD:
            raise ValueError("WARMPOOL_FLOWER__PASSWORD must be set to a non-default value when WARMPOOL_ENV=prod")
        if self.env == "prod" and database_password(self.database_url) in DEFAULT_DATABASE_PASSWORDS:
            # Never echo the URL: it holds the password.
            raise ValueError("WARMPOOL_DATABASE_URL has a default password, refused when WARMPOOL_ENV=prod "
                             "(with docker-compose.yml: set POSTGRES_PASSWORD)")
        if self.env != "dev" and not self.secret_keys.get_secret_value().strip():
            raise ValueError("WARMPOOL_SECRET_KEYS must be set when WARMPOOL_ENV is not dev: make one with "
                             "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`")
        return self

    @property
    def offered_providers(self) -> list[str]:
        """The providers tenants may use here: the enabled ones, `local` only under dev."""
        return [p for p in self.providers.enabled if p != "local" or self.env == "dev"]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, built once. Tests call get_settings.cache_clear() after changing the env."""
    return Settings()
