"""Issue 9, "who may configure compute", replayed as the attacker did it (an API token of one organization,
real PostgreSQL and Redis): commands on the worker host through runner settings, an environment class and
a pod-pool template, and secrets sent out through a runner URL or `token_env`. Each is refused in the
façade's own error format, and the database is checked to hold nothing of it."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import cli
from app.db import session_scope
from app.domain import tenancy
from app.domain.errors import InvalidArgument
from app.models import Runner
from tests.conftest import World
from tests.security.conftest import bearer, count, refused, use_env
from workers.providers.base import InstanceSpec, ProviderError, ProviderPermanent
from workers.providers.registry import provider_for

pytestmark = pytest.mark.postgres
RCE = "sh -c \"id > pwned.txt; exec python3 -m http.server {port} --bind 127.0.0.1\""
PODPOOLS = "/serverless/v1/podpools"
CREATE_CLASS = "/api/gitpod.v1.RunnerConfigurationService/CreateEnvironmentClass"


@pytest.fixture
def dev(monkeypatch):
    """WARMPOOL_ENV=dev: the one place `local` exists, so the refusals below are the model's, not the env's."""
    use_env(monkeypatch, WARMPOOL_ENV="dev")


def local_runner(w: World) -> str:
    with session_scope() as s:
        return tenancy.create_runner(w.org_id, "local", "local", {}, session=s).id


# ---- 1. commands on the worker host ---------------------------------------------------------------

def test_rce_through_runner_settings_is_refused_on_v1_and_nothing_is_stored(client, acme, dev):
    body = {"name": "l", "provider": "local", "settings": {"command": RCE}}
    message = refused(client.post("/v1/runners", json=body, headers=bearer(acme)), "operator configuration")
    assert "WARMPOOL_PROVIDERS__LOCAL__COMMAND" in message and "pwned" not in message
    for settings in ({"root": "/"}, {"ready_timeout": 1, "cmd": "id"}):
        refused(client.post("/v1/runners", json={**body, "settings": settings}, headers=bearer(acme)), "settings")
    assert count("runners") == 0


def test_rce_through_runner_settings_is_refused_by_the_cli_and_nothing_is_stored(db, dev, capsys):
    code = cli.main(["runner", "create", "l", "--provider", "local", "--setting", f"command={RCE}", "--org", "acme"])
    err = capsys.readouterr().err
    assert code == 2 and "operator configuration" in err and "Traceback" not in err
    assert count("runners") == 0


def test_local_exists_only_under_dev(client, acme):
    message = refused(client.post("/v1/runners", json={"name": "l", "provider": "local"}, headers=bearer(acme)),
                      "not offered")
    assert "WARMPOOL_ENV=dev" in message
    assert count("runners") == 0


def test_the_operator_chooses_the_providers(client, acme, monkeypatch):
    use_env(monkeypatch, WARMPOOL_PROVIDERS__ENABLED="kubernetes")
    refused(client.post("/v1/runners", json={"name": "f", "provider": "fake"}, headers=bearer(acme)), "offered are kubernetes")
    assert count("runners") == 0


def test_rce_through_an_environment_class_configuration_is_refused(client, acme, dev):
    runner_id = local_runner(acme)
    body = {"runnerId": runner_id, "displayName": "pwn", "configuration": [{"key": "command", "value": RCE}]}
    r = client.post(CREATE_CLASS, json=body, headers={**bearer(acme), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text
    assert "operator configuration" in r.json()["message"]
    assert count("environment_classes") == 0


def test_a_stored_command_is_never_run(db, acme, dev, tmp_path):
    """A runner row written before this check (or by SQL) cannot bring a command back: the adapter is built
    only from settings that pass the model, and the local process command is the operator's."""
    with session_scope() as s:
        s.add(Runner(organization_id=acme.org_id, name="legacy", provider="local", settings={"command": RCE}))
    with session_scope() as s:
        legacy = s.exec(sa.select(Runner).where(Runner.name == "legacy")).scalar_one()
    with pytest.raises(ProviderPermanent, match="operator configuration"):
        provider_for(legacy.provider, legacy.settings, key=legacy.id)


