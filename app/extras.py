"""Optional dependencies (pyproject's extras): imported lazily, with an error that names the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional package is not installed; the message says which extra brings it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise MissingExtra saying that `purpose` needs `pip install 'warmpool[extra]'`.
    Only a missing top-level package becomes MissingExtra: a broken installation keeps its own error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtra(f"{purpose} needs the optional package {exc.name!r}, which is not installed: "
                           f"pip install 'warmpool[{extra}]'", name=exc.name) from None
