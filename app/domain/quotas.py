"""Per-organization quotas: how big a pool, how many pools and instances, how many pools in one request.

The defaults are the operator's settings (config QuotaSettings, WARMPOOL_QUOTAS__*); an operator may
override them per organization (`warmpool quota set`, the `organization_quotas` table). Tenants read
their own quota (GET /v1/quota) and never change it.

Every path that creates or grows a pool comes through here, whatever its façade:
- `admit_pool` before a new pool is stored (pools.insert_pool: Gitpod warm pools, pod pools, named pools);
- `admit_resize` before a pool grows (pools.resize_pool: Gitpod and pod-pool updates);
- `admit_batch` before a multi-pool create stores anything (openYuanrong's POST is refused whole);
- `instance_room` caps what the reconciler and cold leases create (the autoscaler moves only between a
  pool's admitted min and max), and `creation_room` how many the reconciler has in creation at once.
The admission checks count under a lock on the organization's row, so two concurrent creates cannot
both take the last pool or the last instances. Errors are QuotaExceeded (resource_exhausted) naming
the limit, its value and what the request asked for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import sqlalchemy as sa
from sqlmodel import Session, select

from app.domain.errors import InvalidArgument, NotFound, ResourceExhausted
from app.domain.states import InstanceState
from app.models import Instance, Organization, OrganizationQuota, Pool, utcnow
from config.settings import get_settings


@dataclass(frozen=True)
class Quota:
    max_pool_size: int
    max_pools: int
    max_instances: int
    max_pools_per_request: int
    max_creating: int
    lease_rate: int = 0  # Lease calls per second; 0: unlimited (app.ratelimit)
    lease_burst: int = 0


LIMITS = tuple(f.name for f in fields(Quota))


class QuotaExceeded(ResourceExhausted):
    """A request would take the organization past one of its limits (`limit` names which)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def defaults() -> Quota:
    q = get_settings().quotas
    return Quota(**{name: getattr(q, name) for name in LIMITS})


def quota_of(org_id: str, *, session: Session) -> Quota:
    """The organization's effective limits: the operator's overrides over the defaults."""
    base = asdict(defaults())
    row = session.get(OrganizationQuota, org_id)
    if row is not None:
        base.update({name: getattr(row, name) for name in LIMITS if getattr(row, name) is not None})
    return Quota(**base)


def set_quota(org_id: str, *, session: Session, **limits: int | None) -> Quota:
    """The operator's override: each given limit is set (None: back to the default); returns the result."""
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise InvalidArgument(f"unknown quota limit(s) {sorted(unknown)}; known: {', '.join(LIMITS)}")
    for name, value in limits.items():
        if value is not None and value < 0:
            raise InvalidArgument(f"{name} must be >= 0, got {value}")
    row = session.get(OrganizationQuota, org_id)
    if row is None:
        row = OrganizationQuota(organization_id=org_id)
    for name, value in limits.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return quota_of(org_id, session=session)


def overrides(org_id: str, *, session: Session) -> dict[str, int]:
    """The limits the operator set for this organization (the rest are defaults)."""
    row = session.get(OrganizationQuota, org_id)
    return {} if row is None else {n: getattr(row, n) for n in LIMITS if getattr(row, n) is not None}


# ---- usage -------------------------------------------------------------------------------------

def live_pools(org_id: str, *, session: Session, exclude: str | None = None) -> int:
    stmt = sa.select(sa.func.count()).select_from(Pool).where(Pool.organization_id == org_id, Pool.deleted_at.is_(None))
    if exclude:
        stmt = stmt.where(Pool.id != exclude)
    return session.execute(stmt).scalar_one()


def admitted_instances(org_id: str, *, session: Session, exclude: str | None = None) -> int:
    """What the organization's live pools may hold at most: the sum of max_size + stopped_size."""
    stmt = (sa.select(sa.func.coalesce(sa.func.sum(Pool.max_size + Pool.stopped_size), 0))
            .where(Pool.organization_id == org_id, Pool.deleted_at.is_(None)))
    if exclude:
        stmt = stmt.where(Pool.id != exclude)
    return int(session.execute(stmt).scalar_one())


def live_instances(org_id: str, *, session: Session) -> int:
    """Instances that exist or are on their way (every state but deleted): what the provider holds for us."""
    return session.execute(
        sa.select(sa.func.count()).select_from(Instance)
        .where(Instance.organization_id == org_id, Instance.state != str(InstanceState.DELETED))
    ).scalar_one()


def usage(org_id: str, *, session: Session) -> dict[str, int]:
    return {"pools": live_pools(org_id, session=session),
            "admitted_instances": admitted_instances(org_id, session=session),
            "instances": live_instances(org_id, session=session)}


# ---- admission ---------------------------------------------------------------------------------

