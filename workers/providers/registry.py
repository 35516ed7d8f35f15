"""Provider adapters by name: entry points of the group `warmpool.providers`. An unknown name fails loudly."""
from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

GROUP = "warmpool.providers"


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def known_providers() -> set[str]:
    return set(_entry_points())


def provider_class(name: str) -> type:
    try:
        ep = _entry_points()[name]
    except KeyError:
        raise LookupError(
            f"unknown provider {name!r}: installed providers are {', '.join(sorted(_entry_points())) or 'none'} "
            f"(entry point group {GROUP!r})"
        ) from None
    return ep.load()
