"""The shared input checks (app/api/hygiene.py) at their boundaries, and tolerant JSON reads on SQLite."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from app.api.hygiene import INT32, INT64, BadInput, check_json, check_message, loads, parse_int
from app.db import make_engine, read_json
from proto.gitpod.v1 import messages_pb2 as gp


def nested(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_is_allowed_up_to_the_limit_and_refused_one_beyond():
    check_json(nested(5), depth_limit=5)
    with pytest.raises(BadInput, match="at most 5 levels"):
        check_json(nested(6), depth_limit=5)


def test_json_deeper_than_the_interpreter_can_parse_is_bad_input_not_recursion_error():
    with pytest.raises(BadInput, match="nested too deeply"):
        loads("[" * 50_000 + "]" * 50_000)


@pytest.mark.parametrize("value", [INT64[0], INT64[1], 0, -1, 1.5])
def test_numbers_within_int64_pass(value):
    check_json({"n": value})


@pytest.mark.parametrize("text", [str(INT64[1] + 1), str(INT64[0] - 1), "NaN", "-Infinity", "1e400", "9" * 5000])
def test_numbers_beyond_int64_or_not_finite_are_refused(text):
    with pytest.raises(BadInput, match="in body"):
        loads('{"n": %s}' % text)
    if len(text) < 100:  # the same values, already decoded, are named by their path
        with pytest.raises(BadInput, match="body.n"):
            check_json({"n": float(text) if text[-1].isalpha() or "e" in text else int(text)})


@pytest.mark.parametrize("text,where", [('{"a": ["x", "\\u0000"]}', "body.a[1]"), ('{"\\ud800": 1}', "a key of body"),
                                        ('{"a": {"b": "\\udfff"}}', "body.a.b")])
def test_strings_and_keys_name_where_the_problem_is(text, where):
    with pytest.raises(BadInput) as info:
        loads(text)
    assert info.value.message.startswith(where)


def test_a_surrogate_pair_written_as_two_escapes_is_a_proper_character():
    assert loads('{"e": "\\ud83d\\ude00"}') == {"e": "\U0001F600"}


def test_malformed_json_is_left_to_the_facade():
    with pytest.raises(json.JSONDecodeError):
        loads("{")


def test_parse_int_bounds():
    assert parse_int(str(INT32[1]), "limit", INT32) == INT32[1]
    for raw in (str(INT32[1] + 1), "99999999999999999999", "ten"):
        with pytest.raises(BadInput, match="limit"):
            parse_int(raw, "limit", INT32)


def test_check_message_walks_repeated_and_nested_fields():
    ok = gp.CreateEnvironmentClassRequest(display_name="small", configuration=[gp.FieldValue(key="image", value="a")])
    check_message(ok)
    bad = gp.CreateEnvironmentClassRequest(display_name="small", configuration=[
        gp.FieldValue(key="image", value="a"), gp.FieldValue(key="cpu", value="1\x00")])
    with pytest.raises(BadInput, match=r"configuration\[1\]\.value contains a NUL byte"):
        check_message(bad)


def test_read_json_replaces_only_lone_surrogates():
    assert read_json('{"a": "\\ud800x", "b": "\\ud83d\\ude00", "c": ["\\udfff"]}') == {
        "a": "\ufffdx", "b": "\U0001F600", "c": ["\ufffd"]}
    assert read_json(b'{"plain": 1}') == {"plain": 1}


def test_sqlite_reads_a_stored_lone_surrogate_as_replacement_character(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'odd.sqlite3'}")
    table = sa.Table("t", sa.MetaData(), sa.Column("doc", sa.JSON))
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t (doc) VALUES (:doc)"), {"doc": '{"image": "\\ud800"}'})
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.doc)).scalar_one() == {"image": "\ufffd"}
    engine.dispose()