def report(org_id: str, *, session: Session) -> tuple[Quota, dict[str, int]]:
    """An organization's quota and its usage, read in one transaction."""
    return quota_of(org_id, session=session), usage(org_id, session=session)


def _lock_organization(org_id: str, *, session: Session) -> None:
    """Serialize quota checks of one organization until commit. A no-op UPDATE: a row lock on
    PostgreSQL (it does not block inserts that only reference the row), and on SQLite it opens the
    write transaction, so the counts read next cannot go stale before our insert."""
    session.execute(sa.update(Organization).where(Organization.id == org_id).values(name=Organization.name))


def _check_sizes(quota: Quota, sizes: dict[str, int], before: dict[str, int] | None) -> None:
    for name, value in sizes.items():
        grows = before is None or value > before.get(name, 0)
        if grows and value > quota.max_pool_size:
            raise QuotaExceeded("max_pool_size", f"{name}={value} is above this organization's quota: "
                                f"max_pool_size={quota.max_pool_size} (the operator can raise it)")


def _check_capacity(org_id: str, quota: Quota, pool_id: str, capacity: int, *, session: Session) -> None:
    others = admitted_instances(org_id, session=session, exclude=pool_id)
    if others + capacity > quota.max_instances:
        raise QuotaExceeded("max_instances", f"this pool may hold {capacity} instances (max_size + stopped size) and "
                            f"the organization's other live pools {others}, above its quota: "
                            f"max_instances={quota.max_instances} (the operator can raise it)")


def admit_pool(pool: Pool, *, session: Session) -> None:
    """Before a new pool is stored: its sizes, one more live pool, and the instances it may hold."""
    org_id = pool.organization_id
    quota = quota_of(org_id, session=session)
    _check_sizes(quota, {"min_size": pool.min_size, "max_size": pool.max_size, "stopped_size": pool.stopped_size}, None)
    _lock_organization(org_id, session=session)
    count = live_pools(org_id, session=session, exclude=pool.id)
    if count + 1 > quota.max_pools:
        raise QuotaExceeded("max_pools", f"the organization already has {count} live pools, its quota: "
                            f"max_pools={quota.max_pools} (delete one, or ask the operator to raise it)")
    _check_capacity(org_id, quota, pool.id, pool.max_size + pool.stopped_size, session=session)


def admit_resize(pool: Pool, *, min_size: int, max_size: int, stopped_size: int, session: Session) -> None:
    """Before a pool's sizes change: only growth is checked, so a pool above a lowered quota can shrink."""
    quota = quota_of(pool.organization_id, session=session)
    before = {"min_size": pool.min_size, "max_size": pool.max_size, "stopped_size": pool.stopped_size}
    _check_sizes(quota, {"min_size": min_size, "max_size": max_size, "stopped_size": stopped_size}, before)
    if max_size + stopped_size > pool.max_size + pool.stopped_size:
        _lock_organization(pool.organization_id, session=session)
        _check_capacity(pool.organization_id, quota, pool.id, max_size + stopped_size, session=session)


def admit_batch(org_id: str, count: int, *, session: Session) -> None:
    """Before a multi-pool create stores anything: the request's size and the pools it would add."""
    quota = quota_of(org_id, session=session)
    if count > quota.max_pools_per_request:
        raise QuotaExceeded("max_pools_per_request", f"the request carries {count} pools, above this organization's "
                            f"quota: max_pools_per_request={quota.max_pools_per_request}; send them in smaller requests")
    existing = live_pools(org_id, session=session)
    if existing + count > quota.max_pools:
        raise QuotaExceeded("max_pools", f"the request would add {count} pools to the organization's {existing} "
                            f"live pools, above its quota: max_pools={quota.max_pools}")


def instance_room(org_id: str, *, session: Session) -> int:
    """How many more instances the organization may have right now (never negative)."""
    quota = quota_of(org_id, session=session)
    return max(quota.max_instances - live_instances(org_id, session=session), 0)


def creation_room(org_id: str, *, session: Session) -> int:
    """How many more instances the organization may start creating now: `max_creating` minus those
    still requested or provisioning (its share of the provider calls and of the event stream)."""
    creating = session.execute(
        sa.select(sa.func.count()).select_from(Instance)
        .where(Instance.organization_id == org_id,
               Instance.state.in_([str(InstanceState.REQUESTED), str(InstanceState.PROVISIONING)]))
    ).scalar_one()
    return max(quota_of(org_id, session=session).max_creating - creating, 0)


def organization_named(name: str, *, session: Session) -> Organization:
    """The organization an operator names on the command line; NotFound rather than creating a typo."""
    org = session.exec(select(Organization).where(Organization.name == name.strip())).first()
    if org is None:
        raise NotFound(f"no organization named {name!r} (`warmpool token create --org {name}` creates it)")
    return org
