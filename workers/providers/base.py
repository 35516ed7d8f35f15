"""The provider adapter contract: how warmpool drives a compute platform.

Every method is idempotent (our instance id is the idempotency key) and raises only
`ProviderTransient` (retry later, maybe after `retry_after` seconds) or `ProviderPermanent` (retrying
cannot help). Adapters never write to the database: what they observe is returned, and the task that
called them publishes it as an event.

Which calls are asynchronous: `create`, `start` and `stop` return what the provider *accepted*
(`provisioning`, `starting`, `stopping`, or the final state when the platform answers at once), not
what eventually happened. Readiness, crashes, stops behind our back and disappearance are reported by
`observe`, which the observer process (`warmpool observe`, workers/observer.py) turns into events.
`delete`, `get`, `list`, `logs`, `reset`, `snapshot` and `delete_snapshot` are synchronous.
`create_many` is many `create`s at once: one batch call where the platform has a batch endpoint (the fake
cloud's), else concurrent `create`s (`create_concurrency` at a time), never one after another.
"""
from __future__ import annotations

import builtins
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from app import metrics

OWNER_TAG = "warmpool.owner"
INSTANCE_TAG = "warmpool.instance"
POOL_TAG = "warmpool.pool"


class ProviderError(Exception):
    """Base of the two errors an adapter may raise."""


class ProviderTransient(ProviderError):
    """A failure that may go away (rate limit, 5xx, network); retry after `retry_after` seconds if given."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderPermanent(ProviderError):
    """A failure retrying cannot fix (invalid image, quota, not found on start)."""


def require_sdk(module: str, extra: str, provider: str) -> None:
    """Refuse to build an adapter whose client library (a pyproject extra) is not installed, naming the extra:
    the pool's failure message then says what to install. Only looks the package up; imports stay lazy."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ProviderPermanent(f"the {provider} provider needs the optional package {module!r}, which is not "
                                f"installed on this worker: pip install 'warmpool[{extra}]'")


@dataclass(frozen=True)
class InstanceSpec:
    """What to create: our ids (for tags and idempotency) and the pool's template."""

    instance_id: str
    pool_id: str
    owner: str
    snapshot_id: str | None = None
    template: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observed:
    """What the provider says about one resource. `state` is one of app.domain.states.InstanceState
    values; `instance_id`/`pool_id` come from our tags (None if the resource is not ours)."""

    ref: str
    state: str
    instance_id: str | None = None
    pool_id: str | None = None
    owner: str | None = None
    address: str = ""
    boot_ms: int | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sighting:
    """One batch of what `observe` saw. `full`: a complete listing of the owner's resources, so one the
    observer knew and that is missing from it is gone; otherwise only the resources named changed (a
    resource gone is reported with state `deleted`)."""

    observed: list[Observed]
    full: bool = False


