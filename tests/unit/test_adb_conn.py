"""The lease path's async statements keep psycopg's `%(name)s` placeholders; app.adb_conn numbers them for
asyncpg and reads a command tag's row count."""
from __future__ import annotations

from app.adb_conn import _rowcount, convert


def test_each_name_gets_one_number_in_the_order_it_first_appears() -> None:
    sql, names = convert("SELECT %(b)s, %(a)s WHERE x = %(b)s AND y LIKE 'a%%' AND z = %(c)s")
    assert sql == "SELECT $1, $2 WHERE x = $1 AND y LIKE 'a%' AND z = $3"
    assert names == ("b", "a", "c")
    assert convert("SELECT 1") == ("SELECT 1", ())


def test_the_row_count_comes_from_the_command_tag_else_the_rows() -> None:
    assert _rowcount("UPDATE 3", []) == 3
    assert _rowcount("INSERT 0 1", []) == 1
    assert _rowcount("SELECT 2", [1, 2]) == 2
    assert _rowcount(None, [1]) == 1
    assert _rowcount("CREATE TABLE", []) == 0
