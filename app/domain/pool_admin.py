"""The native pool API's domain: create a named pool with every knob, and change any knob of a pool of any
kind, the Gitpod and openYuanrong pools' own fields keeping their upstream rules.

Rules (the README's "Native pools" repeats them):
- A named pool runs on one of the caller's runners; its template is checked by that runner's provider
  template model (unknown keys refused, operator-only keys named). Its name is what the Intrinsic lease
  service leases it by: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, unique
  among the organization's live pools.
- Knobs: sizes (min, max, stopped tier), empty-pool policy, lease default and maximum, reservation TTL,
  idle recycling (reserved, scaled; -1 never), rotation surge, autoscaler headroom and cooldown. Ranges
  are in KNOBS; the lease default may not exceed the maximum; sizes pass the organization's quota.
- A Gitpod warm pool keeps Gitpod's size bounds (min 0..N, max 1..N, N = WARMPOOL_GITPOD__MAX_POOL_SIZE)
  and its template is its environment class's configuration. A pod pool's sizes follow openYuanrong's
  update rules (a fixed-size pool stays fixed, no update while New or pending Update), pods cannot be
  stopped (stopped tier 0), and its template and idle recycling come from its pod-pool spec.
- Every change bumps `spec_version` (only when something changed) and asks for a reconcile after commit.
"""
from __future__ import annotations

import re
from typing import Any

from sqlmodel import Session

from app.domain import compute, podpools, pools, tenancy
from app.domain.errors import FailedPrecondition, InvalidArgument
from app.domain.states import EmptyPoolPolicy, PoolKind
from app.models import Pool
from config.settings import get_settings

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MONTH = 31 * 86400
# knob -> (lowest, highest); the native API documents the same bounds in its schema.
KNOBS: dict[str, tuple[float, float]] = {
    "stopped_size": (0, 10_000),
    "lease_default_seconds": (1, MONTH),
    "lease_max_seconds": (1, MONTH),
    "reservation_ttl_seconds": (1, 86400),
    "idle_recycle_reserved": (-1, MONTH),
    "idle_recycle_scaled": (-1, MONTH),
    "rotation_max_surge": (0, 1000),
    "autoscale_headroom": (0, 100),
    "autoscale_cooldown_seconds": (0, 86400),
}
SIZES = ("min_size", "max_size")
AUTOSCALE = {"autoscale_headroom": "headroom", "autoscale_cooldown_seconds": "cooldown"}
# The pod-pool façade derives these from its own spec; the native API does not override them.
PODPOOL_OWNED = {"template": "a pod pool's template is its pod-pool spec (POST /serverless/v1/podpools)",
                 "idle_recycle_reserved": "a pod pool's idle recycling follows its idle_recycle_time and "
                                          "yr-idle-to-recycle label (openYuanrong's rules)",
                 "idle_recycle_scaled": "a pod pool's idle recycling follows its idle_recycle_time and "
                                        "yr-idle-to-recycle label (openYuanrong's rules)"}


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):  # fullmatch: `$` alone would let a trailing newline through
        raise InvalidArgument(f"pool name {name[:80]!r} must be 1-63 letters, digits, '.', '_' or '-', starting "
                              "with a letter or digit (it is what the lease service leases the pool by)")
    return name


def check_knobs(changes: dict[str, Any], current: Pool | None = None) -> None:
    """Ranges, the empty-pool policy, and lease default <= maximum (with the pool's other value)."""
    for key, value in changes.items():
        if key in KNOBS:
            low, high = KNOBS[key]
            kind = (int, float) if key in AUTOSCALE else (int,)
            if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
                what = "a number" if key in AUTOSCALE else "a whole number"
                raise InvalidArgument(f"{key} must be {what} from {low:g} to {high:g}, got {value!r}")
    if "empty_policy" in changes and changes["empty_policy"] not in set(EmptyPoolPolicy):
        raise InvalidArgument(f"empty_policy must be one of {', '.join(EmptyPoolPolicy)}, got {changes['empty_policy']!r}")
    default = changes.get("lease_default_seconds", current.lease_default_seconds if current else None)
    maximum = changes.get("lease_max_seconds", current.lease_max_seconds if current else None)
    if default is not None and maximum is not None and default > maximum:
        raise InvalidArgument(f"lease_default_seconds ({default}) must be <= lease_max_seconds ({maximum})")


def _spec_fields(changes: dict[str, Any], pool: Pool | None) -> dict[str, Any]:
    """Column values for the knobs in `changes` (autoscaler knobs merged into the `autoscale` document)."""
    fields = {k: v for k, v in changes.items() if k not in AUTOSCALE and k not in SIZES}
    tuned = {AUTOSCALE[k]: float(v) for k, v in changes.items() if k in AUTOSCALE}
    if tuned:
        fields["autoscale"] = {**((pool.autoscale or {}) if pool is not None else {}), **tuned}
    return fields


