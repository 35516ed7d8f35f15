"""The `kubernetes` provider: one pod per instance, built from the pool template, via the official client.

Runner settings (`runner.settings`, checked by models.KubernetesSettings):
  namespace          where the pods live (default "default"; one of WARMPOOL_PROVIDERS__KUBERNETES__NAMESPACES)
  request_timeout_s  HTTP timeout per call (default 30)
  delete_grace_s     grace period of a pod deletion (default: the pod's own, 30 s)
  image_pull_policy  of the containers (default: Kubernetes' own rule)
Operator settings (WARMPOOL_PROVIDERS__KUBERNETES__*, merged in by workers.providers.catalog; never a tenant's):
  kubeconfig         path of a kubeconfig file (default: $KUBECONFIG or ~/.kube/config); `context` picks one
  in_cluster         true: use the service account of the pod warmpool runs in instead of a kubeconfig
  service_account    service account of the pods (default: the namespace's default)
Templates pass models.KubernetesTemplate: no host namespaces or privileges can be expressed, and volumes
only of the types the operator lists (WARMPOOL_PROVIDERS__KUBERNETES__VOLUME_TYPES; no hostPath by default).

The pod (see `pod_manifest`): container `main` runs the template's image (or the instance's snapshot id,
when there is one: a snapshot is an image here), container `init` the `init_image`; both get the
template's resources and volume mounts. Labels: the template's plus our ids under `warmpool.dev/…`
(Kubernetes label keys cannot be `warmpool.owner`), which `list` and `watch` select on.

Kubernetes has no stopped pods. `stop` and `create(start=False)` raise ProviderPermanent, so pools on a
kubernetes runner need `stopped_size = 0` (pod pools get it); a stopped-and-restarted pod would be a new
pod anyway. `start` of an existing pod is a no-op (pods run as soon as they are scheduled).

States from the pod: deletionTimestamp -> deleting; Pending -> provisioning (failed on an image name
that can never resolve); Running and Ready -> running, Running not yet Ready -> starting, a crash loop ->
failed; Succeeded/Failed -> failed; Unknown -> starting (node unreachable). A pod pending longer than
the pool's `pod_pending_duration_threshold` says so in `message`.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from app.domain.states import InstanceState as S
from workers.providers.base import (
    INSTANCE_TAG, OWNER_TAG, POOL_TAG, InstanceSpec, Observed, Provider, ProviderPermanent, ProviderTransient,
    Sighting, require_sdk,
)
from workers.providers.models import KubernetesSettings, KubernetesTemplate

LABELS = {OWNER_TAG: "warmpool.dev/owner", INSTANCE_TAG: "warmpool.dev/instance", POOL_TAG: "warmpool.dev/pool"}
PENDING_ANNOTATION = "warmpool.dev/pending-threshold-seconds"
MAIN, INIT = "main", "init"
DEFAULT_PENDING_THRESHOLD = 120
NEVER_RESOLVES = frozenset({"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"})
WATCH_CHUNK_S = 300
OBSERVE_CHUNK_S = 5  # the observer's watches end this often, so a replica that lost its lease stops soon
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

STOP_UNSUPPORTED = ("kubernetes pods cannot be stopped: pools on a kubernetes runner must have stopped_size = 0 "
                    "(scale down deletes pods instead)")


def pod_name(instance_id: str) -> str:
    """A DNS-1123 label (at most 63 characters) naming the instance's pod; the idempotency key."""
    name = re.sub(r"[^a-z0-9-]", "-", f"wp-{instance_id}".lower())[:63]
    return name.rstrip("-")


