"""The kubernetes provider through the real `kubernetes` client library against a local stub of the
pods API (/api/v1/namespaces/{ns}/pods: create, read, list by label selector, watch, delete, log),
configured by a kubeconfig file pointing at the stub, as an operator would configure a runner."""
from __future__ import annotations

import copy
import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from workers.providers.base import InstanceSpec, Observed, ProviderPermanent, ProviderTransient
from workers.providers.kubernetes import KubernetesProvider, pod_manifest

NS = "pools"
TOKEN = "stub-token-123"


class PodsStub:
    """Enough of the Kubernetes pods API for the provider: one namespace, equality label selectors,
    resourceVersions, a watch that streams events as chunked JSON lines, and fault injection."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, list[str]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.rv = 100
        self.expired_below = 0
        self.cond = threading.Condition()
        self.closed = False
        self.requests: list[dict[str, Any]] = []
        self.faults: list[tuple[int, dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.handle(self, "GET")

            def do_POST(self) -> None:
                stub.handle(self, "POST")

            def do_DELETE(self) -> None:
                stub.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # ---- test controls -----------------------------------------------------------------------
    def _event(self, kind: str, pod: dict[str, Any]) -> None:
        self.rv += 1
        pod["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, copy.deepcopy(pod)))
        self.cond.notify_all()

    def set_status(self, name: str, phase: str, ready: bool = False, ip: str = "") -> None:
        with self.cond:
            pod = self.pods[name]
            pod["status"] = {"phase": phase, "podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": _now()}]}
            self._event("MODIFIED", pod)

    def put_foreign(self, name: str, labels: dict[str, str]) -> None:
        with self.cond:
            self.pods[name] = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": name, "namespace": NS, "labels": labels, "creationTimestamp": _now(), "uid": str(uuid.uuid4())},
                "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"phase": "Running"}}
            self._event("ADDED", self.pods[name])

    def expire(self) -> None:
        """Every resourceVersion so far is too old: open watches get a 410 and must list again."""
        with self.cond:
            self.rv += 1  # as after a compaction: a listing now returns a version that is not expired
            self.expired_below = self.rv
            self.cond.notify_all()

    # ---- the API -----------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        self.requests.append({"method": method, "path": parts.path, "query": query, "auth": h.headers.get("Authorization")})
        if self.faults:
            code, headers = self.faults.pop(0)
            return self.send(h, code, status(code, "injected fault"), headers)
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?", parts.path)
        if m is None:
            return self.send(h, 404, status(404, f"no route {parts.path}"))
        ns, name, log = m.groups()
        with self.cond:
            if name is None and method == "POST":
                return self.create(h, ns, body)
            if name is None and method == "GET" and query.get("watch", "").lower() in ("true", "1"):
                pass  # streamed below, outside the lock
            elif name is None and method == "GET":
                items = [p for p in self.pods.values() if ns == NS and selects(query.get("labelSelector", ""), p)]
                return self.send(h, 200, {"kind": "PodList", "apiVersion": "v1",
                                          "metadata": {"resourceVersion": str(self.rv)}, "items": items})
            else:
                pod = self.pods.get(name) if ns == NS else None
                if pod is None:
                    return self.send(h, 404, status(404, f'pods "{name}" not found', "NotFound"))
                if log:
                    lines = self.logs.get(name, [])[-int(query.get("tailLines", 10**6)):]
                    return self.send(h, 200, "".join(line + "\n" for line in lines), ctype="text/plain")
                if method == "DELETE":
                    del self.pods[name]
                    self._event("DELETED", pod)
                return self.send(h, 200, pod)
        self.watch(h, query)

    def create(self, h: BaseHTTPRequestHandler, ns: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if name in self.pods:
            return self.send(h, 409, status(409, f'pods "{name}" already exists', "AlreadyExists"))
        pod = copy.deepcopy(body)
        pod["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        pod["status"] = {"phase": "Pending"}
        self.pods[name] = pod
        self.logs[name] = [f"{name} line {n}" for n in range(1, 6)]
        self._event("ADDED", pod)
        self.send(h, 201, pod)

    def watch(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(obj: dict[str, Any]) -> None:
            data = (json.dumps(obj) + "\n").encode()
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()

        try:
            with self.cond:
                while not self.closed and time.monotonic() < deadline:
                    if since < self.expired_below:
                        chunk({"type": "ERROR", "object": status(410, "too old resource version", "Expired")})
                        break
                    for rv, kind, pod in [e for e in self.events if e[0] > since]:
                        since = rv
                        if selects(query.get("labelSelector", ""), pod):
                            chunk({"type": kind, "object": pod})
                    self.cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except OSError:
            pass  # the client went away

    def send(self, h: BaseHTTPRequestHandler, code: int, body: Any, headers: dict[str, str] | None = None,
             ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, message: str, reason: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}


def selects(selector: str, pod: dict[str, Any]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        if labels.get(key) != value:
            return False
    return True


# ---- fixtures ------------------------------------------------------------------------------------

def watch_requests(stub: PodsStub) -> list[dict[str, Any]]:
    return [r for r in stub.requests if r["query"].get("watch", "").lower() == "true"]


@pytest.fixture
def stub() -> Iterator[PodsStub]:
    s = PodsStub()
    yield s
    s.close()


def kubeconfig(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": server}}],
        "users": [{"name": "ops", "user": {"token": TOKEN}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "ops", "namespace": NS}}],
    }))
    return str(path)


@pytest.fixture
def provider(stub: PodsStub, tmp_path: Path) -> KubernetesProvider:
    return KubernetesProvider({"namespace": NS, "kubeconfig": kubeconfig(tmp_path, stub.url), "request_timeout_s": 5})


def spec(owner: str = "warmpool") -> InstanceSpec:
    return InstanceSpec(instance_id=str(uuid.uuid4()), pool_id=str(uuid.uuid4()), owner=owner, template={
        "image": "registry.example/runtime:1", "init_image": "registry.example/init:1",
        "resources": {"requests": {"cpu": "100m"}}, "labels": {"team": "ml"}, "environment": {"A": "1"},
        "node_selector": {"disktype": "ssd"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "volumes": [{"name": "d", "emptyDir": {}}], "volume_mounts": [{"name": "d", "mountPath": "/d"}],
    })


# ---- tests ---------------------------------------------------------------------------------------

def test_create_get_list_logs_delete(stub: PodsStub, provider: KubernetesProvider) -> None:
    s = spec()
    obs = provider.create(s, start=True)
    name = f"wp-{s.instance_id}"
    assert (obs.ref, obs.state, obs.instance_id, obs.pool_id, obs.owner) == (name, "provisioning", s.instance_id, s.pool_id, "warmpool")
    posted = stub.pods[name]
    expected = pod_manifest(s, NS)
    assert posted["spec"] == expected["spec"] and posted["metadata"]["labels"] == expected["metadata"]["labels"]
    assert stub.requests[0]["method"] == "POST" and stub.requests[0]["path"] == f"/api/v1/namespaces/{NS}/pods"
    assert stub.requests[0]["auth"] == f"Bearer {TOKEN}"  # the kubeconfig's credentials were used

    again = provider.create(s, start=True)  # idempotent: 409, then read the existing pod
    assert again.ref == name and len(stub.pods) == 1
    assert [r["method"] for r in stub.requests[-2:]] == ["POST", "GET"]

    stub.set_status(name, "Running", ready=True, ip="10.1.2.3")
    got = provider.get(name)
    assert (got.state, got.address, got.instance_id) == ("running", "10.1.2.3", s.instance_id)
    assert provider.start(name).state == "running"  # a pod runs as soon as it can: start is a no-op

    other = provider.create(spec(owner="someone-else"), start=True)
    stub.put_foreign("not-ours", {"app": "db"})
    ours = provider.list("warmpool")
    assert [o.ref for o in ours] == [name]
    assert stub.requests[-1]["query"]["labelSelector"] == "warmpool.dev/owner=warmpool"
    everything = {o.ref: o for o in provider.list()}
    assert set(everything) == {name, other.ref, "not-ours"} and everything["not-ours"].instance_id is None

    assert provider.logs(name, lines=2) == f"{name} line 4\n{name} line 5\n"
    assert stub.requests[-1]["query"] == {"container": "main", "tailLines": "2"}

    provider.delete(name)
    assert provider.get(name) is None
    provider.delete(name)  # already gone: fine
    with pytest.raises(ProviderPermanent, match="no pod"):
        provider.start(name)
    with pytest.raises(ProviderPermanent, match="no pod"):
        provider.logs(name)


def test_errors_map_to_transient_or_permanent(stub: PodsStub, provider: KubernetesProvider, tmp_path: Path) -> None:
    stub.faults.append((503, {"Retry-After": "7"}))
    with pytest.raises(ProviderTransient) as exc:
        provider.get("wp-x")
    assert exc.value.retry_after == 7.0 and "HTTP 503" in str(exc.value)
    stub.faults.append((429, {}))
    with pytest.raises(ProviderTransient):
        provider.list("warmpool")
    stub.faults.append((403, {}))
    with pytest.raises(ProviderPermanent, match="RBAC"):
        provider.create(spec(), start=True)
    stub.faults.append((422, {}))
    with pytest.raises(ProviderPermanent, match="HTTP 422.*injected fault"):
        provider.delete("wp-x")

    closed = KubernetesProvider({"namespace": NS, "kubeconfig": kubeconfig(tmp_path, "http://127.0.0.1:9"), "request_timeout_s": 2})
    with pytest.raises(ProviderTransient, match="kubernetes: read pod wp-x failed"):
        closed.get("wp-x")
    broken = KubernetesProvider({"namespace": NS, "kubeconfig": str(tmp_path / "missing")})
    with pytest.raises(ProviderPermanent, match="cannot load the cluster configuration"):
        broken.get("wp-x")


def test_watch_streams_changes_and_relists_after_expiry(stub: PodsStub, provider: KubernetesProvider) -> None:
    first = provider.create(spec(), start=True)
    stub.put_foreign("not-ours", {"app": "db"})
    seen: queue.Queue[Observed | None] = queue.Queue()
    stop = threading.Event()

    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for obs in provider.watch("warmpool", timeout_seconds=20, stop=stop):
                seen.put(obs)
        except BaseException as exc:  # noqa: BLE001 - reported by next_seen
            errors.append(exc)
        finally:
            seen.put(None)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()

    def next_seen() -> tuple[str, str]:
        obs = seen.get(timeout=5)
        assert obs is not None, f"the watch ended early: {errors!r}"
        return obs.ref, obs.state

    assert next_seen() == (first.ref, "provisioning")  # the initial listing
    second = provider.create(spec(), start=True)
    assert next_seen() == (second.ref, "provisioning")
    stub.set_status(second.ref, "Running", ready=False)
    assert next_seen() == (second.ref, "starting")
    stub.set_status(second.ref, "Running", ready=True, ip="10.0.0.2")
    assert next_seen() == (second.ref, "running")
    provider.delete(second.ref)
    assert next_seen() == (second.ref, "deleted")

    stub.expire()  # 410 Gone: the provider lists again and watches from the new listing
    assert next_seen() == (first.ref, "provisioning")
    deadline = time.monotonic() + 5
    while len(watch_requests(stub)) < 2 and time.monotonic() < deadline:  # the new watch is open
        time.sleep(0.01)
    stop.set()
    stub.set_status(first.ref, "Running", ready=True, ip="10.0.0.1")  # one more event lets it see `stop`
    assert next_seen() == (first.ref, "running")
    assert seen.get(timeout=5) is None
    thread.join(timeout=5)
    assert not thread.is_alive()

    watches = watch_requests(stub)
    assert len(watches) == 2 and all(r["query"]["labelSelector"] == "warmpool.dev/owner=warmpool" for r in watches)
    assert all(r["query"].get("resourceVersion") for r in watches)
    lists = [r for r in stub.requests if r["method"] == "GET" and r["path"].endswith("/pods") and "watch" not in r["query"]]
    assert len(lists) == 2  # the initial listing and the one after the expiry
