"""Translating a pool template (plus our ids) into a Unikraft Cloud `CreateInstanceRequest` body.

Pool templates arrive either typed (JSON from the native API) or as a flat dict of strings (a Gitpod
environment class's configuration), so every key accepts both spellings:

  image                  OCI reference, e.g. "nginx:latest" (required unless the instance comes from a snapshot)
  args                   list, JSON list, or a shell-quoted string
  env                    dict, JSON object, or "K=V K2=V2" (shell-quoted)
  memory_mb / memory     megabytes; `memory` also takes "512Mi", "1G"
  vcpus                  integer
  ports                  list or comma string of "443:8080[/tls+http]" or an int (same port both sides);
                         a dict is passed through as a Unikraft `Service`. Port 443 without handlers gets tls+http.
  domains                fqdn list or comma string, for the ephemeral service group made from `ports`
  service_group          name or uuid of an existing service group (instead of `ports`)
  scale_to_zero          "off" | "on" | "idle", or a dict {policy, stateful, cooldown_time_ms, notify_time_ms}
  scale_to_zero_stateful / scale_to_zero_cooldown_ms / scale_to_zero_notify_ms
  restart_policy         never | always | on-failure
  features               list or comma string (delete-on-stop, nested-virt)
  tags                   extra tags, list or comma string
  unikraft               dict or JSON object of raw CreateInstanceRequest fields, merged last (our name, tags
                         and annotations always win)

Errors in a template are the pool's fault, so they raise ProviderPermanent with what was wrong.
"""
from __future__ import annotations

import json
import re
import shlex
from typing import Any

from workers.providers.base import INSTANCE_TAG, OWNER_TAG, POOL_TAG, InstanceSpec, ProviderPermanent

TAG_SEPARATOR = ":"
"""Tags are plain strings on Unikraft ("pool:warm" in the captured request), so ours are `key:value`."""
SNAPSHOT_KINDS = ("checkpoint", "template")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_MEMORY = re.compile(r"^\s*(\d+)\s*(m|mi|mb|mib|g|gi|gb|gib)?\s*$", re.IGNORECASE)
_POLICIES = ("off", "on", "idle")


def our_tags(spec: InstanceSpec) -> dict[str, str]:
    ids = {OWNER_TAG: spec.owner, INSTANCE_TAG: spec.instance_id, POOL_TAG: spec.pool_id}
    return {k: v for k, v in ids.items() if v}


def tag(key: str, value: str) -> str:
    return f"{key}{TAG_SEPARATOR}{value}"


def ids_from(tags: list[str] | None, annotations: dict[str, str] | None) -> dict[str, str]:
    """Our ids read back from a resource: annotations are exact, tags are the fallback."""
    found: dict[str, str] = {}
    for item in tags or []:
        for key in (OWNER_TAG, INSTANCE_TAG, POOL_TAG):
            if item.startswith(key + TAG_SEPARATOR):
                found[key] = item[len(key) + 1:]
    for key in (OWNER_TAG, INSTANCE_TAG, POOL_TAG):
        if annotations and annotations.get(key):
            found[key] = annotations[key]
    return found