def _typed(template: dict[str, Any], key: str, kind: type) -> Any:
    value = template.get(key)
    if value in (None, ""):
        return kind()
    if not isinstance(value, kind):
        raise ProviderPermanent(f"pool template field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def pod_manifest(spec: InstanceSpec, namespace: str, *, service_account: str = "", image_pull_policy: str = "") -> dict[str, Any]:
    """The Pod (as the JSON the API takes) for one instance of a pool. Pure."""
    t = spec.template or {}
    image = spec.snapshot_id or _typed(t, "image", str)
    if not image:
        raise ProviderPermanent("the pool template has no image (and the instance no snapshot): a pod needs one")
    ours = {LABELS[OWNER_TAG]: spec.owner, LABELS[INSTANCE_TAG]: spec.instance_id, LABELS[POOL_TAG]: spec.pool_id}
    for key, value in ours.items():
        if not _LABEL_VALUE_RE.match(value):
            raise ProviderPermanent(f"{value!r} cannot be the value of label {key}: use at most 63 letters, digits, '-', '_', '.'")
    labels = {str(k): str(v) for k, v in _typed(t, "labels", dict).items()}
    labels.update(ours)
    annotations = {str(k): str(v) for k, v in _typed(t, "annotations", dict).items()}
    annotations[PENDING_ANNOTATION] = str(t.get("pod_pending_duration_threshold") or DEFAULT_PENDING_THRESHOLD)

    resources = {part: dict(values) for part, values in _typed(t, "resources", dict).items()
                 if part in ("requests", "limits") and values}
    mounts = list(_typed(t, "volume_mounts", list))
    main: dict[str, Any] = {"name": MAIN, "image": image}
    env = _typed(t, "environment", dict)
    if env:
        main["env"] = [{"name": str(k), "value": str(v)} for k, v in env.items()]
    for key in ("command", "args"):
        if t.get(key):
            main[key] = list(_typed(t, key, list))
    pod_spec: dict[str, Any] = {"containers": [main], "restartPolicy": "Always"}
    init_image = _typed(t, "init_image", str)
    if init_image:
        # The same resources as `main`: the pod's effective request is max(init, main), so this costs
        # nothing, and namespaces whose quota demands requests/limits accept it.
        pod_spec["initContainers"] = [{"name": INIT, "image": init_image}]
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        if resources:
            container["resources"] = resources
        if mounts:
            container["volumeMounts"] = mounts
        if image_pull_policy:
            container["imagePullPolicy"] = image_pull_policy
    optional = {
        "nodeSelector": _typed(t, "node_selector", dict), "tolerations": _typed(t, "tolerations", list),
        "affinity": _typed(t, "affinity", dict), "topologySpreadConstraints": _typed(t, "topology_spread_constraints", list),
        "runtimeClassName": _typed(t, "runtime_class_name", str), "volumes": _typed(t, "volumes", list),
        "serviceAccountName": service_account,
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(spec.instance_id), "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": pod_spec,
    }


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _waiting_reason(status: dict[str, Any]) -> tuple[str, str]:
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return waiting["reason"], f"container {cs.get('name')}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return "", ""


def observe(pod: dict[str, Any], now: datetime | None = None) -> Observed:
    """What a pod (as the API's JSON) says, as an Observed. Pure."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    phase = status.get("phase") or "Pending"
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    reason, detail = _waiting_reason(status)
    message, boot_ms = detail, None
    if meta.get("deletionTimestamp"):
        state = S.DELETING
    elif phase == "Pending":
        state = S.FAILED if reason in NEVER_RESOLVES else S.PROVISIONING
        created = _time(meta.get("creationTimestamp"))
        threshold = int((meta.get("annotations") or {}).get(PENDING_ANNOTATION) or DEFAULT_PENDING_THRESHOLD)
        waited = ((now or datetime.now(UTC)) - created).total_seconds() if created else 0
        if state == S.PROVISIONING and waited > threshold:
            message = f"pod pending for {int(waited)}s, over the pool's {threshold}s threshold" + (f" ({detail})" if detail else "")
    elif phase == "Running":
        if reason == "CrashLoopBackOff":
            state = S.FAILED
        elif ready.get("status") == "True":
            state = S.RUNNING
            created, at = _time(meta.get("creationTimestamp")), _time(ready.get("lastTransitionTime"))
            boot_ms = int((at - created).total_seconds() * 1000) if created and at else None
        else:
            state = S.STARTING
    elif phase == "Unknown":
        state, message = S.STARTING, "pod phase Unknown: its node stopped reporting"
    else:  # Succeeded or Failed: a warm pod must keep running (restartPolicy Always)
        state = S.FAILED
        message = f"pod {phase}: {status.get('reason', '')} {status.get('message', '')}".strip()
    return Observed(
        ref=meta.get("name", ""), state=str(state), instance_id=labels.get(LABELS[INSTANCE_TAG]),
        pool_id=labels.get(LABELS[POOL_TAG]), owner=labels.get(LABELS[OWNER_TAG]), address=status.get("podIP") or "",
        boot_ms=boot_ms, message=message,
        extra={"phase": phase, "node": (pod.get("spec") or {}).get("nodeName", ""), "namespace": meta.get("namespace", ""),
               "resource_version": meta.get("resourceVersion", "")},
    )


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def _api_error(what: str, exc: Any) -> Exception:
    """An ApiException as one of our two errors; the Status message says what Kubernetes refused."""
    try:
        detail = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        detail = ""
    message = f"kubernetes: {what} failed: HTTP {exc.status} {exc.reason or ''}".rstrip() + (f": {detail}" if detail else "")
    if exc.status in (0, None, 408, 429) or exc.status >= 500:
        return ProviderTransient(message, retry_after=_retry_after(exc.headers))
    if exc.status in (401, 403):
        return ProviderPermanent(message + " (check the runner's credentials and the RBAC rules for pods)")
    return ProviderPermanent(message)


class KubernetesProvider(Provider):
    name = "kubernetes"
    settings_model = KubernetesSettings
    template_model = KubernetesTemplate

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        require_sdk("kubernetes", "kubernetes", self.name)
        super().__init__(settings)
        self.namespace = str(self.settings.get("namespace") or "default")
        self.timeout = float(self.settings.get("request_timeout_s", 30))
        self._core: Any = None
        self._lock = threading.Lock()

    # ---- plumbing --------------------------------------------------------------------------------
    def _api(self) -> Any:
        """The CoreV1Api, built on first use (the client library is imported only by processes that need it)."""
        with self._lock:
            if self._core is None:
                from kubernetes import client, config
                from urllib3.util.retry import Retry

                cfg = client.Configuration()
                try:
                    if self.settings.get("in_cluster"):
                        config.load_incluster_config(client_configuration=cfg)
                    else:
                        config.load_kube_config(config_file=self.settings.get("kubeconfig"), context=self.settings.get("context"),
                                                client_configuration=cfg, persist_config=False)
                except (config.ConfigException, OSError, ValueError) as exc:
                    raise ProviderPermanent(f"kubernetes: cannot load the cluster configuration: {exc}") from None
                cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, 32)  # tasks share it across threads
                # Retry only failed connections here. urllib3 would otherwise sleep out a 503's Retry-After inside
                # the call, holding a worker thread; the engine retries with backoff (ProviderTransient.retry_after).
                cfg.retries = Retry(total=2, connect=2, read=0, redirect=0, status=0, other=0,
                                    respect_retry_after_header=False)
                self._core = client.CoreV1Api(client.ApiClient(cfg))
            return self._core

    def _request(self, what: str, method: str, *args: Any, allow: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Call CoreV1Api.`method`; the JSON body as a dict (text for logs), None for a status in `allow`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            resp = getattr(self._api(), method)(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            if exc.status in allow:
                return None
            raise _api_error(what, exc) from None
        except (HTTPError, OSError) as exc:
            raise ProviderTransient(f"kubernetes: {what} failed: {exc}") from None
        data = resp.data
        if method == "read_namespaced_pod_log":
            return data.decode("utf-8", errors="replace")
        return json.loads(data or b"{}")

    def _selector(self, owner: str | None) -> str | None:
        return f"{LABELS[OWNER_TAG]}={owner}" if owner else None

    # ---- the contract ------------------------------------------------------------------------------
    def create(self, spec: InstanceSpec, start: bool) -> Observed:
        if not start:
            raise ProviderPermanent(STOP_UNSUPPORTED)
        body = pod_manifest(spec, self.namespace, service_account=str(self.settings.get("service_account") or ""),
                            image_pull_policy=str(self.settings.get("image_pull_policy") or ""))
        pod = self._request(f"create pod {body['metadata']['name']}", "create_namespaced_pod", self.namespace, body, allow=(409,))
        if pod is None:  # already there: the instance id is the pod name, so this is ours from an earlier attempt
            existing = self.get(body["metadata"]["name"])
            if existing is None:
                raise ProviderTransient(f"kubernetes: pod {body['metadata']['name']} exists but could not be read; retry")
            return existing
        return observe(pod)

    def start(self, ref: str) -> Observed:
        found = self.get(ref)
        if found is None:
            raise ProviderPermanent(f"kubernetes: no pod {ref} in namespace {self.namespace}")
        return found

    def stop(self, ref: str) -> Observed:
        raise ProviderPermanent(STOP_UNSUPPORTED)

    def delete(self, ref: str) -> None:
        kwargs = {}
        if self.settings.get("delete_grace_s") is not None:
            kwargs["grace_period_seconds"] = int(self.settings["delete_grace_s"])
        self._request(f"delete pod {ref}", "delete_namespaced_pod", ref, self.namespace, allow=(404,), **kwargs)

    def get(self, ref: str) -> Observed | None:
        pod = self._request(f"read pod {ref}", "read_namespaced_pod", ref, self.namespace, allow=(404,))
        return observe(pod) if pod else None

    def _list_raw(self, owner: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every pod (of `owner`, if given) in the namespace, page by page, and the listing's resourceVersion."""
        items: list[dict[str, Any]] = []
        token, version = None, ""
        while True:
            kwargs: dict[str, Any] = {"limit": 500}
            if token:
                kwargs["_continue"] = token
            selector = self._selector(owner)
            if selector:
                kwargs["label_selector"] = selector
            page = self._request("list pods", "list_namespaced_pod", self.namespace, **kwargs)
            items.extend(page.get("items") or [])
            version = (page.get("metadata") or {}).get("resourceVersion", "") or version
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items, version

    def list(self, owner_tag: str | None = None) -> list[Observed]:
        items, _ = self._list_raw(owner_tag)
        return [observe(p) for p in items]

    def logs(self, ref: str, lines: int = 100) -> str:
        text = self._request(f"read the log of pod {ref}", "read_namespaced_pod_log", ref, self.namespace,
                             container=MAIN, tail_lines=lines, allow=(404,))
        if text is None:
            raise ProviderPermanent(f"kubernetes: no pod {ref} in namespace {self.namespace}")
        return text

    def watch(self, owner: str | None = None, *, timeout_seconds: float | None = None,
              stop: threading.Event | None = None) -> Iterator[Observed]:
        """Every pod (of `owner`) as it is now, then every change as it happens, one Observed at a time (the
        sightings of `observe`, flattened). A deleted pod is yielded with state `deleted`; after a 410 the
        pods are listed again, so a consumer may see a state twice (appliers ignore repeats)."""
        for sighting in self._stream(owner, timeout_seconds=timeout_seconds, stop=stop):
            yield from sighting.observed

    def observe(self, owner: str, stop: threading.Event) -> Iterator[Sighting]:
        """List our pods (by our labels), then watch from the listing's resourceVersion; a 410 (the version
        expired) lists again. Watches are cut every few seconds so `stop` is honoured promptly."""
        return self._stream(owner, timeout_seconds=None, stop=stop, chunk_s=OBSERVE_CHUNK_S)

    def _stream(self, owner: str | None, *, timeout_seconds: float | None, stop: threading.Event | None,
                chunk_s: int = WATCH_CHUNK_S) -> Iterator[Sighting]:
        from kubernetes import watch as k8s_watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        version = ""
        while not (stop and stop.is_set()):
            remaining = chunk_s if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return
            if not version:
                items, version = self._list_raw(owner)
                yield Sighting([observe(pod) for pod in items], full=True)
            w = k8s_watch.Watch()
            chunk = max(1, min(int(remaining), chunk_s))
            kwargs: dict[str, Any] = {"resource_version": version, "timeout_seconds": chunk,
                                      "_request_timeout": (self.timeout, chunk + self.timeout)}
            if owner:
                kwargs["label_selector"] = self._selector(owner)
            began, events = time.monotonic(), 0
            try:
                for event in w.stream(self._api().list_namespaced_pod, self.namespace, **kwargs):
                    if event["type"] == "BOOKMARK":
                        continue
                    pod = event["raw_object"]
                    version = (pod.get("metadata") or {}).get("resourceVersion") or version
                    obs, events = observe(pod), events + 1
                    yield Sighting([replace(obs, state=str(S.DELETED)) if event["type"] == "DELETED" else obs])
                    if stop and stop.is_set():
                        return
            except ApiException as exc:
                if exc.status != 410:
                    raise _api_error("watch pods", exc) from None
                version = ""  # expired: list again, then watch from the new listing
            except (HTTPError, OSError) as exc:
                raise ProviderTransient(f"kubernetes: watch pods failed: {exc}") from None
            if events == 0 and time.monotonic() - began < 1:
                # A watch that ends at once with nothing (a proxy cutting it, say) must not become a busy loop.
                (stop.wait if stop else time.sleep)(1)
