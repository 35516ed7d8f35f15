"""The openYuanrong pod pool façade: REST on /serverless/v1/podpools, snake_case JSON, {code,message,result}.

Thin: type-check the JSON the way the meta service's Go decoder does (wrong types are code 130600, an
empty body 121052), call one function of app.domain.podpools in one unit of work, and answer its errors
by the edge core's table (app.api.core): an unknown pool is 4120 with HTTP 404, any other rule violation
4104 with HTTP 500 (upstream's status), a missing or bad bearer token 121049 with HTTP 401, the database
unreachable or an unexpected failure 150500. Error bodies are {"code","message"}, as upstream's
`handlePoolErrResp` writes them; never a traceback.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api import core
from app.api.hygiene import INT32, BadInput, parse_int
from app.domain import podpools
from app.domain.podpools import PodPoolInput
from app.domain.tokens import Scope

log = logging.getLogger(__name__)
router = APIRouter(prefix="/serverless/v1/podpools", tags=["openYuanrong pod pools"])

SUCCESS, INVALID_USER_PARAM = 0, core.PODPOOL_INVALID_USER_PARAM
INVALID_JSON_BODY, INVALID_PARAM = 121052, 130600  # the other codes come from app.api.core's table
DEFAULT_LIMIT = 10
DEFAULT_TENANT = "0"

# PoolInfo field -> wire type. Columns (id, group, size, max_size, reuse) are not echoed from `given`.
POOL_FIELDS: dict[str, str] = {
    "id": "string", "group": "string", "size": "int", "max_size": "int", "reuse": "bool",
    "image": "string", "init_image": "string", "labels": "labels", "environment": "map", "node_selector": "map",
    "volumes": "string", "volume_mounts": "string", "affinities": "string", "tolerations": "string",
    "horizontal_pod_autoscaler_spec": "string", "topology_spread_constraints": "string",
    "resources": "resources", "runtime_class_name": "string", "pod_pending_duration_threshold": "int",
    "idle_recycle_time": "idle",
}
COLUMNS = ("id", "group", "size", "max_size", "reuse")
UPDATE_FIELDS = {"size": "int", "max_size": "int", "horizontal_pod_autoscaler_spec": "string"}
GO_TYPE = {"string": "string", "int": "int", "bool": "bool", "map": "map[string]string",
           "labels": "map[string]string", "resources": "ResourceRequirements", "idle": "IdleRecyclePolicy"}


class WireError(Exception):
    """Bad input caught before the domain is called (upstream answers these with HTTP 500 too)."""

    def __init__(self, code: int, message: str, http_status: int = 500) -> None:
        super().__init__(message)
        self.code, self.message, self.http_status = code, message, http_status


def envelope(result: Any = None, *, code: int = SUCCESS, message: str = "", http_status: int = 200,
             with_result: bool = True) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if with_result:
        body["result"] = result
    return JSONResponse(body, status_code=http_status, media_type="application/json; charset=utf-8")


# ---- decoding ----------------------------------------------------------------------------------

def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {value}"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "value")


def _mismatch(value: Any, kind: str, path: str) -> WireError:
    return WireError(INVALID_PARAM, f"json: cannot unmarshal {_json_type(value)} into field {path} of type {GO_TYPE[kind]}")


def _typed(value: Any, kind: str, path: str) -> Any:
    """`value` checked against the wire type `kind`; null is the zero value, as for Go's decoder."""
    if value is None:
        return None
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        if not INT32[0] <= value <= INT32[1]:
            raise WireError(INVALID_PARAM, f"json: cannot unmarshal number {value} into field {path} of type int32 (out of range)")
        return value
    if kind in ("map", "labels") and isinstance(value, dict):
        out = {}
        for k, v in value.items():
            # The docs write {"yr-idle-to-recycle": 5}: label values may be integers, kept as strings.
            if kind == "labels" and isinstance(v, int) and not isinstance(v, bool):
                v = str(v)
            out[k] = "" if v is None else _typed(v, "string", f"{path}.{k}")
        return out
    if kind == "resources" and isinstance(value, dict):
        return {part: _typed(value.get(part), "map", f"{path}.{part}") for part in ("requests", "limits") if part in value}
    if kind == "idle" and isinstance(value, dict):
        return {k: _typed(value[k], "int", f"{path}.{k}") or 0 for k in ("reserved", "scaled") if k in value}
    raise _mismatch(value, kind, path)


