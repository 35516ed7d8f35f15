"""app.adb keeps the connections of finished units of work on its loop's stack only when they are idle: a
statement cancelled mid-flight, a transaction left open or a broken connection goes back to the pool,
and the next unit of work gets a working connection. Checked against a real PostgreSQL."""
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
        # psycopg cancels the query on the server; the connection is kept only if that left it idle.
        assert all(c.info.transaction_status == c.info.transaction_status.IDLE for c in adb._parked[p])
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
        assert not [c for c in adb._parked.get(p, []) if c.closed]
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