def instance_name(prefix: str, instance_id: str) -> str:
    """A deterministic, DNS-label-safe name: the idempotency key the API enforces (names are unique)."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"{prefix}{instance_id}".lower()).strip("-")
    return name[:63].rstrip("-")


def parse_snapshot(snapshot_id: str, default_kind: str) -> tuple[str, str]:
    """`checkpoint:<uuid>` / `template:<uuid>` as `snapshot` returns them; a bare id means `default_kind`."""
    kind, sep, ref = snapshot_id.partition(":")
    if sep and kind in SNAPSHOT_KINDS and ref:
        return kind, ref
    return default_kind, snapshot_id


def name_or_uuid(value: str) -> dict[str, str]:
    return {"uuid": value} if _UUID.match(value) else {"name": value}


# ---- value coercion ----------------------------------------------------------------------------

def _bad(key: str, value: Any, expected: str) -> ProviderPermanent:
    return ProviderPermanent(f"pool template: {key} must be {expected}, got {value!r}")


def _as_list(key: str, value: Any, *, comma: bool = False) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return [str(v) for v in json.loads(text)]
            except ValueError:
                raise _bad(key, value, "a JSON list") from None
        if comma:
            return [part.strip() for part in text.split(",") if part.strip()]
        try:
            return shlex.split(text)
        except ValueError:
            raise _bad(key, value, "a list or a shell-quoted string") from None
    raise _bad(key, value, "a list")


def _as_dict(key: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                raise _bad(key, value, "a JSON object") from None
            if isinstance(parsed, dict):
                return parsed
        out: dict[str, Any] = {}
        for item in _as_list(key, text):
            name, sep, val = item.partition("=")
            if not sep or not name:
                raise _bad(key, value, "a JSON object or K=V pairs")
            out[name] = val
        return out
    raise _bad(key, value, "an object")


def _as_int(key: str, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value).strip())
    except ValueError:
        raise _bad(key, value, "an integer") from None


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise _bad(key, value, "true or false")


def _memory_mb(template: dict[str, Any], default: int | None) -> int | None:
    if template.get("memory_mb") not in (None, ""):
        return _as_int("memory_mb", template["memory_mb"])
    raw = template.get("memory")
    if raw in (None, ""):
        return default
    match = _MEMORY.match(str(raw))
    if not match:
        raise _bad("memory", raw, 'megabytes such as "512", "512Mi" or "1G"')
    amount, unit = int(match.group(1)), (match.group(2) or "m").lower()
    return amount * 1024 if unit.startswith("g") else amount


def _service(key: str, item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return dict(item)
    text = str(item).strip()
    ports, _, handlers = text.partition("/")
    public, _, internal = ports.partition(":")
    service: dict[str, Any] = {"port": _as_int(key, public), "destination_port": _as_int(key, internal or public)}
    if handlers:
        service["handlers"] = [h for h in handlers.split("+") if h]
    elif service["port"] == 443:
        service["handlers"] = ["tls", "http"]
    return service


def _service_group(template: dict[str, Any]) -> dict[str, Any] | None:
    if template.get("service_group"):
        group = template["service_group"]
        return _as_dict("service_group", group) if isinstance(group, dict) else name_or_uuid(str(group))
    raw = template.get("ports")
    items = raw if isinstance(raw, list) else _as_list("ports", raw, comma=True) if raw not in (None, "") else []
    if not items:
        return None
    made: dict[str, Any] = {"services": [_service("ports", item) for item in items]}
    domains = _as_list("domains", template.get("domains"), comma=True)
    if domains:
        made["domains"] = [{"fqdn": d} for d in domains]
    return made


def _scale_to_zero(template: dict[str, Any]) -> dict[str, Any] | None:
    raw = template.get("scale_to_zero")
    if raw in (None, ""):
        return None
    s2z: dict[str, Any] = _as_dict("scale_to_zero", raw) if isinstance(raw, dict) or str(raw).strip().startswith("{") \
        else {"policy": str(raw).strip().lower()}
    if s2z.get("policy", "on") not in _POLICIES:
        raise _bad("scale_to_zero", raw, "one of off, on, idle")
    for key, field, conv in (("scale_to_zero_stateful", "stateful", _as_bool),
                             ("scale_to_zero_cooldown_ms", "cooldown_time_ms", _as_int),
                             ("scale_to_zero_notify_ms", "notify_time_ms", _as_int)):
        if template.get(key) not in (None, ""):
            s2z[field] = conv(key, template[key])
    return s2z


# ---- the request -------------------------------------------------------------------------------

def create_body(spec: InstanceSpec, *, name: str, start: bool, start_timeout_s: int, default_memory_mb: int | None,
                default_vcpus: int | None, snapshot_kind: str) -> dict[str, Any]:
    """The JSON body of `POST /v1/instances` for `spec`."""
    t = dict(spec.template or {})
    body: dict[str, Any] = {}
    if spec.snapshot_id:
        kind, ref = parse_snapshot(spec.snapshot_id, snapshot_kind)
        body[kind] = name_or_uuid(ref)  # both are mutually exclusive with `image`
    elif t.get("image"):
        body["image"] = str(t["image"])
    else:
        raise ProviderPermanent("pool template has no image (and the pool has no snapshot to start from)")
    if "checkpoint" not in body:  # a checkpoint restores its own configuration with its state
        args = _as_list("args", t.get("args"))
        env = {k: str(v) for k, v in _as_dict("env", t.get("env")).items()}
        if args:
            body["args"] = args
        if env:
            body["env"] = env
        memory = _memory_mb(t, default_memory_mb)
        if memory is not None:
            body["memory_mb"] = memory
        vcpus = t.get("vcpus") if t.get("vcpus") not in (None, "") else default_vcpus
        if vcpus is not None:
            body["vcpus"] = _as_int("vcpus", vcpus)
    group = _service_group(t)
    if group:
        body["service_group"] = group
    s2z = _scale_to_zero(t)
    if s2z and s2z.get("policy", "on") != "off" and not group:
        raise ProviderPermanent("pool template: scale_to_zero needs a service group; set ports or service_group")
    if s2z:
        body["scale_to_zero"] = s2z
    if t.get("restart_policy"):
        body["restart_policy"] = str(t["restart_policy"])
    features = _as_list("features", t.get("features"), comma=True)
    if features:
        body["features"] = features
    raw = _as_dict("unikraft", t.get("unikraft"))
    body.update({k: v for k, v in raw.items() if k not in ("name", "tags", "annotations")})
    ids = our_tags(spec)
    extra_tags = _as_list("tags", t.get("tags"), comma=True)
    body.update(name=name, autostart=start, tags=[tag(k, v) for k, v in ids.items()] + extra_tags,
                annotations=dict(ids))
    if start and start_timeout_s > 0:
        body["timeout_s"] = start_timeout_s  # the create blocks until the instance runs
    return body
