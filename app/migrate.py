"""Run the Alembic migrations from code (the `warmpool migrate` command and the test fixtures)."""
from __future__ import annotations

import logging
from pathlib import Path

# Before alembic's import, which logs a line per built-in plugin at INFO: none of that belongs on every start.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402


def alembic_config(url: str) -> Config:
    """Built in code (not from alembic.ini) so an installed wheel migrates as well as a checkout."""
    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).resolve().parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
