"""What the HTTP façades promise in /openapi.json, kept true to the server: every status the edge or a
route can answer with its wire's error body, UUID formats on ids, the pod-pool bodies, and an `Allow`
header on 405 that lists every method of the path (Starlette names only the first route it matched).

The additions are made here, once, from the wire of each path (app.api.edge.wire_of), so routes that
other modules add get the same documentation without repeating it.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from app.api.edge import NATIVE, OTHER, PODPOOLS, wire_of

REF = "#/components/schemas/"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

NATIVE_ERRORS = {
    400: "a malformed id, page token or value (NUL byte, lone surrogate, integer out of range, nesting too deep)",
    401: "missing, malformed, expired or revoked bearer token",
    403: "the token's scope does not allow this call (the message names the scope needed)",
    404: "no such object in the caller's organization",
    413: "the request body is larger than WARMPOOL_INPUT__MAX_BODY_BYTES",
    422: "invalid request parameters or body",
    500: "internal error; the server log has the details",
}
PODPOOL_ERRORS = {
    401: "121049: missing, malformed, expired or revoked bearer token",
    403: "121049: the token's scope does not allow pod pools",
    404: "4120: the pool does not exist or has been deleted",
    413: "4104: the request body is larger than WARMPOOL_INPUT__MAX_BODY_BYTES",
    500: "upstream's status for every other error: 4104 invalid parameter, 130600 malformed or refused body, "
         "121052 empty body, 150500 internal error",
}
OTHER_ERRORS = {400: "a NUL byte in the path or query", 413: "the request body is larger than the limit"}

SCHEMAS: dict[str, Any] = {
    "PodPoolError": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "integer", "description": "openYuanrong error code"}, "message": {"type": "string"}}},
    "PodPoolEnvelope": {"type": "object", "required": ["code", "message", "result"], "properties": {
        "code": {"type": "integer", "enum": [0, 4104]}, "message": {"type": "string"}, "result": {}}},
    "PodPoolResources": {"type": "object", "properties": {
        part: {"type": "object", "additionalProperties": {"type": "string"}} for part in ("requests", "limits")}},
    "PodPoolInfo": {"type": "object", "required": ["id", "resources"], "properties": {
        "id": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$"},
        "group": {"type": "string", "pattern": "^[a-zA-Z0-9]([-a-zA-Z0-9]{0,38}[a-zA-Z0-9])?$"},
        "size": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "max_size": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "reuse": {"type": "boolean"},
        "image": {"type": "string", "maxLength": 200}, "init_image": {"type": "string", "maxLength": 200},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "node_selector": {"type": "object", "additionalProperties": {"type": "string"}},
        "resources": {"$ref": REF + "PodPoolResources"},
        "runtime_class_name": {"type": "string", "maxLength": 64},
        "pod_pending_duration_threshold": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "idle_recycle_time": {"type": "object", "properties": {
            k: {"type": "integer", "minimum": -1, "maximum": 2**31 - 1} for k in ("reserved", "scaled")}},
        **{k: {"type": "string", "description": "a JSON document (Kubernetes structs), as upstream takes it"}
           for k in ("volumes", "volume_mounts", "affinities", "tolerations", "horizontal_pod_autoscaler_spec",
                     "topology_spread_constraints")},
    }},
}
PODPOOL_BODIES = {
    "post": {"type": "object", "required": ["pools"], "properties": {
        "pools": {"type": "array", "minItems": 1, "items": {"$ref": REF + "PodPoolInfo"}}}},
    "put": {"type": "object", "properties": {
        "size": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "max_size": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "horizontal_pod_autoscaler_spec": {"type": "string"}}},
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF + schema}}}}


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Add to a FastAPI-generated document what the edge and the façades answer beyond it."""
    doc.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    for path, item in doc.get("paths", {}).items():
        wire = wire_of(path)
        for method, op in item.items():
            if method not in METHODS:
                continue
            responses = op.setdefault("responses", {})
            has_body = method in ("post", "put", "patch")
            if wire == NATIVE:
                for status, text in NATIVE_ERRORS.items():
                    if status != 413 or has_body:
                        existing = responses.get(str(status), {})
                        responses[str(status)] = {**_json("ErrorBody", existing.get("description", text))}
                responses["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}}
                for param in op.get("parameters", []):
                    if param.get("name", "").endswith("_id"):
                        param.setdefault("schema", {})["format"] = "uuid"
            elif wire == PODPOOLS:
                responses.pop("422", None)  # every parameter is a plain string: FastAPI never answers 422 here
                responses["200"] = _json("PodPoolEnvelope", "{code: 0, message: \"\", result}")
                for status, text in PODPOOL_ERRORS.items():
                    if (status != 413 or has_body) and (status != 404 or method in ("put", "delete")):
                        responses[str(status)] = _json("PodPoolError", text)
                if method in PODPOOL_BODIES:
                    op["requestBody"] = {"required": method == "post", "content": {
                        "application/json": {"schema": PODPOOL_BODIES[method]}}}
            elif wire == OTHER:
                for status, text in OTHER_ERRORS.items():
                    if status != 413 or has_body:
                        responses.setdefault(str(status), _json("ErrorBody", text))
    ops = doc["paths"]
    if "/metrics" in ops:
        ops["/metrics"]["get"]["responses"]["200"] = {"description": "Prometheus text exposition format", "content": {
            "text/plain": {"schema": {"type": "string"}}}}
        ops["/metrics"]["get"]["responses"]["401"] = _json("ErrorBody", "a token is needed (WARMPOOL_METRICS_PUBLIC=false)")
        ops["/metrics"]["get"]["responses"]["403"] = _json("ErrorBody", "the token's scope does not allow metrics")
    if "/readyz" in ops:
        ops["/readyz"]["get"]["responses"]["503"] = {"description": "the database or Redis is unreachable",
                                                     "content": {"application/json": {"schema": {"type": "object"}}}}
    return doc


def install(app: FastAPI) -> None:
    """Serve the completed document, and a full `Allow` header on every 405."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            complete(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(AllowHeader, document=openapi)


def served_methods(doc: dict[str, Any]) -> list[tuple[re.Pattern[str], set[str]]]:
    """(path pattern, methods) for every documented path; GET implies HEAD, as Starlette serves it."""
    out = []
    for template, item in doc.get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        methods = {m.upper() for m in item if m in METHODS}
        out.append((re.compile(f"^{pattern}$"), methods | ({"HEAD"} if "GET" in methods else set())))
    return out


class AllowHeader:
    """ASGI middleware: a 405 on a documented path carries `Allow` with every method of that path."""

    def __init__(self, app: Any, document: Callable[[], dict[str, Any]]) -> None:
        self.app, self.document = app, document
        self.paths: list[tuple[re.Pattern[str], set[str]]] | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_allow(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                if self.paths is None:
                    self.paths = served_methods(self.document())
                allowed = set().union(*(m for p, m in self.paths if p.match(scope["path"])))
                if allowed:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                    message = {**message, "headers": [*headers, (b"allow", ", ".join(sorted(allowed)).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_allow)
