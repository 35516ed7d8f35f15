"""app.adb keeps the connections of finished units of work on its loop's stack only when they are idle: a
statement cancelled mid-flight or a broken connection is closed, and the next unit of work gets a working
connection. Checked against a real PostgreSQL."""
from __future__ import annotations

import asyncio

import pytest

from app import adb

pytestmark = [pytest.mark.postgres]


async def _backend(conn) -> int:
    return (await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()).pid


def test_an_idle_connection_is_kept_and_reused(settings_env) -> None:
    async def scenario() -> None:
        first = await adb.one_statement(_backend)
        assert await adb.one_statement(_backend) == first  # kept on the stack, not handed back
        assert await adb.transaction(_backend) == first
        await adb.close()

    asyncio.run(scenario())


def test_a_statement_cancelled_mid_flight_leaves_nothing_busy_on_the_stack(settings_env) -> None:
    async def scenario() -> None:
        await adb.one_statement(_backend)
        started = asyncio.Event()

        async def slow(conn):
            started.set()
            await conn.execute("SELECT pg_sleep(5)")

        work = asyncio.ensure_future(adb.one_statement(slow))
        await started.wait()
        await asyncio.sleep(0.1)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        p = await adb.pool()
        assert not p.idle  # the loop's one connection was the cancelled unit's: closed, not kept
        assert await adb.one_statement(lambda conn: conn.execute("SELECT 1")) is not None  # the next one works
        await adb.close()

    asyncio.run(scenario())


def test_a_broken_connection_goes_back_to_the_pool_and_the_next_unit_works(settings_env) -> None:
    import psycopg

    async def scenario() -> None:
        victim = await adb.one_statement(_backend)
        with psycopg.connect(adb.conninfo(), autocommit=True) as other:  # the server ends that session
            other.execute("SELECT pg_terminate_backend(%s)", (victim,))
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises for a dead connection
            await asyncio.wait_for(adb.one_statement(_backend), 10)
        p = await adb.pool()
        assert not [c for c in p.idle if c.raw.is_closed()]
        assert await asyncio.wait_for(adb.one_statement(_backend), 10) != victim
        await asyncio.wait_for(adb.close(), 10)

    asyncio.run(scenario())


def test_more_units_than_connections_all_finish(settings_env) -> None:
    # Units waiting for the pool get the connections of the ones that finish, not a stack they never see.
    async def scenario() -> None:
        p = await adb.pool()

        async def briefly(conn):
            await conn.execute("SELECT pg_sleep(0.05)")

        await asyncio.wait_for(asyncio.gather(*[adb.one_statement(briefly) for _ in range(6 * p.max_size)]), 30)
        await adb.close()

    asyncio.run(scenario())


def test_a_loop_runs_no_more_units_at_once_than_its_gate_and_in_the_order_they_came(settings_env, monkeypatch) -> None:
    # Watched from PostgreSQL's side: the sessions running the units' statement at each moment. The units are
    # the loop's first: they also open its pool, all at once.
    import psycopg

    from config.settings import get_settings

    monkeypatch.setenv("WARMPOOL_LEASE_DB_CONCURRENCY", "3")
    get_settings.cache_clear()

    async def scenario() -> None:
        started: list[int] = []

        def unit(i: int):
            async def run(conn):
                started.append(i)
                await conn.execute("SELECT pg_sleep(0.1) /* gate-test */")
            return run

        work = asyncio.gather(*[adb.one_statement(unit(i)) for i in range(12)])
        peak, seen = 0, 0
        async with await psycopg.AsyncConnection.connect(adb.conninfo(), autocommit=True) as watcher:
            while not work.done():
                cur = await watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
                    "AND pid <> pg_backend_pid()", ("%/* gate-test */%",))
                running = (await cur.fetchone())[0]
                peak, seen = max(peak, running), seen + (running > 0)
                await asyncio.sleep(0.01)
        await work
        assert seen > 10 and peak == 3  # the gate's width was used, and never exceeded
        assert started == list(range(12))  # each waited its turn, first come first run
        await adb.close()

    asyncio.run(scenario())


def test_driver_errors_become_the_domain_errors_the_sync_path_gives(settings_env) -> None:
    # app.db.domain_error_of's rules, read from asyncpg's errors: a bad value is InvalidArgument (the server's
    # or one the driver could not encode), a duplicate AlreadyExists, anything else is left as it is; none
    # of them costs the loop its connection.
    import asyncpg

    from app.domain.errors import AlreadyExists, InvalidArgument

    async def scenario() -> None:
        pid = await adb.one_statement(_backend)
        with pytest.raises(InvalidArgument, match="invalid input syntax"):  # the server's
            await adb.one_statement(lambda conn: conn.execute("SELECT 'abc'::int AS n"))
        with pytest.raises(InvalidArgument, match="invalid input for query argument"):  # the driver's
            await adb.one_statement(lambda conn: conn.execute("SELECT %(t)s::timestamptz AS t", {"t": "noon"}))

        async def twice(conn):
            await conn.execute("CREATE TEMP TABLE u (id int PRIMARY KEY)")
            await conn.execute("INSERT INTO u VALUES (1)")
            await conn.execute("INSERT INTO u VALUES (1)")

        with pytest.raises(AlreadyExists, match="duplicate key"):
            await adb.transaction(twice)
        with pytest.raises(asyncpg.UndefinedTableError):
            await adb.one_statement(lambda conn: conn.execute("SELECT * FROM no_such_table"))
        assert await adb.one_statement(_backend) == pid
        await adb.close()

    asyncio.run(scenario())


def test_a_statement_prepared_before_its_table_changed_is_prepared_again(settings_env) -> None:
    async def scenario() -> None:
        await adb.one_statement(lambda conn: conn.raw.execute("DROP TABLE IF EXISTS adb_stale; CREATE TABLE adb_stale (a int)"))

        async def everything(conn):
            return await (await conn.execute("SELECT * FROM adb_stale")).fetchall()

        assert await adb.one_statement(everything) == []
        await adb.one_statement(lambda conn: conn.raw.execute(
            "ALTER TABLE adb_stale ADD COLUMN b int; INSERT INTO adb_stale VALUES (1, 2)"))
        assert [tuple(row) for row in await adb.one_statement(everything)] == [(1, 2)]
        await adb.one_statement(lambda conn: conn.raw.execute("DROP TABLE adb_stale"))
        await adb.close()

    asyncio.run(scenario())


def test_an_unreachable_database_is_unavailable_and_its_address_is_not_told(settings_env, monkeypatch) -> None:
    from app.domain.errors import Unavailable
    from config.settings import get_settings
    from scripts.testenv import free_port

    monkeypatch.setenv("WARMPOOL_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres")
    get_settings.cache_clear()

    async def scenario() -> None:
        with pytest.raises(Unavailable) as raised:
            await adb.one_statement(_backend)
        assert "127.0.0.1" not in str(raised.value)
        await adb.close()

    asyncio.run(scenario())
