"""The edge core's one error table (app.api.core), wire by wire: every domain error and every kind of
database error answers the same on Connect, gRPC, /v1 and the pod-pool API, as written out here."""
from __future__ import annotations

import logging

import grpc
import pytest
import sqlalchemy as sa
from connectrpc.code import Code

from app.api import core
from app.domain import errors

SC = grpc.StatusCode


class Orig(Exception):
    """Stands in for a driver exception: what app.db reads is its text and its SQLSTATE."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def db_error(cls: type, message: str, sqlstate: str | None = None) -> Exception:
    return cls("SELECT 1", {}, Orig(message, sqlstate))


class Mystery(errors.DomainError):
    code = "no_such_code"


# (what is raised, Connect code, gRPC status, /v1 (status, code), pod pools (HTTP status, code, message))
CASES = [
    (errors.InvalidArgument("bad"), Code.INVALID_ARGUMENT, SC.INVALID_ARGUMENT, (400, "invalid_argument"),
     (500, 4104, "bad. check input parameters")),
    (errors.NotFound("gone"), Code.NOT_FOUND, SC.NOT_FOUND, (404, "not_found"),
     (404, 4120, "gone. check input parameters")),
    (errors.AlreadyExists("twice"), Code.ALREADY_EXISTS, SC.ALREADY_EXISTS, (409, "already_exists"),
     (500, 4104, "twice. check input parameters")),
    (errors.FailedPrecondition("not now"), Code.FAILED_PRECONDITION, SC.FAILED_PRECONDITION,
     (409, "failed_precondition"), (500, 4104, "not now. check input parameters")),
    (errors.ResourceExhausted("full"), Code.RESOURCE_EXHAUSTED, SC.RESOURCE_EXHAUSTED, (429, "resource_exhausted"),
     (500, 4104, "full. check input parameters")),
    (errors.RateLimited("slow down"), Code.RESOURCE_EXHAUSTED, SC.RESOURCE_EXHAUSTED, (429, "resource_exhausted"),
     (500, 4104, "slow down. check input parameters")),
    (errors.Aborted("lost"), Code.ABORTED, SC.ABORTED, (409, "aborted"), (500, 4104, "lost. check input parameters")),
    (errors.PermissionDenied("scope"), Code.PERMISSION_DENIED, SC.PERMISSION_DENIED, (403, "permission_denied"),
     (403, 121049, "scope")),
    (errors.Unauthenticated("who"), Code.UNAUTHENTICATED, SC.UNAUTHENTICATED, (401, "unauthenticated"),
     (401, 121049, "who")),
    (errors.Unavailable("later"), Code.UNAVAILABLE, SC.UNAVAILABLE, (503, "unavailable"), (500, 150500, "later")),
    (errors.ProviderFailed("cloud"), Code.UNAVAILABLE, SC.UNAVAILABLE, (502, "provider_error"), (500, 150500, "cloud")),
]
INTERNAL = "internal error; the server log has the details"


@pytest.mark.parametrize(("exc", "connect", "status", "native", "podpool"), CASES, ids=lambda v: type(v).__name__)
def test_each_domain_error_on_each_wire(exc, connect, status, native, podpool):
    assert core.map_error(exc, core.CONNECT).code is connect
    assert core.connect_error(exc).code is connect and core.connect_error(exc).message == exc.message
    assert core.map_error(exc, core.GRPC).code is status
    on_v1 = core.map_error(exc, core.NATIVE)
    assert (on_v1.http_status, on_v1.body()) == (native[0], {"code": native[1], "message": exc.message})
    on_podpools = core.map_error(exc, core.PODPOOLS)
    assert (on_podpools.http_status, on_podpools.body()) == (podpool[0], {"code": podpool[1], "message": podpool[2]})


def test_every_domain_error_class_has_a_row():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.DomainError) and c is not errors.DomainError]
    assert {c.code for c in classes} <= set(core.TABLE)
    assert {type(exc) for exc, *_ in CASES} == set(classes)


def test_a_retry_hint_goes_out_as_retry_after_and_grpc_trailers():
    exc = errors.RateLimited("slow down", retry_after=2.2)
    for wire in (core.CONNECT, core.NATIVE, core.PODPOOLS):
        assert core.map_error(exc, wire).headers()["Retry-After"] == "3", wire
    grpc_refusal = core.map_error(exc, core.GRPC)
    assert grpc_refusal.headers() == {} and dict(grpc_refusal.trailers()) == {
        "retry-after": "3", "grpc-retry-pushback-ms": "3000"}
    assert core.map_error(errors.ResourceExhausted("full"), core.CONNECT).headers() == {}, "no hint, no header"


def test_only_native_401_asks_for_a_bearer_token():
    assert core.map_error(errors.Unauthenticated("x"), core.NATIVE).headers() == {"WWW-Authenticate": "Bearer"}
    assert core.map_error(errors.NotFound("x"), core.NATIVE).headers() == {}
    assert core.map_error(errors.Unauthenticated("x"), core.PODPOOLS).headers() == {}


@pytest.mark.parametrize("wire", core.WIRES)
def test_a_data_error_is_invalid_argument_on_every_wire(wire):
    exc = db_error(sa.exc.DataError, "value too long for type character varying(200)", "22001")
    refusal = core.map_error(exc, wire)
    expected = {core.CONNECT: Code.INVALID_ARGUMENT, core.GRPC: SC.INVALID_ARGUMENT,
                core.NATIVE: "invalid_argument", core.PODPOOLS: 4104}
    assert refusal.code == expected[wire]
    assert refusal.message.startswith("a value in the request cannot be stored: value too long")


@pytest.mark.parametrize("wire", core.WIRES)
def test_an_unknown_domain_error_is_a_server_error_on_every_wire(wire, caplog):
    with caplog.at_level(logging.ERROR, logger="app.api.core"):
        refusal = core.map_error(Mystery("odd"), wire, what="a test")
    expected = {core.CONNECT: Code.UNKNOWN, core.GRPC: SC.UNKNOWN, core.NATIVE: "unknown", core.PODPOOLS: 150500}
    assert refusal.code == expected[wire] and refusal.message == "odd"
    assert refusal.http_status in (None, 500)  # Connect answers UNKNOWN with 500 itself; gRPC has no HTTP status
    assert "no_such_code" in caplog.text


@pytest.mark.parametrize(("exc", "name"), [
    (db_error(sa.exc.IntegrityError, 'duplicate key value violates unique constraint "uq_runner_name"', "23505"),
     "already_exists"),
    (db_error(sa.exc.IntegrityError, "UNIQUE constraint failed: runners.organization_id, runners.name"),
     "already_exists"),
    (db_error(sa.exc.IntegrityError, "insert or update violates foreign key constraint", "23503"), "invalid_argument"),
    (db_error(sa.exc.IntegrityError, "NOT NULL constraint failed: runners.name"), "invalid_argument"),
    (db_error(sa.exc.IntegrityError, "some other integrity problem", "23P01"), "internal"),
    (db_error(sa.exc.OperationalError, "deadlock detected", "40P01"), "aborted"),
    (db_error(sa.exc.OperationalError, "could not serialize access", "40001"), "aborted"),
    (db_error(sa.exc.OperationalError, "index row size 9000 exceeds btree version 4 maximum 2704", "54000"),
     "invalid_argument"),
    (db_error(sa.exc.OperationalError, 'connection to server at "10.0.0.5", port 5432 failed', "08006"),
     "unavailable"),
    (sa.exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"), "unavailable"),
    (db_error(sa.exc.ProgrammingError, 'relation "nope" does not exist', "42P01"), "internal"),
    (RuntimeError("a bug"), "internal"),
])
def test_database_and_other_errors(exc, name):
    assert core.classify(exc)[0] == name
    on_v1 = core.map_error(exc, core.NATIVE)
    assert on_v1.code == name and on_v1.http_status == core.TABLE[name].http
    if name == "unavailable":  # the database's address is not the caller's business
        assert "10.0.0.5" not in on_v1.message and "retry later" in on_v1.message


@pytest.mark.parametrize("wire", core.WIRES)
def test_an_unexpected_error_is_internal_logged_and_never_echoed(wire, caplog):
    with caplog.at_level(logging.ERROR, logger="app.api.core"):
        refusal = core.map_error(RuntimeError("secret=hunter2"), wire, what="the test call")
    assert "hunter2" not in refusal.message
    assert refusal.message == ("internal system error; the server log has the details" if wire == core.PODPOOLS
                               else INTERNAL)
    assert refusal.code == {core.CONNECT: Code.INTERNAL, core.GRPC: SC.INTERNAL, core.NATIVE: "internal",
                            core.PODPOOLS: 150500}[wire]
    assert "the test call" in caplog.text and "hunter2" in caplog.text  # the log has the details


def test_stainless_may_retry_only_what_a_retry_can_fix():
    final = {name for name, row in core.TABLE.items() if row.final}
    assert final == {"invalid_argument", "not_found", "already_exists", "failed_precondition", "resource_exhausted",
                     "permission_denied", "unauthenticated"}


def test_a_connect_error_passes_through_and_an_unknown_wire_is_refused():
    from connectrpc.errors import ConnectError

    original = ConnectError(Code.OUT_OF_RANGE, "x")
    assert core.connect_error(original) is original
    with pytest.raises(ValueError, match="unknown wire"):
        core.map_error(errors.NotFound("x"), "smoke-signals")


def test_connect_http_statuses_are_the_runtimes():
    """The edge writes some Connect answers itself (before a handler runs): with the status connectrpc
    gives the same code when a handler raises it."""
    from connectrpc._protocol import ConnectWireError

    for code, status in core.CONNECT_HTTP.items():
        assert ConnectWireError(code, "", ()).to_http_status().code == status, code
    assert set(core.CONNECT_HTTP) == set(Code)


@pytest.mark.parametrize(("wire", "kind", "status", "body"), [
    ("connect", "unauthenticated", 401, {"code": "unauthenticated", "message": "m"}),
    ("connect", "invalid_param", 400, {"code": "invalid_argument", "message": "m"}),
    ("connect", "too_large", 429, {"code": "resource_exhausted", "message": "m"}),
    ("podpools", "unauthenticated", 401, {"code": 121049, "message": "m"}),
    ("podpools", "invalid_param", 500, {"code": 4104, "message": "m. check input parameters"}),
    ("podpools", "invalid_body", 500, {"code": 130600, "message": "invalid JSON body: m"}),
    ("podpools", "too_large", 413, {"code": 4104, "message": "m. check input parameters"}),
    ("native", "unauthenticated", 401, {"code": "unauthenticated", "message": "m"}),
    ("native", "invalid_body", 400, {"code": "invalid_argument", "message": "m"}),
    ("native", "too_large", 413, {"code": "too_large", "message": "m"}),
])
def test_the_input_guards_refusals_follow_the_table(wire, kind, status, body):
    from app.api.edge import refusal

    got_status, got_body, headers = refusal(wire, kind, "m")
    assert (got_status, got_body) == (status, body)
    assert headers == ([(b"www-authenticate", b"Bearer")] if (wire, status) == ("native", 401) else [])
