"""The `unikraft` provider: warm pools of unikernel instances on Unikraft Cloud (REST API v1).

How it talks to the API: every call goes through the official `unikraft-cloud` SDK's plumbing client
(`unikraft_cloud.api.platform.InstancesApi`: instances, templates, checkpoints, wait, log) and its
`paginate` helper for listings. The SDK is async, so each call runs in a short event loop of its own.
Plain httpx is used only where the SDK does not serve: the SDK drops response headers from its errors,
so an httpx response hook on the client we hand it reads `Retry-After`. The SDK's idiomatic layer is
not used: it raises on a `partial_success` envelope and discovers metros through the control plane,
while this adapter inspects envelopes item by item and talks to exactly one metro.

Observed by polling (`Provider.observe`, the default): `list(owner)` every WARMPOOL_OBSERVER__POLL_FAST_SECONDS
while an instance is starting or stopping, else every WARMPOOL_OBSERVER__POLL_SECONDS. (The `wait` endpoint
blocks on one instance and state; a pool's worth of instances is one listing instead.)

Runner settings (`runner.settings`):
  metro              metro code ("fra", "fra0", "dal"…) or a full base URL (default "fra")
  token              the API token. A secret: stored encrypted, never logged, never in a repr or an exception
                     message, and blanked in `self.settings`. Or `token_env`: the environment variable holding
                     it, set by the operator on the workers and named WARMPOOL_PROVIDER_SECRET_*
  (A runner's settings pass models.UnikraftSettings first: a metro URL must be http(s) to a host on
  WARMPOOL_PROVIDERS__ALLOWED_HOSTS, and redirects are never followed, so no answer can send us elsewhere.)
  default_memory_mb  memory of instances whose pool template sets none (default 128); default_vcpus likewise
  stopped_tier       "standby" (default): `stop` suspends to standby, our stopped tier, woken in milliseconds;
                     "stopped": `stop` shuts the instance down
  standby_boot       with the standby tier, `create(start=False)` boots the instance and suspends it (default
                     true), so a backfill resumes a booted instance; false: autostart off, it waits in `stopped`
  drain_timeout_ms   connection drain on stop/suspend (default 1000; -1 = the platform's maximum)
  start_timeout_s    how long create/start wait for `running` (default 30); stop_timeout_s likewise (30)
  snapshot_kind      "checkpoint" (default) or "template": what `snapshot` makes
  snapshot_timeout_s how long `snapshot` waits for the snapshot to be made (default 120)
  timeout_s          HTTP timeout per request, on top of any server-side wait (default 30)
  name_prefix        prefix of instance names (default "wp-"); the name is the idempotency key
  page_size          instances per listing page (default 100)

Our ids travel twice: as tags `warmpool.owner:<owner>`, `warmpool.instance:<id>`, `warmpool.pool:<id>`
(tags are plain strings on Unikraft and `GET /v1/instances?tags=` filters on them server side) and as
annotations with the same keys (a dict, exact, and visible to the guest). Reading back prefers annotations.

States: starting/running map to ours; draining and stopping -> stopping; stopped and standby -> stopped
(`extra["provider_state"]` keeps which); deleted, and an instance turned into a template, -> deleted.
Templates and checkpoints are snapshots, not instances: `list` leaves them out and `delete` leaves them be.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from app.domain.states import InstanceState as S
from workers.providers.base import (
    INSTANCE_TAG, OWNER_TAG, POOL_TAG, InstanceSpec, Observed, Provider, ProviderError, ProviderPermanent,
    ProviderTransient, require_sdk,
)
from workers.providers.models import UnikraftSettings, UnikraftTemplate
from workers.providers.unikraft_template import (
    SNAPSHOT_KINDS, create_body, ids_from, instance_name, name_or_uuid, parse_snapshot, tag,
)

log = logging.getLogger(__name__)

STATES = {
    "starting": S.STARTING, "running": S.RUNNING, "draining": S.STOPPING, "stopping": S.STOPPING,
    "stopped": S.STOPPED, "standby": S.STOPPED, "deleted": S.DELETED, "template": S.DELETED,
    "checkpoint": S.DELETED,
}
SNAPSHOT_STATES = frozenset({"template", "checkpoint"})
# Per-item error codes (kraftcloud go-sdk APIHTTPError): 8 NotFound, 23 AlreadyExists; these three
# can go away by themselves: 9 NoFree (no capacity), 11 FailedWrongVMState (mid-transition), 12 TimedOut.
NOT_FOUND, ALREADY_EXISTS, TRANSIENT_CODES = 8, 23, frozenset({9, 11, 12})
CODE_NAMES = {7: "Invalid", 8: "NotFound", 9: "NoFree", 11: "FailedWrongVMState", 12: "TimedOut", 14: "NotAllowed",
              16: "MalformedRequest", 19: "Quota", 20: "GuestMemoryTooSmall", 23: "AlreadyExists"}
USER_AGENT = "warmpool (unikraft-cloud-python)"


class ApiFailure(Exception):
    """One failed API answer, before it is mapped to the contract (never leaves this module)."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None,
                 retry_after: float | None = None, network: bool = False, state: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.state = message, status, code, state
        self.retry_after, self.network = retry_after, network

    @property
    def not_found(self) -> bool:
        return self.code == NOT_FOUND or (self.status == 404 and self.code is None)

    @property
    def exists(self) -> bool:
        return self.code == ALREADY_EXISTS or (self.status == 409 and self.code is None)

    @property
    def transient(self) -> bool:
        return (self.network or self.code in TRANSIENT_CODES or self.status in (408, 425, 429)
                or (self.status or 0) >= 500)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine to completion from sync code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _envelope(value: Any) -> dict[str, Any]:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value if isinstance(value, dict) else {}


