"""openYuanrong pod pools on the one pool model: validation, create/query/update/delete, and status 0..6.

A pod pool is a `Pool` of kind `podpool` whose `name` is the pool id and `group_name` its group:
- `size` -> `min_size` (the reserved base), `max_size` -> `max_size` (the ceiling; scalable = max > size).
- `reuse` -> `reuse`. The idle recycle times the engine honours are folded into `idle_recycle_reserved` /
  `idle_recycle_scaled` (seconds, -1 never) by `effective_idle_recycle`: `idle_recycle_time` where set on a
  scalable pool (its 0 means unset), else the `yr-idle-to-recycle` label ("unlimited" or absent = -1).
- `template` holds what a pod is built from, parsed (the JSON-in-string fields as objects); `extra["podpool"]`
  keeps every field exactly as the client sent it, so a query echoes it back unchanged.
- `extra["spec_changed_at"]` marks the last spec change: until a reconcile pass has run after it, the pool
  is New (0) or pending Update (2), and openYuanrong refuses updates in those states.

Several pools in one create are handled per item (each in its own savepoint), as openYuanrong's meta
service does: the good ones are created, the failures are reported together. A request beyond the
organization's quota (more pools than `max_pools_per_request`, or than its live-pool room) is refused
whole before any item is stored.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from app.domain import compute, pools, quotas
from app.domain.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound
from app.domain.states import PoolKind, PoolPhase
from app.models import Pool, Runner, utcnow

ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
GROUP_RE = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,38}[a-zA-Z0-9])?$")
DEFAULT_GROUP = "default"
IDLE_LABEL = "yr-idle-to-recycle"
UNLIMITED = "unlimited"
POOL_ANNOTATION = "yr-pod-pool"
DEFAULT_PENDING_THRESHOLD = 120
MAX_IMAGE_LEN = 200
MAX_RUNTIME_CLASS_LEN = 64
RESERVED_LABEL_PREFIX = "warmpool.dev/"
NOT_FOUND = "pool does not exist or has been deleted"

_QUANTITY_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]i?|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

# field -> (the JSON type it must hold, what it is, the template key the provider reads)
JSON_FIELDS: dict[str, tuple[type, str, str]] = {
    "volumes": (list, "an array of Kubernetes Volume objects", "volumes"),
    "volume_mounts": (list, "an array of Kubernetes VolumeMount objects", "volume_mounts"),
    "affinities": (dict, "a Kubernetes Affinity object", "affinity"),
    "tolerations": (list, "an array of Kubernetes Toleration objects", "tolerations"),
    "topology_spread_constraints": (list, "an array of Kubernetes TopologySpreadConstraint objects",
                                    "topology_spread_constraints"),
    "horizontal_pod_autoscaler_spec": (dict, "a Kubernetes HorizontalPodAutoscalerSpec object", ""),
}


class PodPoolStatus(IntEnum):
    NEW = 0
    CREATING = 1
    UPDATE = 2
    UPDATING = 3
    RUNNING = 4
    FAILED = 5
    DELETED = 6


STATUS_MSG = {
    PodPoolStatus.NEW: "New", PodPoolStatus.CREATING: "Creating", PodPoolStatus.UPDATE: "Update",
    PodPoolStatus.UPDATING: "Updating", PodPoolStatus.RUNNING: "Running", PodPoolStatus.FAILED: "Failed",
    PodPoolStatus.DELETED: "Deleted",
}
UPDATE_REFUSED = frozenset({PodPoolStatus.NEW, PodPoolStatus.UPDATE, PodPoolStatus.DELETED})


@dataclass
class PodPoolInput:
    """One PoolInfo of a create request, already type-checked by the façade (absent = Go zero value)."""

    id: str = ""
    group: str = ""
    size: int = 0
    max_size: int = 0
    reuse: bool = False
    image: str = ""
    init_image: str = ""
    labels: dict[str, str] | None = None
    environment: dict[str, str] | None = None
    node_selector: dict[str, str] | None = None
    volumes: str = ""
    volume_mounts: str = ""
    affinities: str = ""
    tolerations: str = ""
    horizontal_pod_autoscaler_spec: str = ""
    topology_spread_constraints: str = ""
    resources: dict[str, dict[str, str] | None] | None = None
    runtime_class_name: str = ""
    pod_pending_duration_threshold: int = 0
    idle_recycle_time: dict[str, int] | None = None
    given: dict[str, Any] = field(default_factory=dict)
    """The fields the client actually sent, as sent (echoed by a query)."""


# ---- validation ------------------------------------------------------------------------------

def parse_json_field(name: str, raw: str) -> Any:
    """A JSON-in-string field as an object; '' is absent. Invalid JSON or the wrong shape is rejected."""
    if not raw:
        return None
    kind, what, _ = JSON_FIELDS[name]
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{name} is not valid JSON ({exc.msg} at position {exc.pos}); "
                              f"it must be a string holding {what}") from None
    if not isinstance(value, kind) or (kind is list and not all(isinstance(v, dict) for v in value)):
        raise InvalidArgument(f"{name} must be a string holding {what}, got {raw[:80]!r}")
    return value


def _check_label_key(key: str, where: str) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        raise InvalidArgument(f"{where} key {key!r} has an invalid prefix: it must be a DNS subdomain")
    if not _LABEL_NAME_RE.match(name):
        raise InvalidArgument(f"{where} key {key!r} is not a valid Kubernetes label key (at most 63 letters, "
                              "digits, '-', '_' or '.', starting and ending with a letter or digit)")


def _check_label_value(key: str, value: str, where: str) -> None:
    if value and not _LABEL_NAME_RE.match(value):
        raise InvalidArgument(f"{where} value {value!r} of {key!r} is not a valid Kubernetes label value "
                              "(at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)")


def _check_labels(labels: dict[str, str] | None, where: str) -> None:
    for key, value in (labels or {}).items():
        _check_label_key(key, where)
        _check_label_value(key, value, where)
        if where == "labels" and key.startswith(RESERVED_LABEL_PREFIX):
            raise InvalidArgument(f"labels key {key!r} uses the reserved prefix {RESERVED_LABEL_PREFIX!r}")


def label_idle_seconds(labels: dict[str, str] | None) -> int:
    """The `yr-idle-to-recycle` label in seconds: -1 when absent or "unlimited"."""
    value = (labels or {}).get(IDLE_LABEL)
    if value is None or value == UNLIMITED:
        return -1
    if not value.isdigit():
        raise InvalidArgument(f"labels[{IDLE_LABEL!r}] must be a number of seconds or {UNLIMITED!r}, got {value!r}")
    return int(value)


def _check_resources(resources: dict[str, dict[str, str] | None] | None) -> dict[str, dict[str, str]]:
    if not resources or not any(resources.get(k) for k in ("requests", "limits")):
        raise InvalidArgument("resources is required: give resources.requests and/or resources.limits, "
                              'e.g. {"requests":{"cpu":"600m","memory":"512Mi"}}')
    out: dict[str, dict[str, str]] = {}
    for part in ("requests", "limits"):
        for name, qty in (resources.get(part) or {}).items():
            if not name or not _QUANTITY_RE.match(qty):
                raise InvalidArgument(f"resources.{part}[{name!r}] = {qty!r} is not a Kubernetes quantity "
                                      "(e.g. \"600m\" cpu, \"512Mi\" memory)")
            out.setdefault(part, {})[name] = qty
    return out


def effective_idle_recycle(size: int, max_size: int, labels: dict[str, str] | None,
                           idle: dict[str, int] | None) -> tuple[int, int]:
    """(reserved, scaled) seconds the engine honours, -1 never. As openYuanrong labels its pods: a scalable
    pool's idle_recycle_time wins where set (0 = unset), else the pool's `yr-idle-to-recycle` label applies;
    a fixed-size pool has no scaled pods and recycles idle pods per the label only."""
    label = label_idle_seconds(labels)
    if max_size > size:
        reserved, scaled = (idle or {}).get("reserved", 0), (idle or {}).get("scaled", 0)
        return (reserved or label), (scaled or label)
    return label, -1


def validate(p: PodPoolInput) -> tuple[int, dict[str, Any]]:
    """Check one create input against openYuanrong's rules; returns (max_size, parsed JSON fields)."""
    if not ID_RE.match(p.id):
        raise InvalidArgument("pod pool id can contain only lowercase letters, digits and '-'. it cannot start or "
                              "end with '-' and cannot exceed 40 characters or less than 1 characters")
    if not GROUP_RE.match(p.group or DEFAULT_GROUP):
        raise InvalidArgument("pod pool group can contain only letters, digits and '-'. it cannot start or end "
                              "with '-' and cannot exceed 40 characters")
    if p.size < 0:
        raise InvalidArgument("size is less than 0")
    max_size = p.size if (p.size != 0 and p.max_size == 0) else p.max_size
    if max_size < p.size:
        raise InvalidArgument("max_size is less than size")
    if max_size > p.size and p.horizontal_pod_autoscaler_spec:
        raise InvalidArgument("max_size greater than size and horizontal_pod_autoscaler_spec cannot be set at the same time")
    for key in ("reserved", "scaled"):
        if (p.idle_recycle_time or {}).get(key, 0) < -1:
            raise InvalidArgument(f"idle time of {key} should not less than -1")
    if len(p.image) > MAX_IMAGE_LEN:
        raise InvalidArgument(f"image len is not in [1, {MAX_IMAGE_LEN}]")
    if len(p.init_image) > MAX_IMAGE_LEN:
        raise InvalidArgument(f"init image len is not in [1, {MAX_IMAGE_LEN}]")
    if len(p.runtime_class_name) > MAX_RUNTIME_CLASS_LEN:
        raise InvalidArgument(f"runtime_class_name should not greater than {MAX_RUNTIME_CLASS_LEN}")
    if p.pod_pending_duration_threshold < 0:
        raise InvalidArgument(f"pod_pending_duration_threshold should not be less than 0, which is {p.pod_pending_duration_threshold}")
    _check_labels(p.labels, "labels")
    _check_labels(p.node_selector, "node_selector")
    label_idle_seconds(p.labels)
    for name in p.environment or {}:
        if not _ENV_NAME_RE.match(name):
            raise InvalidArgument(f"environment variable name {name!r} is invalid (letters, digits, '-', '_', '.', not starting with a digit)")
    _check_resources(p.resources)
    parsed = {name: parse_json_field(name, getattr(p, name)) for name in JSON_FIELDS}
    return max_size, parsed


