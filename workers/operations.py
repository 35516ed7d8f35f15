"""Provider operations on one instance: read what to do, call the adapter, publish what happened.

These never write instance state: every observation goes to the event stream and the applier writes
it with a compare-and-set. Each operation is idempotent (our instance id is the provider's key), so a
redelivered or re-kicked task is harmless.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from app import events
from app.db import session_scope
from app.domain import instances
from app.domain.states import DesiredState, InstanceState as S
from app.models import Instance, Pool, Runner
from config.settings import get_settings
from workers.providers.base import InstanceSpec, Observed, Provider, ProviderPermanent, ProviderTransient
from workers.providers.registry import provider_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    instance: Any
    """The Instance, or a row of the columns a batched create reads (workers.provisioning)."""
    pool: Pool
    provider: Provider

    def spec(self) -> InstanceSpec:
        return InstanceSpec(instance_id=self.instance.id, pool_id=self.pool.id, owner=get_settings().owner,
                            snapshot_id=self.instance.snapshot_id, template=dict(self.pool.template or {}))


def load(instance_id: str) -> Target | None:
    """The instance, its pool and its runner's adapter; None if any of them is gone."""
    with session_scope() as s:
        inst = s.get(Instance, instance_id)
        if inst is None:
            return None
        pool = s.get(Pool, inst.pool_id)
        runner = s.get(Runner, pool.runner_id) if pool and pool.runner_id else None
        if pool is None or runner is None:
            return None
        return Target(inst, pool, provider_for(runner.provider, runner.settings, key=runner.id))


def next_seq(instance_id: str) -> int:
    """A sequence number for a state event about to be published, issued by the database in its own short
    transaction (0 if the instance is gone: the applier ignores the event anyway)."""
    with session_scope() as session:
        return instances.issue_seq(instance_id, session=session) or 0


def next_seqs(instance_ids: list[str]) -> list[int]:
    """`next_seq` for each id in order (an id listed twice gets two increasing numbers): a batch of
    observations is numbered in one short transaction, not one per event. Rows the applier holds are
    skipped (instances.issue_seqs says why): the first of them is numbered alone, which waits for the
    applier's commit, then the others together again; what is still held after that, one at a time."""
    out: list[int] = [0] * len(instance_ids)
    pending = list(range(len(instance_ids)))
    while pending:
        first: dict[str, int] = {}
        for n in pending:
            first.setdefault(instance_ids[n], n)
        with session_scope() as session:
            seqs = instances.issue_seqs(list(first), session=session)
        held = [i for i in first if i not in seqs]
        if held:
            seqs[held[0]] = next_seq(held[0])  # waits for the holder (one transaction, usually all of them)
        if len(held) > 1:
            with session_scope() as session:
                seqs.update(instances.issue_seqs(held[1:], session=session))
        for instance_id, n in first.items():
            out[n] = seqs[instance_id] if instance_id in seqs else next_seq(instance_id)
        pending = [n for n in pending if first[instance_ids[n]] != n]
    return out


def emit(target: Target, state: str, obs: Observed | None = None, message: str = "") -> None:
    events.publish(events.InstanceEvent(
        instance_id=target.instance.id, pool_id=target.pool.id, state=state, ref=obs.ref if obs else "",
        address=obs.address if obs else "", boot_ms=obs.boot_ms if obs else None, message=message,
        seq=next_seq(target.instance.id),
    ))


def emit_kind(target: Target, kind: str, message: str = "") -> None:
    events.publish(events.InstanceEvent(instance_id=target.instance.id, pool_id=target.pool.id, kind=kind, message=message))


