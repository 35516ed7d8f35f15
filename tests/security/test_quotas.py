"""Issue 9, limits: a tenant's giant pool is refused at every façade that makes pools, in that façade's
own error format and with nothing stored; the 5,000-pool POST is refused whole; the operator raises a
limit (CLI) and the tenant reads it (GET /v1/quota); the reconciler and cold leases stay inside the
instance quota; concurrent creates cannot overshoot the pool count (checked in the database)."""
from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.db import session_scope
from app.domain import leases, pools, quotas, reconciler
from app.domain.states import PoolKind
from app.models import Instance, Pool
from tests.conftest import World, make_catalog, make_org

RES = {"requests": {"cpu": "100m", "memory": "64Mi"}}
PODPOOLS = "/serverless/v1/podpools"
GITPOD = "/api/gitpod.v1.PrebuildService"
LEASES = "/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"
CONNECT = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}


@pytest.fixture
def client(db, effects_log):
    from app.main import create_app

    with TestClient(create_app(dispatcher=False), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def tenant(client) -> World:
    return make_catalog(make_org("tenant"))


def auth(w: World) -> dict[str, str]:
    return {"Authorization": f"Bearer {w.token}"}


def count(table: str, org_id: str) -> int:
    with session_scope() as s:
        return s.execute(sa.text(f"SELECT count(*) FROM {table} WHERE organization_id = :o"), {"o": org_id}).scalar_one()


def set_quota(w: World, **limits: int | None) -> None:
    with session_scope() as s:
        quotas.set_quota(w.org_id, session=s, **limits)


def podpool(pool_id: str, size: int = 1, **fields) -> dict:
    return {"id": pool_id, "size": size, "resources": RES, **fields}


# ---- the giant pool, façade by façade -----------------------------------------------------------

def test_giant_pod_pool_is_refused_with_4104_naming_the_limit_and_nothing_stored(client, tenant, effects_log):
    r = client.post(PODPOOLS, json={"pools": [podpool("giant", size=2147483647)]}, headers=auth(tenant))
    assert r.status_code == 500 and r.json()["code"] == 4104, r.text
    assert "max_pool_size=100" in r.json()["message"] and "2147483647" in r.json()["message"]
    assert count("pools", tenant.org_id) == 0 and count("instances", tenant.org_id) == 0
    assert effects_log == []


def test_pod_pool_update_past_the_limit_is_refused_and_the_pool_unchanged(client, tenant):
    assert client.post(PODPOOLS, json={"pools": [podpool("p", size=1, max_size=2)]}, headers=auth(tenant)).json()["code"] == 0
    with session_scope() as s:  # openYuanrong refuses updates until the engine picked the pool up
        s.execute(sa.update(Pool).values(reconciled_at=sa.func.now() + sa.text("interval '1 second'"), phase="ready"))
    r = client.put(f"{PODPOOLS}/p", json={"size": 101, "max_size": 101}, headers=auth(tenant))
    assert r.status_code == 500 and r.json()["code"] == 4104 and "max_pool_size=100" in r.json()["message"], r.text
    with session_scope() as s:
        assert s.execute(sa.select(Pool.min_size, Pool.max_size)).one() == (1, 2)


def test_gitpod_warm_pool_above_the_quota_is_resource_exhausted_and_nothing_stored(client, tenant, effects_log):
    set_quota(tenant, max_pool_size=5)  # below Gitpod's own bound of 20, so the quota is what refuses
    body = {"projectId": tenant.project_id, "environmentClassId": tenant.env_class_id, "minSize": 1, "maxSize": 10}
    r = client.post(f"{GITPOD}/CreateWarmPool", json=body, headers={**CONNECT, **auth(tenant)})
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted", r.text
    assert "max_size=10" in r.json()["message"] and "max_pool_size=5" in r.json()["message"]
    assert count("pools", tenant.org_id) == 0 and effects_log == []
    # Gitpod's own bound still answers invalid_argument, before the quota is consulted.
    r = client.post(f"{GITPOD}/CreateWarmPool", json={**body, "maxSize": 2147483647}, headers={**CONNECT, **auth(tenant)})
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text


def test_gitpod_update_past_the_quota_is_refused_and_a_pool_above_a_lowered_quota_can_shrink(client, tenant):
    body = {"projectId": tenant.project_id, "environmentClassId": tenant.env_class_id, "minSize": 1, "maxSize": 8}
    r = client.post(f"{GITPOD}/CreateWarmPool", json=body, headers={**CONNECT, **auth(tenant)})
    assert r.status_code == 200, r.text
    pool_id = r.json()["warmPool"]["id"]
    set_quota(tenant, max_pool_size=5)
    grow = client.post(f"{GITPOD}/UpdateWarmPool", json={"warmPoolId": pool_id, "maxSize": 9}, headers={**CONNECT, **auth(tenant)})
    assert grow.status_code == 429 and "max_pool_size=5" in grow.json()["message"], grow.text
    shrink = client.post(f"{GITPOD}/UpdateWarmPool", json={"warmPoolId": pool_id, "maxSize": 7}, headers={**CONNECT, **auth(tenant)})
    assert shrink.status_code == 200, shrink.text
    with session_scope() as s:
        assert s.get(Pool, pool_id).max_size == 7


def test_named_pool_above_the_quota_is_refused_in_the_domain_and_nothing_stored(tenant):
    with pytest.raises(quotas.QuotaExceeded) as caught, session_scope() as s:
        pools.insert_pool(pools.new_pool(tenant.org_id, kind=PoolKind.NAMED, name="n", min_size=0, max_size=10**6),
                          session=s, conflict="exists")
    assert caught.value.limit == "max_pool_size" and caught.value.code == "resource_exhausted"
    assert count("pools", tenant.org_id) == 0


def test_pools_whose_sizes_sum_past_max_instances_are_refused(tenant):
    set_quota(tenant, max_instances=10)
    with session_scope() as s:
        pools.insert_pool(pools.new_pool(tenant.org_id, kind=PoolKind.NAMED, name="a", min_size=0, max_size=6),
                          session=s, conflict="exists")
    with pytest.raises(quotas.QuotaExceeded) as caught, session_scope() as s:
        pools.insert_pool(pools.new_pool(tenant.org_id, kind=PoolKind.NAMED, name="b", min_size=0, max_size=3,
                                         stopped_size=2), session=s, conflict="exists")
    assert caught.value.limit == "max_instances" and "max_instances=10" in caught.value.message
    assert count("pools", tenant.org_id) == 1


# ---- the 5,000-pool POST ------------------------------------------------------------------------

def test_the_5000_pool_post_is_refused_whole_and_fast_with_nothing_stored(client, tenant, effects_log):
    body = json.dumps({"pools": [podpool(f"p{i}") for i in range(5000)]})
    began = time.monotonic()
    r = client.post(PODPOOLS, content=body, headers={**auth(tenant), "Content-Type": "application/json"})
    took = time.monotonic() - began
    assert r.status_code == 500 and r.json()["code"] == 4104, r.text
    assert "5000 pools" in r.json()["message"] and "max_pools_per_request=100" in r.json()["message"]
    assert count("pools", tenant.org_id) == 0 and effects_log == []
    assert took < 10, f"refusing took {took:.1f}s"  # the attack ran past a 30 s client timeout


def test_a_request_that_would_pass_max_pools_is_refused_whole(client, tenant):
    set_quota(tenant, max_pools=3)
    assert client.post(PODPOOLS, json={"pools": [podpool("a")]}, headers=auth(tenant)).json()["code"] == 0
    r = client.post(PODPOOLS, json={"pools": [podpool(f"b{i}") for i in range(3)]}, headers=auth(tenant))
    assert r.json()["code"] == 4104 and "max_pools=3" in r.json()["message"], r.text
    assert count("pools", tenant.org_id) == 1


# ---- the operator raises a limit; the tenant reads it ---------------------------------------------

def test_operator_override_raises_a_limit_and_the_tenant_reads_it(client, tenant, capsys):
    from app.cli import main

    refused = client.post(PODPOOLS, json={"pools": [podpool("big", size=150)]}, headers=auth(tenant))
    assert refused.json()["code"] == 4104 and count("pools", tenant.org_id) == 0
    assert main(["quota", "set", "--org", "tenant", "--max-pool-size", "200", "--max-instances", "5000"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["limits"]["max_pool_size"] == 200 and shown["overridden"] == ["max_instances", "max_pool_size"]
    assert client.post(PODPOOLS, json={"pools": [podpool("big", size=150)]}, headers=auth(tenant)).json()["code"] == 0

    mine = client.get("/v1/quota", headers=auth(tenant))
    assert mine.status_code == 200, mine.text
    assert mine.json() == {"limits": {"max_pool_size": 200, "max_pools": 200, "max_instances": 5000,
                                      "max_pools_per_request": 100, "max_creating": 10,
                                      "lease_rate": 0, "lease_burst": 0},
                           "usage": {"pools": 1, "admitted_instances": 150, "instances": 0}}
    # Another organization keeps the defaults; the override is the operator's, per organization.
    other = make_org("other")
    assert client.get("/v1/quota", headers=auth(other)).json()["limits"]["max_pool_size"] == 100
    assert main(["quota", "set", "--org", "tenant", "--max-pool-size", "default"]) == 0
    assert json.loads(capsys.readouterr().out)["limits"]["max_pool_size"] == 100
    assert main(["quota", "show", "--org", "nobody"]) == 1


def test_tenants_have_no_way_to_write_their_quota(client, tenant):
    for method in ("put", "post", "patch", "delete"):
        r = client.request(method, "/v1/quota", json={"limits": {"max_pool_size": 10**6}}, headers=auth(tenant))
        assert r.status_code == 405, (method, r.text)
    with session_scope() as s:
        assert quotas.quota_of(tenant.org_id, session=s).max_pool_size == 100


# ---- what the engine creates stays inside ---------------------------------------------------------

def test_reconciler_creates_no_instance_beyond_max_instances(tenant):
    with session_scope() as s:
        pool = pools.insert_pool(pools.new_pool(tenant.org_id, kind=PoolKind.NAMED, name="n", min_size=8, max_size=8,
                                                runner_id=tenant.runner_id), session=s, conflict="exists")
    set_quota(tenant, max_instances=3)  # lowered after the pool was admitted
    for _ in range(2):
        with session_scope() as s:
            reconciler.reconcile(pool.id, session=s)
    assert count("instances", tenant.org_id) == 3


def test_a_cold_lease_past_max_instances_is_resource_exhausted(client, tenant):
    with session_scope() as s:
        pool = pools.insert_pool(pools.new_pool(tenant.org_id, kind=PoolKind.NAMED, name="cold", min_size=0, max_size=3,
                                                runner_id=tenant.runner_id, empty_policy="cold"), session=s, conflict="x")
        s.add_all([Instance(pool_id=pool.id, organization_id=tenant.org_id, state="stopped", desired_state="stopped")
                   for _ in range(2)])
    set_quota(tenant, max_instances=2)  # lowered below what the pool was admitted with: room for none
    r = client.post(f"{LEASES}/Lease", json={"pool": "cold"}, headers={**CONNECT, **auth(tenant)})
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted", r.text
    assert "max_instances" in r.json()["message"]
    assert count("instances", tenant.org_id) == 2
    with pytest.raises(quotas.QuotaExceeded), session_scope() as s:
        leases.lease(tenant.org_id, "cold", session=s)


# ---- concurrency: the count is checked in the database -------------------------------------------

def test_concurrent_creates_never_overshoot_max_pools(tenant):
    set_quota(tenant, max_pools=3)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def create(i: int) -> None:
        barrier.wait()
        try:
            with session_scope() as s:
                pools.insert_pool(pools.new_pool(tenant.org_id, kind=PoolKind.NAMED, name=f"c{i}", min_size=0, max_size=1),
                                  session=s, conflict="exists")
            outcomes.append("created")
        except quotas.QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert count("pools", tenant.org_id) == 3