def template_for(p: PodPoolInput, parsed: dict[str, Any]) -> dict[str, Any]:
    """What each pod of the pool is built from (workers.providers.kubernetes.pod_manifest reads it)."""
    group = p.group or DEFAULT_GROUP
    labels = dict(p.labels or {})
    labels.setdefault(group, group)  # openYuanrong labels a pool's pods with its group
    template: dict[str, Any] = {
        "image": p.image, "init_image": p.init_image, "resources": _check_resources(p.resources),
        "environment": dict(p.environment or {}), "labels": labels, "annotations": {POOL_ANNOTATION: p.id},
        "node_selector": dict(p.node_selector or {}), "runtime_class_name": p.runtime_class_name,
        "pod_pending_duration_threshold": p.pod_pending_duration_threshold or DEFAULT_PENDING_THRESHOLD,
    }
    for name, (_, _, key) in JSON_FIELDS.items():
        if key and parsed.get(name) is not None:
            template[key] = parsed[name]
    return template


# ---- status ----------------------------------------------------------------------------------

def _spec_applied(pool: Pool) -> bool:
    """True once a reconcile pass ran after the last spec change."""
    marker = (pool.extra or {}).get("spec_changed_at")
    if pool.reconciled_at is None:
        return False
    return marker is None or pool.reconciled_at >= datetime.fromisoformat(marker)