class Provider(ABC):
    """A compute platform. One instance of the adapter per runner (its settings are the runner's, merged with
    the operator's settings for the provider by workers.providers.catalog).

    `settings_model` and `template_model` (pydantic, unknown keys refused; workers/providers/models.py) say
    what a tenant may put in a runner's settings and a pool's template: nothing reaches an adapter, or the
    database, without passing them. An adapter without them cannot be offered to tenants."""

    name: str = ""
    settings_model: ClassVar[type[BaseModel] | None] = None
    template_model: ClassVar[type[BaseModel] | None] = None
    create_concurrency: ClassVar[int] = 16
    """How many `create` calls the default `create_many` has in flight at once (a platform's rate limits)."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    TIMED: ClassVar[tuple[str, ...]] = ("create", "create_many", "start", "stop", "delete", "reset", "get", "list",
                                        "logs", "snapshot", "delete_snapshot")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every adapter's contract calls are timed and their errors counted (app.metrics), wherever they are
        called from."""
        super().__init_subclass__(**kwargs)
        kinds = {ProviderTransient: "transient", ProviderPermanent: "permanent"}
        for op in cls.TIMED:
            fn = getattr(cls, op, None)
            if fn is not None and not getattr(fn, "__timed_provider_call__", False):
                setattr(cls, op, metrics.timed_provider_call(op, fn, kinds))

    @abstractmethod
    def create(self, spec: InstanceSpec, start: bool) -> Observed:
        """Create the resource for `spec.instance_id`, tagged with our ids, from `spec.snapshot_id` (or the
        template's image). Started if `start`, else left stopped. Calling it again for the same instance id
        returns the existing resource instead of making a second one."""

    def create_many(self, specs: list[InstanceSpec], start: bool) -> list[Observed | ProviderError]:
        """`create` for each spec, as one batch: the result for each spec in order, an Observed or the
        ProviderError its create raised (one failure does not fail the others). Idempotent per instance id,
        like `create`. This default runs the creates concurrently, `create_concurrency` at a time; an adapter
        whose platform takes a batch in one request overrides it."""
        def one(spec: InstanceSpec) -> Observed | ProviderError:
            try:
                return self.create(spec, start)
            except ProviderError as exc:
                return exc

        if len(specs) <= 1:
            return [one(s) for s in specs]
        with ThreadPoolExecutor(max_workers=min(self.create_concurrency, len(specs)),
                                thread_name_prefix=f"{self.name or 'provider'}-create") as pool:
            return list(pool.map(one, specs))

    @abstractmethod
    def start(self, ref: str) -> Observed:
        """Start a stopped resource; a running one is left as it is. Unknown ref: ProviderPermanent."""

    @abstractmethod
    def stop(self, ref: str) -> Observed:
        """Stop a running resource, keeping its disk; a stopped one is left as it is."""

    @abstractmethod
    def delete(self, ref: str) -> None:
        """Delete the resource. Deleting something already gone succeeds."""

    def reset(self, ref: str) -> Observed:
        """Make a running resource clean for its next user after a lease on a `reuse` pool ended, and return
        it as it now is (running when it is ready again). The default suits resources that keep no state
        between users: it checks the resource is still there. Unknown ref: ProviderPermanent."""
        found = self.get(ref)
        if found is None:
            raise ProviderPermanent(f"{self.name or 'provider'}: no resource {ref} to reset")
        return found

    @abstractmethod
    def get(self, ref: str) -> Observed | None:
        """The resource's current state, or None if it does not exist."""

    @abstractmethod
    def list(self, owner_tag: str | None = None) -> list[Observed]:
        """Everything the adapter can see (not only ours); with `owner_tag`, only resources tagged with it."""

    @abstractmethod
    def logs(self, ref: str, lines: int = 100) -> str:
        """The last `lines` lines of the resource's console output."""

    def observe(self, owner: str, stop: threading.Event) -> Iterator[Sighting]:
        """What happens to the owner's resources, as it happens, until `stop` is set: first a full listing,
        then changes (a watch stream where the platform has one) or further full listings (a poll). The
        observer starts it again after an error or when it ends, so a gap is always followed by a full
        listing. Checks `stop` at least every second or so. This default polls `list(owner)` every
        `poll_interval` seconds; adapters with a change stream override it."""
        while not stop.is_set():
            listing = self.list(owner)
            yield Sighting(listing, full=True)
            stop.wait(self.poll_interval(listing))

    def poll_interval(self, listing: builtins.list[Observed]) -> float:  # `list` here is the method above
        """Seconds until the next poll of `observe`, given the last listing: the operator's
        `observer.poll_fast_seconds` while something is on its way (provisioning, starting, stopping),
        else `observer.poll_seconds`."""
        from config.settings import get_settings

        o = get_settings().observer
        busy = any(obs.state in ("requested", "provisioning", "starting", "stopping") for obs in listing)
        return o.poll_fast_seconds if busy else o.poll_seconds

    def snapshot(self, ref: str, name: str) -> str:
        """Make a snapshot (image, template, checkpoint) of a resource and return its id."""
        raise ProviderPermanent(f"provider {self.name!r} cannot snapshot instances")

    def delete_snapshot(self, snapshot_id: str) -> None:  # noqa: B027 - optional: no snapshots, none to delete
        """Delete a snapshot made by `snapshot`; deleting one already gone succeeds."""