def test_local_children_ignore_template_commands_and_get_a_scrubbed_environment(db, dev, monkeypatch, tmp_path):
    from workers.providers.local import LocalProvider

    monkeypatch.setenv("WARMPOOL_PROVIDER_SECRET_UKC", "s3cr3t")
    operator = ("sh -c 'env > {dir}/env.txt; exec python3 -m http.server {port} --bind 127.0.0.1'")
    provider = LocalProvider({"root": str(tmp_path / "local"), "command": operator})
    obs = provider.create(InstanceSpec("i1", "p1", "warmpool", template={"command": "touch pwned"}), start=True)
    try:
        files = tmp_path / "local" / "instances" / obs.ref / "files"
        env = dict(line.split("=", 1) for line in (files / "env.txt").read_text().splitlines() if "=" in line)
        assert not (files / "pwned").exists() and not Path("pwned").exists()
        assert "PORT" in env and "PATH" in env
        assert not [k for k in env if k.startswith("WARMPOOL_")], sorted(env)
        assert "s3cr3t" not in (files / "env.txt").read_text()
    finally:
        provider.delete(obs.ref)


POD = {"id": "pwn", "size": 1, "image": "alpine:3", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
       "volume_mounts": json.dumps([{"name": "root", "mountPath": "/host"}])}


def test_a_host_path_pod_template_is_refused_unless_the_operator_allows_it(client, acme, monkeypatch):
    with session_scope() as s:
        tenancy.create_runner(acme.org_id, "k8s", "kubernetes", {}, session=s)
    pool = {**POD, "volumes": json.dumps([{"name": "root", "hostPath": {"path": "/"}}])}
    r = client.post(PODPOOLS, json={"pools": [pool]}, headers=bearer(acme))
    assert r.json()["code"] != 0 and "hostPath volumes are not allowed" in r.text, r.text
    assert "WARMPOOL_PROVIDERS__KUBERNETES__VOLUME_TYPES" in r.text
    assert count("pools") == 0
    use_env(monkeypatch, WARMPOOL_PROVIDERS__KUBERNETES__VOLUME_TYPES="emptyDir,hostPath")
    r = client.post(PODPOOLS, json={"pools": [pool]}, headers=bearer(acme))
    assert r.json()["code"] == 0 and count("pools") == 1, r.text


