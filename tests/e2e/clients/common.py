"""Shared by the client scripts: read a JSON scenario from stdin, resolve "$name.path" references to
earlier results, run each step, print {"results": [...]} as JSON. Imports nothing from warmpool."""
from __future__ import annotations

import json
import sys
from importlib.metadata import version
from collections.abc import Callable
from typing import Any

Step = dict[str, Any]


def lookup(saved: dict[str, Any], ref: str) -> Any:
    """"$pool.warmPool.id" -> saved["pool"]["warmPool"]["id"]; list indices are numbers."""
    name, *path = ref[1:].split(".")
    value = saved[name]
    for part in path:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def resolve(value: Any, saved: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return lookup(saved, value)
    if isinstance(value, dict):
        return {k: resolve(v, saved) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, saved) for v in value]
    return value


def main(run_step: Callable[[dict[str, Any], Step], dict[str, Any]]) -> None:
    scenario = json.load(sys.stdin)
    saved: dict[str, Any] = {}
    results = []
    for raw in scenario["steps"]:
        step = dict(raw, args=resolve(raw.get("args", {}), saved))
        result = run_step(scenario, step)
        result["op"] = step["op"]
        if "save" in step and "ok" in result:
            saved[step["save"]] = result["ok"]
        results.append(result)
    json.dump({"sdk": version("gitpod-sdk"), "results": results}, sys.stdout, default=str)
