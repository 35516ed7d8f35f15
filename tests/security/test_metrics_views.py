"""Who sees which metrics: an admin or member token its own organization's series only, a `metrics`
token every organization's plus the process-wide ones; Flower's /metrics and /healthcheck (a real
`warmpool flower` process) ask for the same basic auth as the rest of Flower."""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.db import session_scope
from app.models import Instance, Pool
from scripts.testenv import free_port
from tests.conftest import ROOT, make_org, token_for
from tests.security.scoped_clients import bearer, grpc_stub, http  # noqa: F401 - fixtures


def series(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.MULTILINE)}


def add_pool(org_id: str, name: str, phase: str, ready: int) -> None:
    with session_scope() as s:
        pool = Pool(organization_id=org_id, kind="named", name=name, phase=phase)
        s.add(pool)
        s.flush()
        s.add_all(Instance(pool_id=pool.id, organization_id=org_id, state="running") for _ in range(ready))


@pytest.fixture
def two_orgs(db):
    acme, globex = make_org("acme"), make_org("globex")
    add_pool(acme.org_id, "a1", "ready", 2)
    add_pool(acme.org_id, "a2", "pending", 0)
    add_pool(globex.org_id, "g1", "ready", 3)
    return acme, globex


@pytest.mark.parametrize("scope", ["admin", "member"])
def test_a_tenant_token_sees_its_own_organization_only(http, two_orgs, scope):
    acme, _ = two_orgs
    r = http.get("/metrics", headers=bearer(token_for(acme, scope)))
    assert r.status_code == 200, r.text
    got = series(r.text)
    assert got['warmpool_pools{organization="acme",phase="ready"}'] == 1
    assert got['warmpool_pools{organization="acme",phase="pending"}'] == 1
    assert got['warmpool_ready_instances{organization="acme"}'] == 2
    assert "globex" not in r.text
    assert not [k for k in got if not k.startswith("warmpool_")], "process-wide series are the operator's"


def test_a_metrics_token_sees_every_organization(http, two_orgs):
    acme, globex = two_orgs
    r = http.get("/metrics", headers=bearer(token_for(acme, "metrics")))
    assert r.status_code == 200, r.text
    got = series(r.text)
    assert got['warmpool_pools{organization="acme",phase="ready"}'] == 1
    assert got['warmpool_pools{organization="globex",phase="ready"}'] == 1
    assert got['warmpool_ready_instances{organization="acme"}'] == 2
    assert got['warmpool_ready_instances{organization="globex"}'] == 3
    assert any(k.startswith("process_") or k.startswith("python_") for k in got)


def test_a_lease_token_sees_no_metrics(http, two_orgs):
    acme, _ = two_orgs
    r = http.get("/metrics", headers=bearer(token_for(acme, "lease")))
    assert (r.status_code, r.json()["code"]) == (403, "permission_denied")
    assert "'metrics'" in r.json()["message"] and "'member'" in r.json()["message"]


# ---- Flower ------------------------------------------------------------------------------------

@pytest.fixture
def flower(redis_url, tmp_path):
    """`warmpool flower` as a user starts it, with its own credentials, on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMPOOL_")}
    env.update(WARMPOOL_REDIS_URL=redis_url, WARMPOOL_FLOWER__PORT=str(port), WARMPOOL_FLOWER__USER="ops",
               WARMPOOL_FLOWER__PASSWORD="flower-secret", WARMPOOL_ENV="test", WARMPOOL_LOG_LEVEL="WARNING",
               WARMPOOL_DATA_DIR=str(tmp_path), WARMPOOL_SECRET_KEYS=os.environ["WARMPOOL_SECRET_KEYS"])
    exe = Path(sys.executable).with_name("warmpool")
    log = open(tmp_path / "flower.log", "w+")
    proc = subprocess.Popen([str(exe if exe.exists() else ROOT / ".venv/bin/warmpool"), "flower"], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(base + "/healthcheck", timeout=2)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                proc.kill()
                pytest.fail(f"flower did not start:\n{log.read()[-3000:]}")
            time.sleep(0.2)
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_flower_asks_for_credentials_on_metrics_and_healthcheck(flower):
    good = "Basic " + base64.b64encode(b"ops:flower-secret").decode()
    wrong = "Basic " + base64.b64encode(b"ops:guess").decode()
    for path in ("/metrics", "/healthcheck", "/api/workers"):
        for headers in ({}, {"Authorization": wrong}, {"Authorization": "Bearer x"}):
            r = httpx.get(flower + path, headers=headers, timeout=10)
            assert r.status_code == 401, (path, headers, r.status_code)
        r = httpx.get(flower + path, headers={"Authorization": good}, timeout=10)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    assert httpx.get(flower + "/healthcheck", headers={"Authorization": good}, timeout=10).text == "OK"
    assert "flower_" in httpx.get(flower + "/metrics", headers={"Authorization": good}, timeout=10).text