@pytest.mark.parametrize("template,needle", [
    ({"image": "alpine", "hostNetwork": "true"}, "host namespaces"),
    ({"image": "alpine", "privileged": "true"}, "host namespaces"),
    ({"image": "alpine", "securityContext": "{\"privileged\": true}"}, "host namespaces"),
    ({"image": "alpine", "annotations": {"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}},
     "confinement"),
    ({"image": "alpine", "volumes": [{"name": "s", "secret": {"secretName": "other-tenant"}}]}, "secret volumes"),
])
def test_kubernetes_templates_cannot_ask_for_the_host(db, acme, template, needle):
    from app.domain import compute

    with pytest.raises(InvalidArgument, match=needle):
        compute.check_template("kubernetes", template)


def test_a_kubernetes_runner_gets_only_the_operators_namespaces_and_no_cluster_credentials(client, acme):
    for settings, needle in (({"namespace": "kube-system"}, "not offered here"),
                             ({"in_cluster": True}, "WARMPOOL_PROVIDERS__KUBERNETES__IN_CLUSTER"),
                             ({"kubeconfig": "/etc/kubernetes/admin.conf"}, "operator configuration")):
        body = {"name": "k", "provider": "kubernetes", "settings": settings}
        refused(client.post("/v1/runners", json=body, headers=bearer(acme)), needle)
    assert count("runners") == 0


# ---- 2. secrets sent out --------------------------------------------------------------------------

@pytest.mark.parametrize("settings,needle", [
    ({"metro": "http://127.0.0.1:18999", "token_env": "WARMPOOL_PROVIDER_SECRET_UKC"}, "'127.0.0.1:18999' is not on"),
    ({"metro": "https://attacker.example/v1"}, "'attacker.example' is not on"),
    ({"metro": "https://api.fra.unikraft.cloud.attacker.example"}, "not on this deployment's allow-list"),
    ({"metro": "file:///etc/passwd"}, "http:// or https://"),
    ({"metro": "https://user:pw@api.fra.unikraft.cloud"}, "credentials"),
    ({"metro": "fra", "token_env": "WARMPOOL_DATABASE_URL"}, "WARMPOOL_PROVIDER_SECRET_"),
    ({"metro": "fra", "token_env": "HOME"}, "WARMPOOL_PROVIDER_SECRET_"),
])
def test_exfiltration_through_runner_settings_is_refused(client, acme, settings, needle):
    body = {"name": "u", "provider": "unikraft", "settings": settings}
    message = refused(client.post("/v1/runners", json=body, headers=bearer(acme)), needle)
    assert "pw@" not in message
    assert count("runners") == 0


def test_allowed_hosts_admit_exactly_what_the_operator_lists(db, monkeypatch):
    from workers.providers.models import check_url

    use_env(monkeypatch, WARMPOOL_PROVIDERS__ALLOWED_HOSTS="*.unikraft.cloud,127.0.0.1:9000")
    assert check_url("https://api.fra.unikraft.cloud/v1") and check_url("http://127.0.0.1:9000")
    for url in ("https://unikraft.cloud", "http://127.0.0.1:9001", "https://evilunikraft.cloud", "ftp://127.0.0.1:9000"):
        with pytest.raises(ValueError):
            check_url(url)


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with a redirect to `target` (the allowed host) or records it (the other one)."""

    target = ""
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.target:
            self.send_response(307)
            self.send_header("Location", self.target + self.path)
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status":"success","data":{"instances":[]}}')

    do_POST = do_DELETE = do_PUT = do_GET

    def log_message(self, *args) -> None:
        pass


def serve(seen: list[str], target: str = "") -> ThreadingHTTPServer:
    handler = type("H", (Recorder,), {"seen": seen, "target": target})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_redirect_off_the_allow_list_is_not_followed(client, acme, monkeypatch):
    elsewhere_seen, allowed_seen = [], []
    elsewhere = serve(elsewhere_seen)
    allowed = serve(allowed_seen, target=f"http://127.0.0.1:{elsewhere.server_port}")
    try:
        use_env(monkeypatch, WARMPOOL_PROVIDERS__ALLOWED_HOSTS=f"127.0.0.1:{allowed.server_port}",
                WARMPOOL_PROVIDER_SECRET_UKC="s3cr3t")
        body = {"name": "u", "provider": "unikraft", "settings": {
            "metro": f"http://127.0.0.1:{allowed.server_port}", "token_env": "WARMPOOL_PROVIDER_SECRET_UKC",
            "timeout_s": 2}}
        r = client.post("/v1/runners", json=body, headers=bearer(acme))
        assert r.status_code == 201, r.text
        with session_scope() as s:
            runner = s.get(Runner, r.json()["id"])
        with pytest.raises(ProviderError):
            provider_for(runner.provider, runner.settings, key=runner.id).get("00000000-0000-0000-0000-000000000000")
        assert allowed_seen and elsewhere_seen == []
    finally:
        allowed.shutdown()
        elsewhere.shutdown()


def test_a_withdrawn_host_stops_a_stored_runner(db, acme, monkeypatch):
    use_env(monkeypatch, WARMPOOL_PROVIDERS__ALLOWED_HOSTS="127.0.0.1:18999")
    with session_scope() as s:
        runner = tenancy.create_runner(acme.org_id, "u", "unikraft", {"metro": "http://127.0.0.1:18999"}, session=s)
        stored, runner_id = dict(runner.settings), runner.id
    use_env(monkeypatch, WARMPOOL_PROVIDERS__ALLOWED_HOSTS="*.unikraft.cloud")
    with pytest.raises(ProviderPermanent, match="not on this deployment's allow-list"):
        provider_for("unikraft", stored, key=runner_id)