def _decode(body: bytes, what: str) -> dict[str, Any]:
    if not body.strip():
        raise WireError(INVALID_JSON_BODY, f"invalid JSON body: the request body is empty; send {what}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WireError(INVALID_PARAM, f"invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise WireError(INVALID_PARAM, f"json: cannot unmarshal {_json_type(data)} into a request of type object; send {what}")
    return data


def pool_inputs(body: bytes) -> list[PodPoolInput]:
    data = _decode(body, '{"pools":[PoolInfo, ...]}')
    items = data.get("pools")
    if items is not None and not isinstance(items, list):
        raise WireError(INVALID_PARAM, f"json: cannot unmarshal {_json_type(items)} into field pools of type []PoolInfo")
    inputs = []
    for n, item in enumerate(items or []):
        if not isinstance(item, dict):
            raise WireError(INVALID_PARAM, f"json: cannot unmarshal {_json_type(item)} into field pools[{n}] of type PoolInfo")
        typed = {k: _typed(item[k], kind, f"pools[{n}].{k}") for k, kind in POOL_FIELDS.items() if k in item}
        typed = {k: v for k, v in typed.items() if v is not None}
        given = {k: v for k, v in typed.items() if k not in COLUMNS}
        inputs.append(PodPoolInput(**typed, given=given))
    return inputs


def update_input(body: bytes) -> dict[str, Any]:
    data = _decode(body, '{"size":int,"max_size":int,"horizontal_pod_autoscaler_spec":"<json>"}')
    typed = {k: _typed(data.get(k), kind, k) for k, kind in UPDATE_FIELDS.items()}
    # Absent fields are Go zero values: {"max_size": 5} sets size to 0, as upstream does.
    return {"size": typed["size"] or 0, "max_size": typed["max_size"] or 0,
            "hpa_spec": typed["horizontal_pod_autoscaler_spec"] or ""}


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse_int(raw, name, INT32)
    except BadInput as exc:
        raise WireError(INVALID_USER_PARAM, f"{exc.message}. check input parameters") from None


# ---- encoding ----------------------------------------------------------------------------------

def pool_info(pool: Any) -> dict[str, Any]:
    """A pool row (as app.domain.podpools returns it) as upstream's PoolInfo."""
    given = (pool.extra or {}).get("podpool", {})
    status, msg = podpools.status_of(pool)
    idle = given.get("idle_recycle_time") or {}
    return {
        "id": pool.name, "group": pool.group_name, "size": pool.min_size, "max_size": pool.max_size,
        "reuse": pool.reuse, "scalable": pool.max_size > pool.min_size, "ready_count": pool.ready_instances,
        "status": int(status), "msg": msg,
        "image": given.get("image", ""), "init_image": given.get("init_image", ""),
        "labels": given.get("labels"), "environment": given.get("environment"),
        "node_selector": given.get("node_selector"), "resources": given.get("resources"),
        **{name: given.get(name, "") for name in podpools.JSON_FIELDS},
        "runtime_class_name": given.get("runtime_class_name", ""),
        "pod_pending_duration_threshold": given.get("pod_pending_duration_threshold", 0),
        "idle_recycle_time": {"reserved": idle.get("reserved", 0), "scaled": idle.get("scaled", 0)},
    }


# ---- the unit of work --------------------------------------------------------------------------

async def _call(request: Request, work: Callable[..., Any]) -> JSONResponse:
    """Authenticate, then run `work(org_id, session)` in one unit of work; every outcome is an envelope."""
    try:
        return await core.run_as(request.headers.get("authorization"), Scope.MEMBER, "/serverless/v1/podpools",
                                 lambda org_id, *, session: work(org_id, session))
    except WireError as exc:
        return envelope(code=exc.code, message=exc.message, http_status=exc.http_status, with_result=False)
    except Exception as exc:  # noqa: BLE001 - every outcome is an envelope (app.api.core's table)
        refusal = core.map_error(exc, core.PODPOOLS, what=f"{request.method} {request.url.path}")
        return envelope(code=refusal.code, message=refusal.message, http_status=refusal.http_status or 500,
                        with_result=False)


def _tenant(request: Request) -> str:
    tenant = request.headers.get("x-tenant-id", "").strip() or DEFAULT_TENANT
    if len(tenant) > 64:
        raise WireError(INVALID_USER_PARAM, "X-Tenant-ID must be at most 64 characters. check input parameters")
    return tenant


# ---- routes ------------------------------------------------------------------------------------

@router.post("", summary="Create pod pools (asynchronous)")
async def create_pools(request: Request) -> JSONResponse:
    body = await request.body()

    def work(org_id: str, session: Any) -> JSONResponse:
        inputs = pool_inputs(body)
        failures = podpools.create_pod_pools(org_id, inputs, tenant_id=_tenant(request), session=session)
        if failures:
            # Upstream answers a partial failure with 4104 and the joined messages; the pools that passed are
            # created (returned, not raised, so this unit of work commits them).
            return envelope({"failed_pools": [i for i, _ in failures]}, code=INVALID_USER_PARAM, http_status=500,
                            message=";".join(m for _, m in failures) + ". check input parameters")
        return envelope({"failed_pools": None})

    return await _call(request, work)


@router.get("", summary="Query pod pools by id and/or group, a page at a time")
async def query_pools(request: Request, id: str = "", group: str = "", offset: str = "", limit: str = "") -> JSONResponse:
    def work(org_id: str, session: Any) -> JSONResponse:
        count, rows = podpools.query_pod_pools(
            org_id, session=session, pool_id=id, group=group,
            offset=_int_param(request, "offset", 0), limit=_int_param(request, "limit", DEFAULT_LIMIT),
        )
        return envelope({"count": count, "pools": [pool_info(p) for p in rows]})

    return await _call(request, work)


@router.put("/{pool_id}", summary="Update a pod pool's size, max_size and HPA spec")
async def update_pool(request: Request, pool_id: str) -> JSONResponse:
    body = await request.body()

    def work(org_id: str, session: Any) -> JSONResponse:
        podpools.update_pod_pool(org_id, pool_id, session=session, **update_input(body))
        return envelope(None)

    return await _call(request, work)


@router.delete("", summary="Delete a pod pool by id, or every pool of a group")
async def delete_pools(request: Request, id: str = "", group: str = "") -> JSONResponse:
    def work(org_id: str, session: Any) -> JSONResponse:
        podpools.delete_pod_pools(org_id, session=session, pool_id=id, group=group)
        return envelope(None)

    return await _call(request, work)
