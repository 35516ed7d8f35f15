"""An organization whose database already holds a lone surrogate (stored before the edge refused
them) still reads: runners, pools, pod pools and the lease service's Pools answer, with U+FFFD."""
from __future__ import annotations

import sqlalchemy as sa

from app.db import get_engine
from tests.security.conftest import auth

PODPOOLS = "/serverless/v1/podpools"
RES = {"requests": {"cpu": "100m"}}


def poison(sql: str, **params) -> None:
    with get_engine().begin() as conn:
        assert conn.execute(sa.text(sql), params).rowcount == 1


def test_an_org_holding_surrogates_still_lists_runners_and_pools(client, world):
    created = client.post(PODPOOLS, json={"pools": [{"id": "p1", "resources": RES, "image": "rt",
                                                     "labels": {"team": "ml"}}]}, headers=auth(world))
    assert created.json()["code"] == 0, created.text
    # JSON text as an older release stored it; the json column keeps the escape verbatim.
    poison("UPDATE runners SET settings = CAST(:s AS json) WHERE id = :id", s='{"a": "\\ud800"}', id=world.runner_id)
    poison("UPDATE pools SET extra = CAST(:e AS json), labels = CAST(:l AS json) WHERE organization_id = :o",
           e='{"podpool": {"image": "\\ud800x", "labels": {"team": "\\udfff"}}}', l='{"team": "\\ud800"}', o=world.org_id)

    runners = client.get("/v1/runners", headers=auth(world))
    assert runners.status_code == 200, runners.text
    assert runners.json()["runners"][0]["settings"] == {"a": "\ufffd"}
    one = client.get(f"/v1/runners/{world.runner_id}", headers=auth(world))
    assert one.status_code == 200 and one.json()["settings"] == {"a": "\ufffd"}

    pools = client.get("/v1/pools", headers=auth(world))
    assert pools.status_code == 200, pools.text
    assert pools.json()["pools"][0]["spec"]["labels"] == {"team": "\ufffd"}

    query = client.get(PODPOOLS, headers=auth(world))
    assert query.status_code == 200 and query.json()["code"] == 0, query.text
    pool = query.json()["result"]["pools"][0]
    assert (pool["image"], pool["labels"]) == ("\ufffdx", {"team": "\ufffd"})

    leasable = client.post("/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Pools", content=b"{}",
                           headers={"Content-Type": "application/json", **auth(world)})
    assert leasable.status_code == 200, leasable.text
    assert {"key": "team", "value": "\ufffd"} in leasable.json()["pools"][0]["labels"]
