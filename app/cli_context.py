"""Where a `warmpool` command runs: the organization it acts for, the running `warmpool dev` it finds
through its data dir's dev.env, and a migrated database (checked before anything can create one).

The organization is `--org`, else $WARMPOOL_ORG, else `dev`. `warmpool dev` writes the Redis URL,
database URL and organization it uses to `<data dir>/dev.env` (removed when it stops), so a command in a
second shell beside it talks to the same Redis and database with nothing exported by hand; a variable
set in the environment wins over the file, and a file left by a dev that died is ignored.
"""
from __future__ import annotations

import os
from pathlib import Path

DEV_ENV = "dev.env"
DEFAULT_ORG = "dev"
_PID_KEY = "WARMPOOL_DEV_PID"
_KEYS = ("WARMPOOL_REDIS_URL", "WARMPOOL_DATABASE_URL", "WARMPOOL_ORG")


class CliError(Exception):
    """A one-line error for the user: printed as `error: …`, exit code 1."""


def dev_env_path(data_dir: Path) -> Path:
    return Path(data_dir) / DEV_ENV


def write_dev_env(data_dir: Path, *, redis_url: str, database_url: str, org: str) -> Path:
    """Called by `warmpool dev` once its Redis and database are up. Owner-only: a database URL may hold a password."""
    path = dev_env_path(data_dir)
    lines = ["# written by `warmpool dev` (removed when it stops); explicit WARMPOOL_* variables win over it",
             f"{_PID_KEY}={os.getpid()}", f"WARMPOOL_REDIS_URL={redis_url}",
             f"WARMPOOL_DATABASE_URL={database_url}", f"WARMPOOL_ORG={org}"]
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def remove_dev_env(data_dir: Path) -> None:
    try:
        values = read_dev_env(dev_env_path(data_dir))
        if values.get(_PID_KEY) == str(os.getpid()):  # only our own: never another dev's
            dev_env_path(data_dir).unlink()
    except FileNotFoundError:
        pass


def read_dev_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def load_dev_env(environ: dict[str, str] | None = None) -> Path | None:
    """Fill the WARMPOOL_* variables a running `warmpool dev` wrote and the environment does not set.
    Returns the file used, or None (no file, unreadable, or its dev is gone)."""
    env = os.environ if environ is None else environ
    path = dev_env_path(Path(env.get("WARMPOOL_DATA_DIR") or ".data"))
    try:
        values = read_dev_env(path)
    except OSError:
        return None
    if not _alive(values.get(_PID_KEY, "")):
        return None
    for key in _KEYS:
        if values.get(key) and not env.get(key):
            env[key] = values[key]
    return path


def org_name(given: str | None) -> str:
    """--org, else $WARMPOOL_ORG (which dev.env may have filled), else the dev organization."""
    return (given or os.environ.get("WARMPOOL_ORG") or DEFAULT_ORG).strip()


def organization_id(name: str, *, session) -> str:  # type: ignore[no-untyped-def]
    """The id of an existing organization; NotFound naming it and how to create it. Never creates one."""
    from app.domain import quotas

    return quotas.organization_named(name, session=session).id


def check_database(database_url: str) -> None:
    """CliError unless the database exists, answers and carries warmpool's tables. Looks before it
    connects: SQLite would otherwise create an empty file (and app.db its directory) wherever we are."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from app.cli import _redact

    shown = _redact(database_url)
    hint = "run `warmpool migrate` (or start `warmpool dev`) in the directory that holds .data, or set WARMPOOL_DATABASE_URL"
    try:
        url = make_url(database_url)
    except Exception:  # noqa: BLE001 - whatever make_url raises, the answer is the same line
        raise CliError(f"WARMPOOL_DATABASE_URL is not a database URL: {shown}") from None
    if url.get_backend_name() == "sqlite":
        db = url.database or ""
        if db and db != ":memory:" and not db.startswith("file:") and not Path(db).is_file():
            raise CliError(f"no warmpool database at {shown} (from {Path.cwd()}): {hint}")
    from app.db import get_engine

    try:
        with get_engine().connect() as conn:
            migrated = sa.inspect(conn).has_table("organizations")
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() else type(exc).__name__
        raise CliError(f"cannot reach the database at {shown}: {reason}") from None
    if not migrated:
        raise CliError(f"the database at {shown} has no warmpool tables: {hint}")
