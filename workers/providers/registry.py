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


_instances: dict[tuple[str, str], Any] = {}


def provider_for(name: str, settings: dict[str, Any], key: str = "") -> Any:
    """One adapter object per (runner, stored settings), reused across tasks in this process. `settings` are a
    runner's stored settings (secrets encrypted): the adapter gets them checked, decrypted and merged with the
    operator's settings for the provider (catalog.runtime_settings; ProviderPermanent if no longer allowed)."""
    import json

    from workers.providers.catalog import runtime_settings

    cache_key = (key or name, json.dumps(settings, sort_keys=True))  # ciphertext, never a plain secret
    adapter = _instances.get(cache_key)
    if adapter is None:
        adapter = provider_class(name)(runtime_settings(name, settings))
        _instances[cache_key] = adapter
    return adapter


def clear_cache() -> None:
    _instances.clear()
