"""Provisioning in batches: one task creates many instances with one batched provider call (`create_many`).

A reconcile pass that decides to create N instances sends their ids in a few `provision_instances` tasks
(`engine.provision_batch` ids each, workers.celery_app.enqueue) instead of N tasks. Each task reads its
instances in one query, makes one `create_many` call per (runner, started or not) (a batch endpoint, or
concurrent creates: never one blocking call after another), numbers the observations in one statement
and publishes them in one round trip. As in `operations.provision`, nothing here writes instance state
(the applier does, from the events), our instance id is the idempotency key of every create (a redelivered
or retried batch makes no second resource), and a create that lands after its instance was deleted
deletes what it made. Transient failures are retried as a task of the failed ids only.

Unlike the one-instance path, no `provisioning` event goes out before the call: creates are asynchronous
by contract (they return what the provider accepted), so the event that follows the call, with the
provider's reference, comes a moment later and halves the events a fill costs the applier.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import select

from app import events
from app.db import session_scope
from app.domain.states import DesiredState, InstanceState as S
from app.models import Instance, Pool, Runner
from config.settings import get_settings
from workers import operations
from workers.operations import Failed, Target, backoff
from workers.providers.base import Observed, ProviderError, ProviderTransient
from workers.providers.registry import provider_for

log = logging.getLogger(__name__)


# What a create needs of an instance (a batch reads these columns, not model objects: building a model
# object per row cost more than the create).
_COLUMNS = (Instance.id, Instance.pool_id, Instance.state, Instance.desired_state, Instance.snapshot_id,
            Instance.provider_ref)


def _ids_in(session: Any, instance_ids: list[str]) -> Any:
    """`Instance.id IN (…)`; on PostgreSQL the ids travel as one JSON parameter (one prepared statement
    whatever their number, no per-id bind parameter to render)."""
    if session.get_bind().dialect.name == "postgresql":
        return Instance.id.in_(sa.select(sa.func.jsonb_array_elements_text(
            sa.cast(sa.bindparam("ids", json.dumps(sorted(set(instance_ids))), type_=sa.String), JSONB))).scalar_subquery())
    return Instance.id.in_(instance_ids)


def load_many(instance_ids: list[str]) -> dict[str, Target]:
    """The instances with their pools and runners' adapters (the instances as rows of `_COLUMNS`, each pool
    with its runner read once); ids whose row, pool or runner is gone are missing."""
    with session_scope() as s:
        rows = s.execute(sa.select(*_COLUMNS).where(_ids_in(s, instance_ids))).all()
        pools = {pool.id: (pool, runner) for pool, runner in s.exec(
            select(Pool, Runner).join(Runner, Runner.id == Pool.runner_id)
            .where(Pool.id.in_({r.pool_id for r in rows}))).all()}
    providers = {runner.id: provider_for(runner.provider, runner.settings, key=runner.id) for _, runner in pools.values()}
    out: dict[str, Target] = {}
    for row in rows:
        if row.pool_id in pools:
            pool, runner = pools[row.pool_id]
            out[row.id] = Target(row, pool, providers[runner.id])
    return out


def _event(target: Target, state: str, obs: Observed | None = None, message: str = "") -> events.InstanceEvent:
    return events.InstanceEvent(
        instance_id=target.instance.id, pool_id=target.pool.id, state=state, ref=obs.ref if obs else "",
        address=obs.address if obs else "", boot_ms=obs.boot_ms if obs else None, message=message)


def _publish(state_events: list[events.InstanceEvent], other: list[events.InstanceEvent]) -> None:
    """Number the state events (one statement) and publish everything in one round trip."""
    seqs = operations.next_seqs([e.instance_id for e in state_events])
    numbered = [dataclasses.replace(e, seq=seq) for e, seq in zip(state_events, seqs)]
    events.publish_many(numbered + other)


def _still_wanted(instance_ids: list[str]) -> dict[str, str]:
    """The desired state of each instance now (missing: the row is gone), in one query."""
    if not instance_ids:
        return {}
    with session_scope() as s:
        return dict(s.execute(sa.select(Instance.id, Instance.desired_state).where(_ids_in(s, instance_ids))).all())


def provision_many(instance_ids: list[str], retries: int = 0) -> dict[str, str]:
    """Create the instances that still need it with batched provider calls; returns an outcome per id.
    Raises Failed naming the ids to retry (transient failures within the retry budget) after publishing
    everything else."""
    targets = load_many(instance_ids)
    outcome = {i: "gone" for i in instance_ids if i not in targets}
    groups: dict[tuple[str, bool], list[Target]] = {}
    retry: dict[str, float] = {}
    for instance_id in dict.fromkeys(instance_ids):
        target = targets.get(instance_id)
        if target is None:
            continue
        inst = target.instance
        if inst.desired_state == DesiredState.DELETED or inst.state not in (S.REQUESTED, S.PROVISIONING):
            # Unwanted (a retry may follow a create that landed: that path cleans it up) or already made.
            try:
                outcome[instance_id] = operations.provision(instance_id, retries)
            except Failed as exc:
                retry[instance_id] = exc.countdown
            continue
        groups.setdefault((str(target.pool.runner_id), inst.desired_state == DesiredState.RUNNING), []).append(target)

    state_events: list[events.InstanceEvent] = []
    other: list[events.InstanceEvent] = []
    landed: list[tuple[Target, Observed]] = []
    give_up = get_settings().engine.provider_retries
    for (_runner, start), batch in groups.items():
        provider = batch[0].provider
        try:
            results: list[Observed | ProviderError] = provider.create_many([t.spec() for t in batch], start)
        except ProviderError as exc:  # the batch call itself failed: every create in it did
            results = [exc] * len(batch)
        for target, result in zip(batch, results):
            iid = target.instance.id
            if isinstance(result, Observed):
                landed.append((target, result))
                state_events.append(_event(target, result.state, result))
                outcome[iid] = result.state
            elif isinstance(result, ProviderTransient):
                other.append(events.InstanceEvent(instance_id=iid, pool_id=target.pool.id, kind=events.KIND_FAILURE,
                                                  message=f"create failed: {result}"))
                if retries >= give_up:
                    state_events.append(_event(target, S.FAILED, message=f"create failed {retries + 1} times: {result}"))
                    outcome[iid] = "failed"
                else:
                    retry[iid] = backoff(retries, result.retry_after)
            else:
                state_events.append(_event(target, S.FAILED, message=f"create failed: {result}"))
                other.append(events.InstanceEvent(instance_id=iid, pool_id=target.pool.id, kind=events.KIND_FAILURE,
                                                  message=f"create failed permanently: {result}"))
                outcome[iid] = "failed"
    _publish(state_events, other)

    # Deleted while we were creating them: the delete recorded its intent, this landing deletes the resource.
    wanted = _still_wanted([t.instance.id for t, _ in landed])
    for target, obs in landed:
        desired = wanted.get(target.instance.id)
        if desired is None or desired == DesiredState.DELETED:
            try:
                outcome[target.instance.id] = operations.delete_landed(target, obs.ref, retries, row_gone=desired is None)
            except Failed as exc:
                retry[target.instance.id] = exc.countdown
    if retry:
        raise Failed(max(retry.values()), instance_ids=list(retry))
    return outcome