def _checked_template(runner_provider: str, template: Any) -> dict[str, Any]:
    if not isinstance(template, dict):
        raise InvalidArgument("template must be an object, e.g. {\"image\": \"...\"}")
    compute.check_template(runner_provider, template)  # the provider's typed model: tenants are hostile
    return dict(template)


def create_named_pool(org_id: str, *, name: str, runner_id: str, min_size: int, max_size: int,
                      template: dict[str, Any] | None = None, session: Session, **knobs: Any) -> Pool:
    """A named pool (the Intrinsic lease service's kind) on one of the organization's runners."""
    check_name(name)
    runner = tenancy.get_runner(org_id, runner_id, session=session)
    unknown = set(knobs) - set(KNOBS) - {"empty_policy"}
    if unknown:
        raise InvalidArgument(f"unknown pool setting(s) {', '.join(sorted(unknown))}")
    check_knobs(knobs)
    fields = _spec_fields(knobs, None)
    pool = pools.new_pool(org_id, kind=PoolKind.NAMED, name=name, min_size=min_size, max_size=max_size,
                          runner_id=runner.id, template=_checked_template(runner.provider, template or {}), **fields)
    return pools.insert_pool(pool, session=session, conflict=f"a live pool named {name!r} already exists")


def check_kind_sizes(pool: Pool, min_size: int | None, max_size: int | None) -> None:
    """A Gitpod warm pool's size bounds (upstream's: min 0..N, max 1..N)."""
    if pool.kind != PoolKind.GITPOD:
        return
    cap = get_settings().gitpod.max_pool_size
    for name, value, low in (("min_size", min_size, 0), ("max_size", max_size, 1)):
        if value is not None and not low <= value <= cap:
            raise InvalidArgument(f"{name} of a Gitpod warm pool must be between {low} and {cap}, got {value}")


def set_sizes(pool: Pool, min_size: int | None, max_size: int | None, *, session: Session) -> Pool:
    """Change a pool's min/max by its kind's rules (the native PATCH and scheduled sizing both come here)."""
    if min_size is None and max_size is None:
        return pool
    if pool.kind == PoolKind.PODPOOL:
        spec = (pool.extra or {}).get("podpool", {})
        return podpools.update_pod_pool(
            pool.organization_id, pool.name, size=pool.min_size if min_size is None else min_size,
            max_size=pool.max_size if max_size is None else max_size,
            hpa_spec=spec.get("horizontal_pod_autoscaler_spec", ""), session=session)
    check_kind_sizes(pool, min_size, max_size)
    return pools.resize_pool(pool.organization_id, pool.id, min_size=min_size, max_size=max_size, session=session)


def update_pool(org_id: str, pool_id: str, changes: dict[str, Any], *, session: Session) -> Pool:
    """Change the given knobs (and sizes, and a named pool's template) of any kind of pool."""
    pool = pools.get_pool(org_id, pool_id, session=session, for_update=True)
    if pool.deleted_at is not None:
        raise FailedPrecondition(f"pool {pool_id} is being deleted (phase {pool.phase}) and cannot be changed")
    unknown = set(changes) - set(KNOBS) - set(SIZES) - {"empty_policy", "template"}
    if unknown:
        raise InvalidArgument(f"unknown pool setting(s) {', '.join(sorted(unknown))}")
    check_knobs(changes, pool)
    if pool.kind == PoolKind.PODPOOL:
        for key, why in PODPOOL_OWNED.items():
            if key in changes:
                raise FailedPrecondition(f"{key} cannot be changed here: {why}")
        if changes.get("stopped_size", 0) != 0:
            raise FailedPrecondition("a pod pool has no stopped tier (pods cannot be stopped): stopped_size stays 0")
    if pool.kind == PoolKind.GITPOD and "template" in changes:
        raise FailedPrecondition("a Gitpod warm pool's template is its environment class's configuration "
                                 "(gitpod.v1.RunnerConfigurationService/UpdateEnvironmentClass)")
    fields = _spec_fields(changes, pool)
    if "template" in fields:
        runner = tenancy.get_runner(org_id, pool.runner_id, session=session) if pool.runner_id else None
        if runner is None:
            raise FailedPrecondition(f"pool {pool.name!r} has no runner any more, so its template cannot be checked")
        fields["template"] = _checked_template(runner.provider, fields["template"])
    min_size, max_size = changes.get("min_size"), changes.get("max_size")
    if pool.kind == PoolKind.PODPOOL:  # its sizes through openYuanrong's update, the rest below
        pool = set_sizes(pool, min_size, max_size, session=session)
        min_size = max_size = None
    check_kind_sizes(pool, min_size, max_size)
    if fields or min_size is not None or max_size is not None:  # one change, one spec version
        pool = pools.resize_pool(org_id, pool.id, min_size=min_size, max_size=max_size, session=session, **fields)
    return pool