def status_of(pool: Pool) -> tuple[PodPoolStatus, str]:
    """openYuanrong's status and msg from the pool's phase: not yet picked up by the engine -> New (or
    Update after a change), making pods -> Creating (Updating), ready -> Running, DEGRADED -> Failed,
    being deleted -> Deleted (pending deletion)."""
    phase = PoolPhase(pool.phase)
    if pool.deleted_at is not None or phase in (PoolPhase.DELETING, PoolPhase.DELETED):
        status = PodPoolStatus.DELETED
    elif phase == PoolPhase.DEGRADED:
        return PodPoolStatus.FAILED, pool.failure_message or STATUS_MSG[PodPoolStatus.FAILED]
    elif not _spec_applied(pool):
        status = PodPoolStatus.UPDATE if pool.spec_version > 1 else PodPoolStatus.NEW
    elif phase == PoolPhase.PENDING:
        status = PodPoolStatus.UPDATING if pool.spec_version > 1 else PodPoolStatus.CREATING
    else:
        status = PodPoolStatus.RUNNING
    return status, STATUS_MSG[status]


# ---- create ----------------------------------------------------------------------------------

def runner_for_pod_pools(org_id: str, *, session: Session) -> Runner:
    """Pod pools run on the organization's oldest `kubernetes` runner, else on its oldest runner."""
    runner = session.exec(
        select(Runner).where(Runner.organization_id == org_id)
        .order_by(sa.case((Runner.provider == "kubernetes", 0), else_=1), Runner.created_at, Runner.id)
    ).first()
    if runner is None:
        raise FailedPrecondition("no runner to run pod pools on: create one first "
                                 "(warmpool runner create --provider kubernetes ...)")
    return runner