def backoff(retries: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the provider's Retry-After, and always
    below the broker's visibility timeout: a countdown past it would be delivered again while it waits."""
    e = get_settings().engine
    delay = min(e.backoff_base_seconds * (2 ** retries), e.backoff_max_seconds)
    delay = delay * (0.5 + random.random() / 2)
    return min(max(delay, retry_after or 0.0), countdown_cap())


def countdown_cap() -> float:
    """The longest task countdown: three quarters of the broker's visibility timeout."""
    return max(get_settings().engine.broker_visibility_seconds * 0.75, 1.0)


class Failed(Exception):
    """The operation failed transiently; the task retries after `countdown` seconds (a batch task: for
    `instance_ids` only, the ones that failed)."""

    def __init__(self, countdown: float, instance_ids: list[str] | None = None) -> None:
        super().__init__(countdown)
        self.countdown = countdown
        self.instance_ids = instance_ids or []


def _guard(target: Target, op: str, retries: int, fn: Any) -> Any:
    """Run a provider call: transient errors are published (toward DEGRADED) and retried with backoff
    until the budget is spent, then the instance fails; permanent errors fail it at once."""
    try:
        return fn()
    except ProviderTransient as exc:
        emit_kind(target, events.KIND_FAILURE, f"{op} failed: {exc}")
        if retries >= get_settings().engine.provider_retries:
            emit(target, S.FAILED, message=f"{op} failed {retries + 1} times: {exc}")
            return None
        raise Failed(backoff(retries, exc.retry_after)) from exc
    except ProviderPermanent as exc:
        emit(target, S.FAILED, message=f"{op} failed: {exc}")
        emit_kind(target, events.KIND_FAILURE, f"{op} failed permanently: {exc}")
        return None


def provision(instance_id: str, retries: int = 0) -> str:
    target = load(instance_id)
    if target is None:
        return "gone"
    inst = target.instance
    if inst.desired_state == DesiredState.DELETED:
        # A retry may follow an attempt whose create landed (or whose delete-on-landing failed): clean up.
        return delete(instance_id, retries) if retries else "not wanted"
    if inst.state not in (S.REQUESTED, S.PROVISIONING):
        return "already provisioned"
    if inst.state == S.REQUESTED:
        emit(target, S.PROVISIONING)
    obs = _guard(target, "create", retries, lambda: target.provider.create(target.spec(), start=inst.desired_state == DesiredState.RUNNING))
    if obs is None:
        return "failed"
    emit(target, obs.state, obs)
    # Deleted while we were creating it. The delete recorded its intent (desired_state) and may already
    # have marked the row deleted without finding anything to delete: this landing deletes the resource
    # now, whatever state the row reached meanwhile (never an "already deleted" that leaves it running).
    again = load(instance_id)
    if again is None or again.instance.desired_state == DesiredState.DELETED:
        return delete_landed(again or target, obs.ref, retries, row_gone=again is None)
    return obs.state


def delete_landed(target: Target, ref: str, retries: int, *, row_gone: bool) -> str:
    """Delete a resource whose create landed after its instance was deleted; transient errors retry the task
    (whose retry, finding the instance unwanted, deletes again)."""
    try:
        target.provider.delete(ref)
    except ProviderTransient as exc:
        if retries >= get_settings().engine.provider_retries:
            log.warning("could not delete %s of a deleted instance (%s); orphan collection will", ref, exc)
            return "left for orphan collection"
        raise Failed(backoff(retries, exc.retry_after)) from exc
    except ProviderPermanent as exc:
        log.warning("delete of %s refused (%s); treating it as gone", ref, exc)
    if not row_gone and target.instance.state != S.DELETED:
        emit(target, S.DELETED)
    return "deleted on landing"


def _refs_at_provider(target: Target) -> list[str]:
    """Resources tagged with this instance, for a delete that has no provider_ref: a create may have landed
    without its event being applied yet, and the ref lives only at the provider."""
    try:
        seen = target.provider.list(get_settings().owner)
    except ProviderPermanent as exc:
        log.warning("cannot list %s's resources (%s); orphan collection covers a leftover", target.instance.id, exc)
        return []
    return [o.ref for o in seen if o.instance_id == target.instance.id and o.ref]


def start(instance_id: str, retries: int = 0) -> str:
    return _power(instance_id, retries, DesiredState.RUNNING)


def stop(instance_id: str, retries: int = 0) -> str:
    return _power(instance_id, retries, DesiredState.STOPPED)


# desired state -> (provider call, the state it ends in, the state it leaves, the state in between)
_POWER = {
    DesiredState.RUNNING: ("start", S.RUNNING, S.STOPPED, S.STARTING),
    DesiredState.STOPPED: ("stop", S.STOPPED, S.RUNNING, S.STOPPING),
}


def _power(instance_id: str, retries: int, want: DesiredState) -> str:
    """Start or stop an existing resource, if that is still what the instance should be."""
    op, done, leaving, between = _POWER[want]
    target = load(instance_id)
    if target is None or target.instance.desired_state != want:
        return "not wanted"
    inst = target.instance
    if want == DesiredState.RUNNING and inst.state in (S.REQUESTED, S.PROVISIONING):
        return provision(instance_id, retries)
    if inst.state == done or not inst.provider_ref:
        return "nothing to do"
    if inst.state == leaving:
        emit(target, between)
    obs = _guard(target, op, retries, lambda: getattr(target.provider, op)(inst.provider_ref))
    if obs is None:
        return "failed"
    emit(target, obs.state, obs)
    return obs.state


def recycle(instance_id: str, retries: int = 0) -> str:
    """A lease on a `reuse` pool ended: have the provider make the instance clean (Provider.reset), then
    publish `recycled`; the applier puts it back in the ready set only then (app.domain.instances)."""
    target = load(instance_id)
    if target is None:
        return "gone"
    inst = target.instance
    if not (inst.draining and inst.lease_id is None and inst.desired_state == DesiredState.RUNNING
            and inst.state == S.RUNNING and inst.provider_ref):
        return "not wanted"
    obs = _guard(target, "reset", retries, lambda: target.provider.reset(inst.provider_ref))
    if obs is None:
        return "failed"
    if obs.state != S.RUNNING:
        emit(target, obs.state, obs)  # not running after its reset: the applier sees what it is
        return obs.state
    emit_kind(target, events.KIND_RECYCLED)
    return "recycled"


def delete(instance_id: str, retries: int = 0) -> str:
    target = load(instance_id)
    if target is None:
        return "gone"
    inst = target.instance
    try:
        # No ref in the row does not mean nothing at the provider: ask it. A create still in flight is
        # covered by its own landing (provision re-reads the desired state after the create returns).
        refs = [inst.provider_ref] if inst.provider_ref else _refs_at_provider(target)
        if inst.state == S.DELETED and not refs:
            return "already deleted"
        if inst.state not in (S.DELETING, S.DELETED):
            emit(target, S.DELETING)
        for ref in refs:
            try:
                target.provider.delete(ref)
            except ProviderPermanent as exc:
                log.warning("delete of %s refused (%s); treating it as gone", ref, exc)
    except ProviderTransient as exc:
        emit_kind(target, events.KIND_FAILURE, f"delete failed: {exc}")
        if retries >= get_settings().engine.provider_retries:
            return "left for orphan collection"
        raise Failed(backoff(retries, exc.retry_after)) from exc
    if inst.state != S.DELETED:
        emit(target, S.DELETED)
    return "deleted"
