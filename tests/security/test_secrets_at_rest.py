"""Issue 9, "secrets at rest": runner secrets are Fernet ciphertext in the raw database row, '***' in every
response (by the provider model's SecretStr fields, not by key words), absent from logs and error messages,
and survive a key rotation after which the old key is gone."""
from __future__ import annotations

import json
import logging
import os
import stat

import pydantic
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from app import cli
from app.db import get_engine
from app.domain.compute import SECRETS_KEY
from tests.conftest import World
from tests.security.conftest import bearer, count, refused, use_env
from workers.providers.base import ProviderPermanent
from workers.providers.catalog import runtime_settings

pytestmark = pytest.mark.postgres
SECRET = "ukc-s3cr3t-never-shown"
UNIKRAFT = {"metro": "fra", "token": SECRET, "default_memory_mb": 128}


def raw_settings(runner_id: str) -> str:
    with get_engine().connect() as conn:
        return conn.execute(sa.text("SELECT settings::text FROM runners WHERE id = :id"), {"id": runner_id}).scalar_one()


def create(client, w: World, name: str = "ukc", settings: dict | None = None) -> dict:
    r = client.post("/v1/runners", json={"name": name, "provider": "unikraft", "settings": settings or UNIKRAFT},
                    headers=bearer(w))
    assert r.status_code == 201, r.text
    return r.json()


def test_an_inline_secret_is_ciphertext_in_the_row_and_masked_in_every_response(client, acme):
    created = create(client, acme)
    raw = raw_settings(created["id"])
    assert SECRET not in raw
    token = json.loads(raw)[SECRETS_KEY]["token"]
    assert Fernet(os.environ["WARMPOOL_SECRET_KEYS"].split(",")[0]).decrypt(token.encode()).decode() == SECRET
    listed = client.get("/v1/runners", headers=bearer(acme))
    one = client.get(f"/v1/runners/{created['id']}", headers=bearer(acme))
    for body in (created, one.json(), listed.json()["runners"][0]):
        assert body["settings"] == {"metro": "fra", "default_memory_mb": 128, "token": "***"}
    assert SECRET not in listed.text + one.text and token not in listed.text + one.text


@pytest.mark.parametrize("key", ["api_key", "credentials", "private_key", "api_token", "password"])
def test_keys_merely_named_like_secrets_are_refused_not_stored(client, acme, key):
    """Masking by key words let `api_key`, `credentials`, `private_key` through: no provider has such a
    setting now, so they are refused before anything is stored rather than stored and shown."""
    for provider in ("fake", "kubernetes", "unikraft"):
        body = {"name": f"r-{provider}", "provider": provider, "settings": {key: SECRET}}
        message = refused(client.post("/v1/runners", json=body, headers=bearer(acme)), f"unknown key {key}")
        assert SECRET not in message
    assert count("runners") == 0


def test_secrets_never_reach_logs_or_error_messages(client, acme, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    created = create(client, acme)
    both = {**UNIKRAFT, "token_env": "WARMPOOL_PROVIDER_SECRET_X"}
    r = client.post("/v1/runners", json={"name": "two", "provider": "unikraft", "settings": both}, headers=bearer(acme))
    assert "token or token_env" in refused(r, "not both") and SECRET not in r.text
    bad = {**UNIKRAFT, "metro": f"https://{SECRET}:{SECRET}@api.fra.unikraft.cloud"}
    r = client.post("/v1/runners", json={"name": "three", "provider": "unikraft", "settings": bad}, headers=bearer(acme))
    assert SECRET not in refused(r, "credentials")
    adapter_settings = runtime_settings("unikraft", json.loads(raw_settings(created["id"])))
    assert adapter_settings["token"] == SECRET  # the adapter, and only the adapter, gets it
    assert SECRET not in caplog.text


def test_rotation_reencrypts_with_the_new_key_and_the_old_key_can_go(client, acme, monkeypatch, capsys):
    old, new = os.environ["WARMPOOL_SECRET_KEYS"].split(",")[0], Fernet.generate_key().decode()
    ids = [create(client, acme, name)["id"] for name in ("a", "b")]
    create(client, acme, "no-secret", {"metro": "fra"})
    use_env(monkeypatch, WARMPOOL_SECRET_KEYS=f"{new},{old}")
    assert cli.main(["secrets", "rotate"]) == 0
    assert "re-encrypted 2 secret(s) of 2 runner(s)" in capsys.readouterr().out
    use_env(monkeypatch, WARMPOOL_SECRET_KEYS=new)  # the old key is removed
    for runner_id in ids:
        stored = json.loads(raw_settings(runner_id))
        token = stored[SECRETS_KEY]["token"].encode()
        assert Fernet(new).decrypt(token).decode() == SECRET
        with pytest.raises(InvalidToken):
            Fernet(old).decrypt(token)
        assert runtime_settings("unikraft", stored)["token"] == SECRET
    one = client.get(f"/v1/runners/{ids[0]}", headers=bearer(acme))
    assert one.json()["settings"]["token"] == "***"


def test_a_secret_whose_key_was_removed_fails_plainly(client, acme, monkeypatch):
    created = create(client, acme)
    use_env(monkeypatch, WARMPOOL_SECRET_KEYS=Fernet.generate_key().decode())
    with pytest.raises(ProviderPermanent, match="cannot be decrypted") as caught:
        runtime_settings("unikraft", json.loads(raw_settings(created["id"])))
    assert SECRET not in str(caught.value)


def test_outside_dev_no_key_means_no_start(monkeypatch):
    from config.settings import Settings

    monkeypatch.delenv("WARMPOOL_SECRET_KEYS", raising=False)
    for env in ("test", "prod"):
        monkeypatch.setenv("WARMPOOL_ENV", env)
        monkeypatch.setenv("WARMPOOL_FLOWER__PASSWORD", "not-the-default")
        with pytest.raises(pydantic.ValidationError, match="WARMPOOL_SECRET_KEYS must be set"):
            Settings(_env_file=None)


def test_dev_makes_one_key_in_the_data_dir_and_keeps_it(monkeypatch, tmp_path):
    from app import crypto
    from config.settings import get_settings

    monkeypatch.delenv("WARMPOOL_SECRET_KEYS", raising=False)
    monkeypatch.setenv("WARMPOOL_ENV", "dev")
    monkeypatch.setenv("WARMPOOL_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        first = crypto.configured_keys()
        token = crypto.encrypt("x")
        path = tmp_path / "data" / crypto.DEV_KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert crypto.configured_keys() == first and crypto.decrypt(token) == "x"
    finally:
        get_settings.cache_clear()
