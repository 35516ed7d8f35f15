"""Drive warmpool with gitpod-sdk 0.11.0 (Stainless: JSON, retries, auto-pager), unchanged.

Run with PYTHONPATH=<the 0.11.0 --target directory>. Steps:
  {"op": "prebuilds.create_warm_pool", "args": {<python kwargs; JSON null is None>}, "save": "name"}
  {"op": "iterate:prebuilds.list_warm_pools", "args": {"page_size": 2}, "max_items": 200}
  "probe": ["warm_pool.metadata.created_at"] reports the Python type and value the SDK parsed.
Every result carries "requests": the HTTP requests the SDK sent for that step (retries included).
"""
from __future__ import annotations

from typing import Any

import gitpod
import httpx

from common import Step, main

_clients: dict[str, Any] = {}
_sent: list[dict[str, Any]] = []


def record(request: httpx.Request) -> None:
    _sent.append({"method": request.method, "url": str(request.url),
                  "retry": request.headers.get("x-stainless-retry-count"), "body": request.content.decode()})


def client_for(scenario: dict[str, Any], token: str) -> Any:
    if token not in _clients:
        http = gitpod.DefaultHttpxClient(event_hooks={"request": [record]})
        _clients[token] = gitpod.Gitpod(bearer_token=token, base_url=scenario["base_url"], http_client=http, timeout=30)
    return _clients[token]


def dump(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict(mode="json")
    return value


def probe(value: Any, path: str) -> list[str]:
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else getattr(value, part)
    return [type(value).__name__, str(value)]


def run_step(scenario: dict[str, Any], step: Step) -> dict[str, Any]:
    client = client_for(scenario, step.get("token", scenario["token"]))
    op = step["op"]
    iterate = op.startswith("iterate:")
    target: Any = client
    for part in op.removeprefix("iterate:").split("."):
        target = getattr(target, part)
    _sent.clear()
    try:
        value = target(**step["args"])
        if iterate:
            items, cap = [], step.get("max_items", 200)
            for item in value:  # the SDK's auto-pager: it must stop by itself
                items.append(dump(item))
                if len(items) >= cap:
                    break
            result: dict[str, Any] = {"ok": {"items": items, "stopped": len(items) < cap}}
        else:
            result = {"ok": dump(value)}
            result["probe"] = {p: probe(value, p) for p in step.get("probe", [])}
    except gitpod.APIStatusError as exc:
        result = {"error": {
            "class": f"gitpod.{type(exc).__qualname__}", "is_exported": getattr(gitpod, type(exc).__name__, None) is type(exc),
            "code": exc.code, "status": exc.status_code, "body": exc.body,
            "should_retry": exc.response.headers.get("x-should-retry"),
        }}
    result["requests"] = list(_sent)
    return result


if __name__ == "__main__":
    main(run_step)
