"""bench/lease.py --diagnose: where PostgreSQL's time goes during a measurement, per statement and per process."""
from __future__ import annotations

import re
import time
from typing import Any

# pg_stat_statements must be loaded at server start; BEGIN/COMMIT are tracked too (track_utility, the default),
# so a transaction's commit shows as a row of its own.
SERVER_OPTIONS = "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=2000"

# Neither the api nor the engine sets application_name, and pg_stat_statements keys on the role anyway: each
# process the bench starts logs in as a role of its own (a superuser, like the `postgres` the rest runs as), so
# its statements are counted apart. The bench itself (and pgbench, the pg_stat_activity sampler) stays `postgres`.
PROCESSES = ("api", "worker", "events", "observe", "beat")


def role_url(db_url: str, who: str) -> str:
    """The database URL with `who`'s role instead of the user in it."""
    return re.sub(r"://[^@/]+@", f"://wp_{who}@", db_url, count=1)


def env_for(who: str, env: dict[str, str]) -> dict[str, str]:
    """`warmpool WHO`'s environment: the same, logged in as its own role when it is one of PROCESSES."""
    if who not in PROCESSES:
        return env
    return {**env, "WARMPOOL_DATABASE_URL": role_url(env["WARMPOOL_DATABASE_URL"], who)}


def _execute(sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    import sqlalchemy as sa

    from app.db import get_engine

    with get_engine().connect() as conn:
        result = conn.execute(sa.text(sql), params or {})
        rows = list(result) if result.returns_rows else []
        conn.commit()
    return rows


def install() -> None:
    """After migrate: the extension, and a login role per process (before the processes start)."""
    _execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    existing = {r.rolname for r in _execute("SELECT rolname FROM pg_roles")}
    for who in PROCESSES:
        if f"wp_{who}" not in existing:  # a name from PROCESSES, not input: safe to format
            _execute(f"CREATE ROLE wp_{who} LOGIN SUPERUSER")


class Statements:
    """pg_stat_statements from reset() to report(): the statements that took PostgreSQL's execution time."""

    def __init__(self) -> None:
        self.began = time.monotonic()

    def reset(self) -> None:
        _execute("SELECT pg_stat_statements_reset()")
        self.began = time.monotonic()

    def report(self, what: str, top: int = 15) -> str:
        window = time.monotonic() - self.began
        rows = _execute(
            "SELECT coalesce(regexp_replace(r.rolname, '^wp_', ''), '?') AS who, s.calls, s.total_exec_time AS total, "
            "s.mean_exec_time AS mean, s.rows, s.query FROM pg_stat_statements s LEFT JOIN pg_roles r ON r.oid = s.userid "
            "WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY s.total_exec_time DESC")
        total = sum(r.total for r in rows) or 1e-9
        by_who: dict[str, tuple[float, int]] = {}
        for r in rows:
            ms, calls = by_who.get(r.who, (0.0, 0))
            by_who[r.who] = (ms + r.total, calls + r.calls)
        lines = [f"  pg_stat_statements, {what} ({window:.1f} s from reset to report): {total:,.0f} ms of statement "
                 f"execution, {total / 1000 / window:.2f} backends busy on average; by process: "
                 + ", ".join(f"{who} {ms:,.0f} ms ({ms / total:.0%}, {calls:,} calls)"
                             for who, (ms, calls) in sorted(by_who.items(), key=lambda kv: -kv[1][0])),
                 "    (execution time includes waits for row locks; statements still running at the report are not counted;"
                 " who `postgres`: this script, its pg_stat_activity sampler and its own reads)",
                 f"    {'calls':>7} {'total ms':>9} {'%':>4} {'mean ms':>8} {'rows':>7}  {'who':<8} query"]
        for r in rows[:top]:
            query = " ".join(r.query.split())
            # what the cut hides and matters here: a lock taken, a grouping, a sort
            hidden = [c for c in ("GROUP BY", "ORDER BY", "FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE",
                                  "SKIP LOCKED") if c in query[90:]]
            query = query[:90] + (f" … {', '.join(hidden)}" if hidden else "")
            lines.append(f"    {r.calls:>7,} {r.total:>9.1f} {r.total / total:>4.0%} {r.mean:>8.3f} {r.rows:>7,}  "
                         f"{r.who:<8} {query}")
        return "\n".join(lines)