class UnikraftProvider(Provider):
    name = "unikraft"
    settings_model = UnikraftSettings
    template_model = UnikraftTemplate

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        require_sdk("unikraft_cloud", "unikraft", self.name)
        super().__init__(settings)
        from unikraft_cloud.core.metro import metro_base_url  # the SDK is imported lazily

        s = self.settings
        # token_env is an operator-set variable (models.UnikraftSettings allows only WARMPOOL_PROVIDER_SECRET_*)
        self._token = str(s.get("token") or (os.environ.get(str(s["token_env"]), "") if s.get("token_env") else ""))
        if "token" in s:
            s["token"] = "***"  # the settings dict is shown and cached elsewhere; the secret stays here
        self.base_url = metro_base_url(str(s.get("metro") or "fra"))
        self.default_memory_mb = int(s.get("default_memory_mb", 128))
        self.default_vcpus = int(s["default_vcpus"]) if s.get("default_vcpus") else None
        self.stopped_tier = str(s.get("stopped_tier", "standby"))
        if self.stopped_tier not in ("standby", "stopped"):
            raise ValueError(f"unikraft: stopped_tier must be 'standby' or 'stopped', got {self.stopped_tier!r}")
        self.snapshot_kind = str(s.get("snapshot_kind", "checkpoint"))
        if self.snapshot_kind not in SNAPSHOT_KINDS:
            raise ValueError(f"unikraft: snapshot_kind must be one of {SNAPSHOT_KINDS}, got {self.snapshot_kind!r}")
        self.standby_boot = str(s.get("standby_boot", True)).lower() not in ("false", "0", "no")
        self.drain_timeout_ms = int(s.get("drain_timeout_ms", 1000))
        self.start_timeout_s = int(s.get("start_timeout_s", 30))
        self.stop_timeout_s = int(s.get("stop_timeout_s", 30))
        self.snapshot_timeout_s = int(s.get("snapshot_timeout_s", 120))
        self.timeout_s = float(s.get("timeout_s", 30))
        self.name_prefix = str(s.get("name_prefix", "wp-"))
        self.page_size = int(s.get("page_size", 100))
        self._ssl_context: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"<UnikraftProvider {self.base_url}>"

    # ---- transport -------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        # Loading the CA bundle costs ~30 ms, more than a call to a nearby metro: do it once.
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _call(self, fn: Callable[[Any], Awaitable[Any]], wait_s: float = 0.0) -> dict[str, Any]:
        """One SDK call; returns the envelope as a dict, raises ApiFailure for a non-2xx or no answer."""
        from unikraft_cloud.api.platform import ApiClientConfig, InstancesApi
        from unikraft_cloud.core.errors import UnikraftCloudError

        seen: dict[str, str | None] = {}

        async def remember(response: httpx.Response) -> None:
            seen["retry-after"] = response.headers.get("retry-after")

        async def run() -> Any:
            timeout = httpx.Timeout(self.timeout_s + max(wait_s, 0), connect=min(self.timeout_s, 10.0))
            async with httpx.AsyncClient(timeout=timeout, verify=self._ssl(), follow_redirects=False,
                                         event_hooks={"response": [remember]}) as http:
                config = ApiClientConfig(base_url=self.base_url, token=self._token or None, http=http,
                                         user_agent=USER_AGENT, timeout=timeout)
                return await fn(InstancesApi(config))

        try:
            return _envelope(_run(run()))
        except UnikraftCloudError as exc:
            body = _envelope(exc.body)
            item: dict[str, Any] = next(iter((body.get("data") or {}).get("instances") or []), {})
            message = item.get("message") or body.get("message") or str(exc) or type(exc).__name__
            failure = ApiFailure(self._scrub(message), status=exc.status, code=item.get("error"),
                                 retry_after=_retry_after(seen.get("retry-after")),
                                 network=exc.kind in ("network", "parse") and not exc.status)
        raise failure  # raised outside the except block: the SDK error (and its request) is not chained

    def _item(self, envelope: dict[str, Any], ref: str | None = None) -> dict[str, Any]:
        """Our item of a 2xx envelope. `partial_success` does not fail by itself: the item decides."""
        items = (envelope.get("data") or {}).get("instances") or []
        mine = [i for i in items if ref is None or ref in (i.get("uuid"), i.get("name"))] or items[:1]
        if mine and mine[0].get("status") == "error":
            item = mine[0]
            raise ApiFailure(self._scrub(item.get("message") or envelope.get("message") or "the API refused"),
                             code=item.get("error"), state=item.get("state"))
        if envelope.get("status") == "error" and not mine:
            message = self._scrub(envelope.get("message") or "the API answered with an error")
            raise ApiFailure(message, code=12 if "timed out" in message.lower() else None)
        if not mine:
            raise ApiFailure("the API answered without the instance", status=404)
        return mine[0]

    def _error(self, op: str, ref: str, failure: ApiFailure) -> ProviderError:
        detail = ", ".join(filter(None, [f"HTTP {failure.status}" if failure.status else "",
                                         f"error {failure.code} {CODE_NAMES.get(failure.code, '')}".strip()
                                         if failure.code is not None else ""]))
        text = self._scrub(f"unikraft {op} {ref}: {failure.message}" + (f" ({detail})" if detail else ""))
        if failure.transient:
            return ProviderTransient(text, retry_after=failure.retry_after)
        return ProviderPermanent(text)

    # ---- reading ---------------------------------------------------------------------------------
    def _observed(self, item: dict[str, Any]) -> Observed:
        raw = str(item.get("state") or "")
        ids = ids_from(item.get("tags"), item.get("annotations"))
        private_ip = str(item.get("private_ip") or "").split("/")[0]
        fqdn = str(item.get("private_fqdn") or "")
        domains = [d.get("fqdn") for d in ((item.get("service_group") or {}).get("domains") or []) if d.get("fqdn")]
        boot_us = item.get("boot_time_us")
        extra = {"provider_state": raw, "name": item.get("name"), "private_ip": private_ip, "private_fqdn": fqdn,
                 "fqdns": domains, "boot_time_us": boot_us, "image": item.get("image")}
        for key in ("stop_reason", "exit_code", "memory_mb", "vcpus"):
            if item.get(key) is not None:
                extra[key] = item[key]
        return Observed(
            ref=str(item.get("uuid") or ""), state=str(STATES.get(raw, S.FAILED)), instance_id=ids.get(INSTANCE_TAG),
            pool_id=ids.get(POOL_TAG), owner=ids.get(OWNER_TAG), address=private_ip or fqdn,
            boot_ms=round(boot_us / 1000) if isinstance(boot_us, int) else None,
            message="" if raw in STATES else f"unknown Unikraft state {raw!r}", extra=extra,
        )

    def _fetch(self, ref: str, op: str = "get") -> dict[str, Any] | None:
        try:
            return self._item(self._call(lambda api: api.get_instance_by_uuid(ref, details=True)), ref)
        except ApiFailure as failure:
            if failure.not_found:
                return None
            raise self._error(op, ref, failure) from None

    def _find_by_name(self, name: str) -> dict[str, Any] | None:
        try:
            return self._item(self._call(lambda api: api.get_instances(name=[name], details=True)), name)
        except ApiFailure as failure:
            if failure.not_found:
                return None
            raise self._error("lookup", name, failure) from None

    def get(self, ref: str) -> Observed | None:
        item = self._fetch(ref)
        return self._observed(item) if item else None

    def list(self, owner_tag: str | None = None) -> list[Observed]:
        from unikraft_cloud.core.pagination import collect, paginate

        tags = [tag(OWNER_TAG, owner_tag)] if owner_tag else None

        async def everything(api: Any) -> dict[str, Any]:
            async def page(count: int, start: str | None) -> list[dict[str, Any]]:
                res = _envelope(await api.get_instances(count=count, from_=start, details=True, tags=tags))
                return [i for i in (res.get("data") or {}).get("instances") or [] if i.get("status") != "error"]
            return {"data": {"instances": await collect(paginate(page, lambda i: i.get("uuid"), self.page_size))}}

        try:
            items = self._call(everything)["data"]["instances"]
        except ApiFailure as failure:
            raise self._error("list", owner_tag or "*", failure) from None
        out = [self._observed(i) for i in items if i.get("state") not in SNAPSHOT_STATES | {"deleted"}]
        # The server filters by tag already; checking again keeps `list(owner)` right against any server.
        return [o for o in out if owner_tag is None or o.owner == owner_tag]

    def logs(self, ref: str, lines: int = 100) -> str:
        budget = min(max(4096, lines * 256), 1 << 20)
        try:
            item = self._item(self._call(lambda api: api.get_instance_logs_by_uuid(
                ref, body={"offset": -budget, "limit": budget})), ref)
        except ApiFailure as failure:
            raise self._error("logs", ref, failure) from None
        text = base64.b64decode(item.get("output") or "").decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

    def wait_for_state(self, ref: str, state: str, timeout_s: float) -> Observed:
        """Block until the instance is in Unikraft state `state` (e.g. "running", "standby"); a lapsed
        wait is ProviderTransient naming the state it was left in."""
        seconds = max(1, math.ceil(timeout_s))
        try:
            item = self._item(self._call(lambda api: api.wait_instance_by_uuid(
                ref, body={"state": state, "timeout_s": seconds}), wait_s=seconds), ref)
        except ApiFailure as failure:
            if failure.code == 12 and failure.state:
                failure.message = f"{failure.message}; it is {failure.state}"
            raise self._error(f"wait for {state}", ref, failure) from None
        if item.get("state") != state:
            raise ProviderTransient(f"unikraft wait for {state} {ref}: timed out after {seconds}s, "
                                    f"it is {item.get('state') or 'unknown'}", retry_after=1.0)
        return self._observed(self._fetch(ref, f"wait for {state}") or item)

    # ---- lifecycle -------------------------------------------------------------------------------
    def create(self, spec: InstanceSpec, start: bool) -> Observed:
        """With the standby tier, an instance created stopped is booted and then suspended, so the stopped
        tier holds booted instances a start resumes in milliseconds (`standby_boot: false`: autostart off)."""
        via_standby = not start and self.stopped_tier == "standby" and self.standby_boot
        obs = self._create(spec, start=start, boot=start or via_standby)
        if via_standby and obs.extra.get("provider_state") not in ("stopped", "standby"):
            return self.stop(obs.ref)
        return obs

    def _create(self, spec: InstanceSpec, *, start: bool, boot: bool) -> Observed:
        name = instance_name(self.name_prefix, spec.instance_id)
        body = create_body(spec, name=name, start=boot, start_timeout_s=self.start_timeout_s,
                           default_memory_mb=self.default_memory_mb, default_vcpus=self.default_vcpus,
                           snapshot_kind=self.snapshot_kind)
        item: dict[str, Any] | None
        try:
            item = self._item(self._call(lambda api: api.create_instance(body=body),
                                         wait_s=body.get("timeout_s", 0)), name)
        except ApiFailure as failure:
            if not failure.exists:
                raise self._error("create", name, failure) from None
            # A create that got through before (a lost answer, a redelivered task): the name is our key.
            item = self._find_by_name(name)
            if item is None:
                raise ProviderTransient(f"unikraft create {name}: the name is taken but the instance is not "
                                        "listed yet", retry_after=1.0) from None
            log.info("unikraft: %s already exists as %s (%s)", name, item.get("uuid"), item.get("state"))
            if start and item.get("state") != "running":
                return self.start(str(item["uuid"]))
            return self._observed(item)
        ref = str(item.get("uuid"))
        log.info("unikraft: created %s as %s (%s)", name, ref, item.get("state"))
        if boot and item.get("state") != "running":
            return self.wait_for_state(ref, "running", self.start_timeout_s)
        if "tags" not in item or (boot and item.get("boot_time_us") is None):
            item = self._fetch(ref, "create") or item  # a short answer: read the whole instance
        return self._observed(item)

    def start(self, ref: str) -> Observed:
        """Start a stopped or standby instance and wait until it runs; a running one is left as it is."""
        try:
            item = self._item(self._call(lambda api: api.start_instance_by_uuid(
                ref, body={"timeout_s": self.start_timeout_s}), wait_s=self.start_timeout_s), ref)
        except ApiFailure as failure:
            raise self._error("start", ref, failure) from None
        if item.get("state") != "running":
            return self.wait_for_state(ref, "running", self.start_timeout_s)
        current = self._fetch(ref, "start")
        if current is None:
            raise ProviderPermanent(f"unikraft start {ref}: the instance vanished")
        return self._observed(current)

    def stop(self, ref: str, drain_timeout_ms: int | None = None, tier: str | None = None) -> Observed:
        """Put the instance in our stopped tier: suspended to `standby` (the default `stopped_tier`) or shut
        down (`tier="stopped"`), draining connections first. An instance already there is left as it is."""
        tier = tier or self.stopped_tier
        drain = self.drain_timeout_ms if drain_timeout_ms is None else drain_timeout_ms
        target, op = ("standby", "suspend") if tier == "standby" else ("stopped", "stop")
        call = (lambda api: api.suspend_instance_by_uuid(ref, body={"drain_timeout_ms": drain})) if op == "suspend" \
            else (lambda api: api.stop_instance_by_uuid(ref, body={"drain_timeout_ms": drain}))
        try:
            item = self._item(self._call(call), ref)
        except ApiFailure as failure:
            current = self._fetch(ref, op) if failure.code == 11 else None
            if current is not None and current.get("state") in ("stopped", "standby"):
                return self._observed(current)  # already in the stopped tier (suspending a stopped one fails)
            raise self._error(op, ref, failure) from None
        if item.get("state") in ("stopped", "standby"):
            return self._observed(self._fetch(ref, op) or item)
        drain_s = (max(drain, 0) / 1000.0) if drain >= 0 else self.stop_timeout_s
        return self.wait_for_state(ref, target, drain_s + self.stop_timeout_s)

    def suspend(self, ref: str, drain_timeout_ms: int | None = None) -> Observed:
        """Suspend to standby (scale to zero) whatever `stopped_tier` says."""
        return self.stop(ref, drain_timeout_ms=drain_timeout_ms, tier="standby")

    def delete(self, ref: str) -> None:
        current = self._fetch(ref, "delete")
        if current is None:
            return
        if current.get("state") in SNAPSHOT_STATES:
            log.info("unikraft: %s is a %s now; delete_snapshot removes it", ref, current.get("state"))
            return
        try:
            self._item(self._call(lambda api: api.delete_instance_by_uuid(ref)), ref)
        except ApiFailure as failure:
            if not failure.not_found:
                raise self._error("delete", ref, failure) from None
        log.info("unikraft: deleted %s", ref)

    # ---- snapshots -------------------------------------------------------------------------------
    def snapshot(self, ref: str, name: str) -> str:
        """A checkpoint of the instance (it keeps running), or the instance itself turned into a template
        (`snapshot_kind: template`). Returns `checkpoint:<uuid>` or `template:<uuid>`."""
        if self.snapshot_kind == "template":
            return self._template(ref)
        cp_name = instance_name(f"{self.name_prefix}snap-", name)  # prebuilds name both alike: keep them apart
        body = [{"from": name_or_uuid(ref), "name": cp_name, "timeout_s": self.snapshot_timeout_s,
                 "tags": [tag("warmpool.snapshot", name)]}]
        try:
            item = self._item(self._call(lambda api: api.create_checkpoint_instances(body=body),
                                         wait_s=self.snapshot_timeout_s), cp_name)
        except ApiFailure as failure:
            if not failure.exists:
                raise self._error("checkpoint", ref, failure) from None
            try:  # made before by a retried task: its name is the key
                item = self._item(self._call(lambda api: api.get_checkpoint_instances(name=[cp_name])), cp_name)
            except ApiFailure as again:
                raise self._error("checkpoint", ref, again) from None
        log.info("unikraft: checkpoint %s of %s is %s", cp_name, ref, item.get("uuid"))
        return f"checkpoint:{item['uuid']}"

    def _template(self, ref: str) -> str:
        current = self._fetch(ref, "template")
        if current is None:
            raise ProviderPermanent(f"unikraft template {ref}: no such instance")
        if current.get("state") != "template":
            try:
                item = self._item(self._call(lambda api: api.create_template_instances(
                    body=[{"uuid": ref, "timeout_s": self.snapshot_timeout_s}]), wait_s=self.snapshot_timeout_s), ref)
            except ApiFailure as failure:
                raise self._error("template", ref, failure) from None
            ref = str(item.get("uuid") or ref)
        return f"template:{ref}"

    def delete_snapshot(self, snapshot_id: str) -> None:
        kind, ref = parse_snapshot(snapshot_id, self.snapshot_kind)
        call = (lambda api: api.delete_checkpoint_instances(body=[name_or_uuid(ref)])) if kind == "checkpoint" \
            else (lambda api: api.delete_template_instances(body=[name_or_uuid(ref)]))
        try:
            self._item(self._call(call), ref)
        except ApiFailure as failure:
            if not failure.not_found:
                raise self._error(f"delete {kind}", ref, failure) from None
