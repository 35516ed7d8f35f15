"""The native rollout routes on /v1, in process on real PostgreSQL: status, policy, pause/resume,
rollback, in the {code,message} error shape, and only on the caller's own pools."""
from __future__ import annotations

from app.db import session_scope
from app.models import Pool
from tests.conftest import make_catalog, make_org
from tests.integration.test_native_api import app, bearer, client, expect_error, named_pool  # noqa: F401 (fixtures)


def test_status_policy_pause_resume_and_rollback(client, db):
    w = make_catalog(make_org())
    pool_id = named_pool(w, "rolling", snapshot_id="s2", previous_snapshot_id="s1")
    url = f"/v1/pools/{pool_id}/rollout"

    got = client.get(url, headers=bearer(w))
    assert got.status_code == 200, got.text
    assert got.json()["stage"] == "complete" and got.json()["policy"]["canary"] == 0

    put = client.put(url, json={"canary": 2, "bake_seconds": 300, "max_surge": 1, "max_unavailable": 1,
                                "progress_deadline_seconds": 120}, headers=bearer(w))
    assert put.status_code == 200, put.text
    assert put.json()["policy"] == {"canary": 2, "bake_seconds": 300, "max_surge": 1, "max_unavailable": 1,
                                    "progress_deadline_seconds": 120}
    with session_scope() as s:
        pool = s.get(Pool, pool_id)
        assert pool.rotation_max_surge == 1 and pool.rollout_policy["canary"] == 2

    assert client.post(f"{url}:pause", headers=bearer(w)).json()["paused"] is True
    assert client.post(f"{url}:resume", headers=bearer(w)).json()["paused"] is False

    back = client.post(f"{url}:rollback", headers=bearer(w))
    assert back.status_code == 200, back.text
    assert back.json()["snapshot_id"] == "s1" and back.json()["previous_snapshot_id"] == "s2"


def test_bad_policy_and_no_previous_snapshot_get_clear_errors(client, db):
    w = make_catalog(make_org())
    pool_id = named_pool(w, "fresh")
    url = f"/v1/pools/{pool_id}/rollout"
    expect_error(client.put(url, json={"canary": -1}, headers=bearer(w)), 422, "invalid_argument")
    expect_error(client.put(url, json={"canray": 1}, headers=bearer(w)), 422, "invalid_argument")
    msg = expect_error(client.post(f"{url}:rollback", headers=bearer(w)), 409, "failed_precondition")
    assert "no previous snapshot" in msg
    expect_error(client.post("/v1/pools/not-a-uuid/rollout:pause", headers=bearer(w)), 400, "invalid_argument")


def test_another_organizations_pool_is_not_found(client, db):
    mine, theirs = make_catalog(make_org("mine")), make_catalog(make_org("theirs"))
    pool_id = named_pool(theirs, "theirs", snapshot_id="s2", previous_snapshot_id="s1")
    for method, suffix in (("get", ""), ("post", ":pause"), ("post", ":rollback")):
        r = getattr(client, method)(f"/v1/pools/{pool_id}/rollout{suffix}", headers=bearer(mine))
        expect_error(r, 404, "not_found")
    with session_scope() as s:
        assert s.get(Pool, pool_id).snapshot_id == "s2", "nothing changed on their pool"
