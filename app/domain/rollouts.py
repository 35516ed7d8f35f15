"""Rollout control on a pool: the reconciler's pass (app.domain.rollout decides, this stores), and the
operator's calls: read the status, set the policy, pause, resume, roll back to the previous snapshot.
Domain functions take `*, session` and never commit."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlmodel import Session

from app.domain import rollout
from app.domain.errors import FailedPrecondition, NotFound
from app.domain.planner import InstanceView
from app.domain.pools import bump_spec, bump_status, get_pool, request_reconcile, set_snapshot
from app.domain.states import DesiredState, InstanceState as S
from app.models import Pool, utcnow

_GONE = frozenset({S.DELETED, S.DELETING, S.FAILED})


def policy_of(pool: Pool) -> rollout.Policy:
    return rollout.Policy.model_validate({**(pool.rollout_policy or {}), "max_surge": pool.rotation_max_surge})


def counts(pool: Pool, rows: Iterable[InstanceView]) -> rollout.Counts:
    """The rotation's view of the pool's free instances (leased ones leave when they are returned)."""
    stale = fresh_ready = fresh_live = leased = 0
    snapshot_id = pool.snapshot_id  # once, not an ORM attribute read per instance
    for i in rows:
        if i.leased:
            leased += i.state not in _GONE
            continue
        if i.state in _GONE or i.desired_state == DesiredState.DELETED:
            continue
        if snapshot_id and i.snapshot_id != snapshot_id:
            stale += 1
        elif i.desired_state == DesiredState.RUNNING:
            fresh_live += 1
            fresh_ready += i.state == S.RUNNING and not i.draining
    want = max(pool.desired_size - (leased if pool.reuse else 0), 0)
    return rollout.Counts(want=want, stale_live=stale, fresh_ready=fresh_ready, fresh_live=fresh_live)


def reconcile_pass(pool: Pool, rows: list[InstanceView], now: datetime, policy: rollout.Policy) -> rollout.Decision:
    """Advance the pool's rollout for this reconcile (the pool row is locked by the caller) and store
    what changed; a stall becomes the pool's failure message (its phase turns DEGRADED on recount)."""
    decision = rollout.step(policy, pool.rollout_state, snapshot_id=pool.snapshot_id,
                            counts=counts(pool, rows), now=now)
    if decision.changed:
        was_stalled = bool((pool.rollout_state or {}).get("stalled"))
        pool.rollout_state = decision.state
        if decision.stalled:
            pool.failure_message = decision.stalled
        elif was_stalled and pool.failure_message.startswith("rollout to snapshot"):
            pool.failure_message = ""
        bump_status(pool)
    return decision


def _locked(pool_id: str, org_id: str, *, session: Session) -> Pool:
    pool = get_pool(org_id, pool_id, session=session, for_update=True)
    if pool.deleted_at is not None:
        raise NotFound(f"pool {pool_id} not found")
    return pool


def get_status(pool_id: str, org_id: str, *, session: Session) -> dict[str, Any]:
    return status(get_pool(org_id, pool_id, session=session))


def status(pool: Pool) -> dict[str, Any]:
    """The pool's rollout as the native API shows it."""
    s = dict(pool.rollout_state or {})
    return {
        "pool_id": pool.id,
        "policy": policy_of(pool).model_dump(),
        "snapshot_id": pool.snapshot_id,
        "previous_snapshot_id": pool.previous_snapshot_id,
        "stage": s.get("stage") or rollout.COMPLETE,
        "paused": bool(s.get("paused")),
        "stalled": s.get("stalled") or "",
        "started_at": s.get("started_at"),
        "progress_at": s.get("progress_at"),
        "stale_instances": int(s.get("stale_live", 0)),
        "fresh_ready_instances": int(s.get("fresh_ready", 0)),
    }


def set_policy(pool_id: str, org_id: str, policy: rollout.Policy, *, session: Session) -> dict[str, Any]:
    pool = _locked(pool_id, org_id, session=session)
    pool.rotation_max_surge = policy.max_surge
    pool.rollout_policy = policy.model_dump(exclude={"max_surge"})
    bump_spec(pool)
    request_reconcile(pool, session=session)
    return status(pool)


def pause(pool_id: str, org_id: str, *, session: Session) -> dict[str, Any]:
    pool = _locked(pool_id, org_id, session=session)
    pool.rollout_state = rollout.pause(pool.rollout_state)
    bump_status(pool)
    request_reconcile(pool, session=session)
    return status(pool)


def resume(pool_id: str, org_id: str, *, session: Session, now: datetime | None = None) -> dict[str, Any]:
    pool = _locked(pool_id, org_id, session=session)
    pool.rollout_state = rollout.resume(pool.rollout_state, now or utcnow())
    if pool.failure_message.startswith("rollout to snapshot"):
        pool.failure_message = ""
    bump_status(pool)
    request_reconcile(pool, session=session)
    return status(pool)


def rollback(pool_id: str, org_id: str, *, session: Session) -> dict[str, Any]:
    """Point the pool back at its previous snapshot in one call: instances on it are fresh again (and
    serve first), the others are replaced, without a canary and at once (the creation back-off the bad
    snapshot built up is cleared)."""
    pool = _locked(pool_id, org_id, session=session)
    previous = pool.previous_snapshot_id
    if not previous:
        raise FailedPrecondition(f"pool '{pool_id}' has no previous snapshot to roll back to")
    target = previous
    pool.rollout_state = rollout.rolled_back(pool.rollout_state, target)
    pool.consecutive_failures = 0
    pool.next_attempt_at = None
    pool.failure_message = ""
    set_snapshot(pool, target, session=session)
    bump_status(pool)
    return status(pool)
