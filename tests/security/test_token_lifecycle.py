"""Token lifecycle: expired and revoked tokens are refused at every façade (revoking through the API at
once, through the CLI within the auth cache's lifetime); last_used_at is written at most once per
interval, also under concurrent use, on PostgreSQL and SQLite."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from app import auth
from app.db import get_engine, session_scope
from app.domain import tokens
from app.models import ApiToken, utcnow
from config.settings import get_settings
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb
from tests.conftest import make_org, token_for
from tests.security.scoped_clients import bearer, grpc_stub, http  # noqa: F401 - fixtures


def set_cache(monkeypatch, seconds: float) -> None:
    monkeypatch.setenv("WARMPOOL_AUTH_CACHE_SECONDS", str(seconds))
    get_settings.cache_clear()
    auth.clear_cache()


def token_row(token: str) -> ApiToken:
    with session_scope() as s:
        return s.exec(sa.select(ApiToken).where(ApiToken.token_hash == tokens.hash_token(token))).scalar_one()


def every_facade(http, stub, token: str) -> dict[str, tuple[int | str, str]]:
    """The status each façade answers for `token` (and the message of a refusal)."""
    out: dict[str, tuple[int | str, str]] = {}
    r = http.post("/api/gitpod.v1.PrebuildService/ListWarmPools", json={}, headers=bearer(token))
    out["gitpod"] = (r.status_code, r.json().get("message", "") if r.status_code != 200 else "")
    r = http.post("/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Pools", json={}, headers=bearer(token))
    out["lease-connect"] = (r.status_code, r.json().get("message", "") if r.status_code != 200 else "")
    try:
        stub.Pools(pb.PoolsRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
        out["lease-grpc"] = ("ok", "")
    except grpc.RpcError as exc:
        out["lease-grpc"] = (exc.code().name.lower(), exc.details())
    r = http.get("/serverless/v1/podpools", headers=bearer(token))
    out["podpools"] = (r.status_code, r.json()["message"] if r.status_code != 200 else "")
    if r.status_code != 200:
        assert r.json()["code"] == 121049, r.text
    for path in ("/v1/pools", "/v1/tokens", "/metrics"):
        r = http.get(path, headers=bearer(token))
        out[path] = (r.status_code, r.json()["message"] if r.status_code != 200 else "")
    return out


ALL_OK = {"gitpod": 200, "lease-connect": 200, "lease-grpc": "ok", "podpools": 200, "/v1/pools": 200,
          "/v1/tokens": 200, "/metrics": 200}
ALL_REFUSED = {"gitpod": 401, "lease-connect": 401, "lease-grpc": "unauthenticated", "podpools": 401,
               "/v1/pools": 401, "/v1/tokens": 401, "/metrics": 401}


def statuses(answers: dict) -> dict:
    return {k: v[0] for k, v in answers.items()}


def test_an_expired_token_is_refused_everywhere(http, grpc_stub):
    token = token_for(make_org(), "admin", expires_in=timedelta(hours=1))
    assert statuses(every_facade(http, grpc_stub, token)) == ALL_OK
    with session_scope() as s:
        s.execute(sa.update(ApiToken).where(ApiToken.token_hash == tokens.hash_token(token))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    auth.clear_cache()  # as after the cache's lifetime
    answers = every_facade(http, grpc_stub, token)
    assert statuses(answers) == ALL_REFUSED
    assert all("expired" in message for _, message in answers.values()), answers


def test_a_cached_token_is_refused_from_its_expiry_not_the_caches(http, monkeypatch):
    set_cache(monkeypatch, 300)  # far longer than the token lives
    token = token_for(make_org(), "member", expires_in=timedelta(seconds=2))
    assert http.get("/v1/pools", headers=bearer(token)).status_code == 200
    expires_at = token_row(token).expires_at
    deadline = time.monotonic() + 15
    while http.get("/v1/pools", headers=bearer(token)).status_code == 200:
        assert time.monotonic() < deadline, "an expired token was still accepted from the cache"
        time.sleep(0.05)
    assert utcnow() >= expires_at  # refused no earlier than its expiry
    assert utcnow() - expires_at < timedelta(seconds=5)


def test_revoking_through_the_api_refuses_the_token_at_once(http, grpc_stub, monkeypatch):
    set_cache(monkeypatch, 300)
    world = make_org()
    admin, victim = token_for(world, "admin"), token_for(world, "admin")
    assert statuses(every_facade(http, grpc_stub, victim)) == ALL_OK  # now cached for 300 s
    r = http.delete(f"/v1/tokens/{token_row(victim).id}", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["revoked_at"], r.text
    answers = every_facade(http, grpc_stub, victim)
    assert statuses(answers) == ALL_REFUSED
    assert all("revoked" in message for _, message in answers.values()), answers


def test_revoking_from_the_cli_is_honoured_within_the_cache_lifetime(http, monkeypatch, capsys):
    from app.cli import main

    ttl = 1.0
    set_cache(monkeypatch, ttl)
    token = token_for(make_org(), "member")
    assert http.get("/v1/pools", headers=bearer(token)).status_code == 200
    assert main(["token", "revoke", token_row(token).id]) == 0
    revoked = time.monotonic()
    assert "revoked" in capsys.readouterr().out
    while http.get("/v1/pools", headers=bearer(token)).status_code == 200:
        assert time.monotonic() - revoked < ttl + 5, "a revoked token outlived the auth cache"
        time.sleep(0.05)
    assert time.monotonic() - revoked < ttl + 5


# ---- last_used_at --------------------------------------------------------------------------------

class TouchCounter:
    """Counts the touches of api_tokens.last_used_at (the conditional UPDATE) that changed a row, as the
    database reported them; a test's own plain UPDATE is not counted."""

    def __init__(self) -> None:
        self.rows = 0
        self._lock = threading.Lock()

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_TOKENS") and "last_used_at IS NULL" in statement:
            with self._lock:
                self.rows += max(cursor.rowcount, 0)