def _live(org_id: str, *, session: Session, name: str | None = None, group: str | None = None) -> Any:
    stmt = select(Pool).where(Pool.organization_id == org_id, Pool.kind == str(PoolKind.PODPOOL),
                              Pool.phase != str(PoolPhase.DELETED))
    if name:
        stmt = stmt.where(Pool.name == name)
    if group:
        stmt = stmt.where(Pool.group_name == group)
    return stmt


def _create_one(org_id: str, p: PodPoolInput, runner: Runner, tenant_id: str, *, session: Session) -> Pool:
    max_size, parsed = validate(p)
    if session.exec(_live(org_id, session=session, name=p.id).limit(1)).first() is not None:
        raise AlreadyExists("pool id already exists or is deleting")
    reserved, scaled = effective_idle_recycle(p.size, max_size, p.labels, p.idle_recycle_time)
    template = template_for(p, parsed)
    compute.check_template(runner.provider, template)  # e.g. no hostPath volume unless the operator allows it
    pool = pools.new_pool(
        org_id, kind=PoolKind.PODPOOL, name=p.id, min_size=p.size, max_size=max_size,
        group_name=p.group or DEFAULT_GROUP, labels=dict(p.labels or {}), tenant_id=tenant_id, runner_id=runner.id,
        template=template, reuse=p.reuse, stopped_size=0,  # pods cannot be stopped
        idle_recycle_reserved=reserved, idle_recycle_scaled=scaled,
        extra={"podpool": dict(p.given), "spec_changed_at": utcnow().isoformat()},
    )
    return pools.insert_pool(pool, session=session, conflict="pool id already exists or is deleting")


def create_pod_pools(org_id: str, inputs: list[PodPoolInput], *, tenant_id: str, session: Session) -> list[tuple[str, str]]:
    """Create each pool in its own savepoint; returns (id, error message) for those that failed."""
    if not inputs:
        raise InvalidArgument("pools must contain at least one pool")
    # Refused whole, before anything is stored: a request too large for the quota creates nothing.
    quotas.admit_batch(org_id, len(inputs), session=session)
    runner = runner_for_pod_pools(org_id, session=session)
    failures: list[tuple[str, str]] = []
    for p in inputs:
        try:
            with session.begin_nested():
                _create_one(org_id, p, runner, tenant_id, session=session)
        except DomainError as exc:
            failures.append((p.id, f"failed to create pod pool, id: {p.id},err: {exc.message}"))
    return failures


# ---- query -----------------------------------------------------------------------------------

