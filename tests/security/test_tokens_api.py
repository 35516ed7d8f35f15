"""/v1/tokens and `warmpool token`: list without hashes or secrets, mint (shown once), revoke; an admin
mints only for its own organization and never the operator's `metrics` scope."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.domain import tokens
from app.models import ApiToken, utcnow
from tests.conftest import make_org, token_for
from tests.security.scoped_clients import bearer, grpc_stub, http  # noqa: F401 - fixtures


def count_tokens() -> int:
    with session_scope() as s:
        return s.execute(sa.select(sa.func.count()).select_from(ApiToken)).scalar_one()


def test_an_admin_mints_lists_and_revokes_its_tokens(http):
    world = make_org()
    admin = token_for(world, "admin")
    r = http.post("/v1/tokens", json={"name": "ci", "scope": "lease", "expires_in_seconds": 3600}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    created = r.json()
    minted = created["token"]
    assert minted.startswith("wp_") and created["scope"] == "lease" and created["name"] == "ci"
    assert timedelta(minutes=59) < datetime.fromisoformat(created["expires_at"]) - utcnow() <= timedelta(hours=1)
    # the minted token works for its scope, and only there
    assert http.post("/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Pools", json={},
                     headers=bearer(minted)).status_code == 200
    assert http.get("/v1/pools", headers=bearer(minted)).status_code == 403

    listed = http.get("/v1/tokens", headers=bearer(admin))
    assert listed.status_code == 200
    rows = {t["id"]: t for t in listed.json()["tokens"]}
    assert created["id"] in rows and len(rows) == 3  # the member token of make_org, the admin one, the new one
    assert set(rows[created["id"]]) == {"id", "name", "prefix", "scope", "created_at", "expires_at", "last_used_at",
                                        "revoked_at"}
    for secret in (minted, admin, world.token, tokens.hash_token(minted), tokens.hash_token(admin)):
        assert secret not in listed.text

    r = http.delete(f"/v1/tokens/{created['id']}", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["revoked_at"] and "token" not in r.json()
    assert http.post("/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Pools", json={},
                     headers=bearer(minted)).status_code == 401
    again = http.delete(f"/v1/tokens/{created['id']}", headers=bearer(admin))  # idempotent, keeps the first time
    assert again.status_code == 200 and again.json()["revoked_at"] == r.json()["revoked_at"]


def test_an_admin_cannot_mint_the_metrics_scope(http):
    admin = token_for(make_org(), "admin")
    before = count_tokens()
    r = http.post("/v1/tokens", json={"scope": "metrics"}, headers=bearer(admin))
    assert r.status_code == 403 and r.json()["code"] == "permission_denied", r.text
    assert "warmpool token create --scope metrics" in r.json()["message"]
    assert count_tokens() == before


@pytest.mark.parametrize("field", ["organization", "organization_id", "org"])
def test_an_admin_cannot_mint_for_another_organization(http, field):
    acme, globex = make_org("acme"), make_org("globex")
    admin = token_for(acme, "admin")
    before = count_tokens()
    r = http.post("/v1/tokens", json={"scope": "admin", field: globex.org_id}, headers=bearer(admin))
    assert r.status_code == 422 and r.json()["code"] == "invalid_argument", r.text
    assert count_tokens() == before
    # and whatever it mints belongs to its own organization
    r = http.post("/v1/tokens", json={"scope": "admin"}, headers=bearer(admin))
    with session_scope() as s:
        assert s.get(ApiToken, r.json()["id"]).organization_id == acme.org_id


def test_another_organizations_tokens_are_invisible_and_not_found(http):
    acme, globex = make_org("acme"), make_org("globex")
    acme_admin = token_for(acme, "admin")
    with session_scope() as s:
        globex_id = s.exec(sa.select(ApiToken.id).where(ApiToken.organization_id == globex.org_id)).scalar_one()
    listed = http.get("/v1/tokens", headers=bearer(acme_admin)).json()["tokens"]
    assert globex_id not in [t["id"] for t in listed]
    r = http.delete(f"/v1/tokens/{globex_id}", headers=bearer(acme_admin))
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert http.get("/v1/pools", headers=bearer(globex.token)).status_code == 200  # still valid


@pytest.mark.parametrize("body", [{"scope": "root"}, {"expires_in_seconds": 0}, {"expires_in_seconds": 10 ** 12},
                                  {"name": "x" * 201}])
def test_bad_token_requests_are_422_and_store_nothing(http, body):
    admin = token_for(make_org(), "admin")
    before = count_tokens()
    r = http.post("/v1/tokens", json=body, headers=bearer(admin))
    assert r.status_code == 422 and r.json()["code"] == "invalid_argument", r.text
    assert count_tokens() == before


def test_the_cli_creates_lists_and_revokes(db, capsys):
    from app.cli import main

    assert main(["token", "create", "--org", "acme", "--scope", "metrics", "--expires-in", "30d", "--name", "prom"]) == 0
    metrics_token = capsys.readouterr().out.strip()
    assert main(["token", "create", "--org", "acme"]) == 0
    default_token = capsys.readouterr().out.strip()
    with session_scope() as s:
        rows = {r.token_hash: r for r in s.exec(sa.select(ApiToken)).scalars()}
    prom = rows[tokens.hash_token(metrics_token)]
    assert prom.scope == "metrics" and prom.name == "prom"
    assert timedelta(days=29, hours=23) < prom.expires_at - utcnow() <= timedelta(days=30)
    assert rows[tokens.hash_token(default_token)].scope == "member"  # the documented default
    assert rows[tokens.hash_token(default_token)].expires_at is None

    assert main(["token", "list", "--org", "acme"]) == 0
    out = capsys.readouterr().out
    assert prom.id in out and "metrics" in out and "active" in out
    assert metrics_token not in out and prom.token_hash not in out

    assert main(["token", "revoke", prom.id]) == 0
    capsys.readouterr()
    assert main(["token", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(prom.id))
    assert "revoked" in line

    assert main(["token", "create", "--org", "acme", "--expires-in", "soon"]) == 2
    assert main(["token", "revoke", "00000000-0000-0000-0000-000000000000"]) == 1
    assert "not found" in capsys.readouterr().err
