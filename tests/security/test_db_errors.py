"""Database errors a request's values cause are domain errors on real PostgreSQL, so every façade
answers them with its invalid-argument (or already-exists) code instead of an internal error."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app.api.hygiene import input_errors
from app.db import session_scope
from app.domain.errors import AlreadyExists, InvalidArgument
from app.models import Runner


def test_data_error_is_invalid_argument(db):
    with pytest.raises(InvalidArgument, match="cannot be stored"):
        with input_errors(), session_scope() as s:
            s.execute(sa.text("SELECT CAST(:v AS integer)"), {"v": "99999999999999999999"})


def test_a_nul_byte_reaching_postgres_is_invalid_argument(db, world):
    with pytest.raises(InvalidArgument):
        with input_errors(), session_scope() as s:
            s.add(Runner(organization_id=world.org_id, name="a\x00b", provider="fake", settings={}))


def test_unique_violation_is_already_exists_and_foreign_key_violation_invalid_argument(db, world):
    with pytest.raises(AlreadyExists):
        with input_errors(), session_scope() as s:
            s.add(Runner(organization_id=world.org_id, name="fake", provider="fake", settings={}))
    with pytest.raises(InvalidArgument, match="does not exist"):
        with input_errors(), session_scope() as s:
            s.add(Runner(organization_id=str(uuid.uuid4()), name="orphan", provider="fake", settings={}))


def test_other_database_errors_are_left_alone(db):
    with pytest.raises(sa.exc.ProgrammingError):
        with input_errors(), session_scope() as s:
            s.execute(sa.text("SELECT * FROM no_such_table"))


def test_the_edge_core_answers_a_real_data_error_as_invalid_argument_on_every_wire(db):
    from app.api import core

    def overflow(*, session):
        session.execute(sa.text("SELECT CAST(:v AS integer)"), {"v": "99999999999999999999"})

    with pytest.raises(InvalidArgument) as raised:
        core.transaction(overflow)
    codes = {wire: core.map_error(raised.value, wire).body()["code"] for wire in core.WIRES if wire != core.GRPC}
    assert codes == {core.CONNECT: "invalid_argument", core.NATIVE: "invalid_argument", core.PODPOOLS: 4104}
    assert core.map_error(raised.value, core.GRPC).code.name == "INVALID_ARGUMENT"


def test_an_unreachable_database_is_unavailable_and_its_address_is_not_told(db, monkeypatch):
    from app import db as database
    from app.api import core
    from app.domain.errors import Unavailable
    from scripts.testenv import free_port

    dead = database.make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres")
    with monkeypatch.context() as patched, pytest.raises(Unavailable) as raised:
        patched.setattr(database, "get_engine", lambda: dead)
        core.transaction(lambda *, session: session.execute(sa.text("SELECT 1")))
    refusal = core.map_error(raised.value, core.NATIVE)
    assert (refusal.http_status, refusal.code) == (503, "unavailable")
    assert "127.0.0.1" not in refusal.message
    dead.dispose()