@pytest.fixture
def touches():
    counter = TouchCounter()
    engine = get_engine()
    event.listen(engine, "after_cursor_execute", counter)
    yield counter
    event.remove(engine, "after_cursor_execute", counter)


def test_last_used_at_is_written_at_most_once_per_interval(http, monkeypatch, touches):
    set_cache(monkeypatch, 0)  # every request reads the token: the worst case for writes
    token = token_for(make_org(), "member")
    assert token_row(token).last_used_at is None
    before = utcnow()
    for _ in range(25):
        assert http.get("/v1/pools", headers=bearer(token)).status_code == 200
    first = token_row(token).last_used_at
    assert touches.rows == 1
    assert first is not None and before <= first <= utcnow()
    # Once the interval has passed (moved back in the database rather than waited for), one more write.
    interval = get_settings().token_touch_seconds
    with session_scope() as s:
        s.execute(sa.update(ApiToken).where(ApiToken.id == token_row(token).id)
                  .values(last_used_at=first - timedelta(seconds=interval + 1)))
    for _ in range(10):
        assert http.get("/v1/pools", headers=bearer(token)).status_code == 200
    assert touches.rows == 2
    assert token_row(token).last_used_at > first


def test_a_cached_token_is_not_even_read(http, monkeypatch, touches):
    set_cache(monkeypatch, 300)
    token = token_for(make_org(), "member")
    reads = []
    engine = get_engine()

    def on_read(conn, cursor, statement, *rest) -> None:
        if "FROM api_tokens" in statement:
            reads.append(statement)

    event.listen(engine, "after_cursor_execute", on_read)
    try:
        for _ in range(20):
            assert http.post("/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Pools", json={},
                             headers=bearer(token)).status_code == 200
    finally:
        event.remove(engine, "after_cursor_execute", on_read)
    assert len(reads) == 1 and touches.rows == 1


def concurrent_verifies(token: str, threads: int = 12) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def verify() -> None:
        try:
            start.wait(10)
            with session_scope() as s:
                tokens.verify(token, session=s, touch_every=60)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    workers = [threading.Thread(target=verify) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    return errors


def test_concurrent_first_uses_write_last_used_at_once_on_postgres(org, touches):
    errors = concurrent_verifies(org.token)
    assert not errors
    assert touches.rows == 1
    assert token_row(org.token).last_used_at is not None


def test_concurrent_first_uses_write_last_used_at_once_on_sqlite(tmp_path, monkeypatch, redis_url):
    from app.db import reset_engine
    from app.migrate import upgrade

    url = f"sqlite:///{tmp_path}/wp.sqlite3"
    monkeypatch.setenv("WARMPOOL_DATABASE_URL", url)
    monkeypatch.setenv("WARMPOOL_REDIS_URL", redis_url)
    monkeypatch.setenv("WARMPOOL_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    reset_engine()
    try:
        upgrade(url)
        token = make_org().token
        counter = TouchCounter()
        event.listen(get_engine(), "after_cursor_execute", counter)
        errors = concurrent_verifies(token)
        assert not errors
        assert counter.rows == 1
        assert token_row(token).last_used_at is not None
    finally:
        reset_engine()
        get_settings.cache_clear()