def query_pod_pools(org_id: str, *, session: Session, pool_id: str = "", group: str = "", offset: int = 0,
                    limit: int = 10) -> tuple[int, list[Pool]]:
    """(number of matching pools, the page). `offset` is a page number (0 means 1); limit <= 0 or
    offset < 0 is an empty answer, not an error. Pools being deleted are listed until they are gone."""
    if limit <= 0 or offset < 0:
        return 0, []
    stmt = _live(org_id, session=session, name=pool_id, group=group)
    count = session.execute(sa.select(sa.func.count()).select_from(stmt.subquery())).scalar_one()
    page = max(offset, 1)
    rows = session.exec(stmt.order_by(Pool.created_at, Pool.id).offset((page - 1) * limit).limit(limit)).all()
    return count, list(rows)


def _find(org_id: str, pool_id: str, *, session: Session, group: str = "", for_update: bool = False) -> Pool:
    stmt = _live(org_id, session=session, name=pool_id, group=group)
    if for_update:
        stmt = stmt.with_for_update()
    pool = session.exec(stmt.order_by(Pool.created_at.desc()).limit(1)).first()
    if pool is None:
        raise NotFound(NOT_FOUND)
    return pool  # type: ignore[return-value]  # _live's select is sqlalchemy's: rows are Pools


# ---- update ----------------------------------------------------------------------------------

def update_pod_pool(org_id: str, pool_id: str, *, size: int, max_size: int, hpa_spec: str, session: Session) -> Pool:
    """openYuanrong's update: sizes and the HPA spec. Refused while New, pending Update or being deleted;
    a fixed-size pool stays fixed (max_size follows size); max_size 0 keeps the current ceiling."""
    pool = _find(org_id, pool_id, session=session, for_update=True)
    status, _ = status_of(pool)
    if status in UPDATE_REFUSED:
        raise FailedPrecondition(f"pool status is {int(status)} , not allowed to update")
    if size < 0:
        raise InvalidArgument("size is less than 0")
    if pool.max_size <= pool.min_size:
        max_size = size
    elif max_size == 0 and size != 0:
        max_size = pool.max_size
    if max_size < size:
        raise InvalidArgument("max_size is less than size")
    if max_size > size and hpa_spec:
        raise InvalidArgument("max_size greater than size and horizontal_pod_autoscaler_spec cannot be set at the same time")
    parse_json_field("horizontal_pod_autoscaler_spec", hpa_spec)
    given = dict((pool.extra or {}).get("podpool", {}))
    labels = pool.labels or {}
    reserved, scaled = effective_idle_recycle(size, max_size, labels, given.get("idle_recycle_time"))
    unchanged = ((size, max_size, reserved, scaled) == (pool.min_size, pool.max_size, pool.idle_recycle_reserved,
                 pool.idle_recycle_scaled) and given.get("horizontal_pod_autoscaler_spec", "") == hpa_spec)
    if unchanged:
        return pool
    given["horizontal_pod_autoscaler_spec"] = hpa_spec
    extra = {**(pool.extra or {}), "podpool": given, "spec_changed_at": utcnow().isoformat()}
    return pools.resize_pool(org_id, pool.id, session=session, min_size=size, max_size=max_size, extra=extra,
                             idle_recycle_reserved=reserved, idle_recycle_scaled=scaled)


# ---- delete ----------------------------------------------------------------------------------

def delete_pod_pools(org_id: str, *, session: Session, pool_id: str = "", group: str = "") -> list[Pool]:
    """Delete one pool by id (in `group`, if given) or, with only a group, every pool of the group."""
    if not pool_id and not group:
        raise InvalidArgument("id and group cannot be empty at the same time")
    if pool_id:
        targets = [_find(org_id, pool_id, session=session, group=group, for_update=True)]
    else:
        targets = list(session.exec(_live(org_id, session=session, group=group)
                                    .order_by(Pool.created_at, Pool.id).with_for_update()).all())
        if not targets:
            raise NotFound(NOT_FOUND)
    return [pools.delete_pool(org_id, pool.id, session=session) for pool in targets]
