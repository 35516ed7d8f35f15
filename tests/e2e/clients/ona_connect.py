"""Drive warmpool with gitpod-sdk 1.2.0 (ona_sdk: Connect, binary protobuf), unchanged.

Run with PYTHONPATH=<the 1.2.0 --target directory>. Steps:
  {"op": "prebuild.CreateWarmPool", "args": {<proto-JSON request>}, "save": "name", "token": "..."}
  {"op": "list_all:prebuild.ListWarmPools", "args": {...}, "page_size": 2, "items": "warmPools"}
  "use_get": true sends a read as a Connect GET (?connect=v1&encoding=proto&base64=1&message=...).
The request is built from proto-JSON and sent by `client.services.<service>.<method>(...)`.
"""
from __future__ import annotations

import importlib
import re
from typing import Any

import ona_sdk
from connectrpc.errors import ConnectError
from google.protobuf.json_format import MessageToDict, ParseDict
from ona_sdk.errors import map_error

from common import Step, main

MODULES = {"prebuild": "prebuild_pb2", "project": "project_pb2", "runner_configuration": "runner_configuration_pb2"}
_clients: dict[str, Any] = {}


def client_for(scenario: dict[str, Any], token: str) -> Any:
    if token not in _clients:
        _clients[token] = ona_sdk.create_client(api_key=token, base_url=scenario["base_url"], timeout=30)
    return _clients[token]


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def call(client: Any, service: str, method: str, args: dict[str, Any], use_get: bool = False) -> Any:
    module = importlib.import_module(f"gitpod.v1.{MODULES[service]}")
    request = ParseDict(args, getattr(module, f"{method}Request")())
    rpc = getattr(getattr(client.services, service), snake(method))
    return rpc(request, use_get=True) if use_get else rpc(request)


def error(op: str, exc: ConnectError) -> dict[str, Any]:
    mapped = map_error(op, exc)
    return {"error": {
        "class": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "code": exc.code.value, "message": exc.message,
        "sdk_class": f"{type(mapped).__module__}.{type(mapped).__qualname__}", "sdk_str": str(mapped),
    }}


def run_step(scenario: dict[str, Any], step: Step) -> dict[str, Any]:
    client = client_for(scenario, step.get("token", scenario["token"]))
    op = step["op"]
    paging = op.startswith("list_all:")
    service, method = op.removeprefix("list_all:").split(".")
    try:
        if not paging:
            return {"ok": MessageToDict(call(client, service, method, step["args"], step.get("use_get", False)))}
        items, pages, token = [], 0, ""
        while pages < step.get("max_pages", 50):
            args = dict(step["args"], pagination={"pageSize": step["page_size"], "token": token})
            page = MessageToDict(call(client, service, method, args))
            pages += 1
            items.extend(page.get(step["items"], []))
            token = page.get("pagination", {}).get("nextToken", "")
            if not token:
                break
        return {"ok": {"items": items, "pages": pages, "stopped": not token}}
    except ConnectError as exc:
        return error(f"{service}.{snake(method)}", exc)


if __name__ == "__main__":
    main(run_step)
