"""Run the Alembic migrations from code (the `warmpool migrate` command and the test fixtures)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

def alembic_config(url: str) -> Config:
    """Built in code (not from alembic.ini) so an installed wheel migrates as well as a checkout."""
    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).resolve().parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
