"""Running a prebuild on its environment class's runner: boot an instance from the class template,
snapshot it, delete it, and hand the snapshot to the pools of the pair (DESIGN.md flow 7)."""
from __future__ import annotations

import logging

from app.db import session_scope
from app.domain import catalog, prebuilds
from app.domain.states import PrebuildPhase as P
from app.models import EnvironmentClass, Prebuild, Runner
from config.settings import get_settings
from workers.operations import Failed, backoff
from workers.providers.base import InstanceSpec, ProviderPermanent, ProviderTransient
from workers.providers.registry import provider_for

log = logging.getLogger(__name__)


def _step(prebuild_id: str, phase: P, **kw) -> bool:  # type: ignore[no-untyped-def]
    with session_scope() as s:
        return prebuilds.advance(prebuild_id, phase, session=s, **kw) is not None


def run(prebuild_id: str, retries: int = 0) -> str:
    with session_scope() as s:
        p = s.get(Prebuild, prebuild_id)
        if p is None:
            return "gone"
        ec = s.get(EnvironmentClass, p.environment_class_id)
        runner = s.get(Runner, ec.runner_id) if ec else None
        phase, ref, template = P(p.phase), p.provider_ref, catalog.template_of(ec) if ec else {}
        cancelled = p.desired_phase == str(P.CANCELLED)
    if runner is None:
        _step(prebuild_id, P.FAILED, message="the environment class or its runner no longer exists")
        return "failed"
    provider = provider_for(runner.provider, runner.settings, key=runner.id)
    temp_id = f"prebuild-{prebuild_id}"
    try:
        if cancelled or phase == P.CANCELLING:
            if ref:
                provider.delete(ref)
            _step(prebuild_id, P.CANCELLED)
            return "cancelled"
        if phase == P.PENDING:
            _step(prebuild_id, P.STARTING)
            phase = P.STARTING
        if phase == P.STARTING:
            obs = provider.create(InstanceSpec(instance_id=temp_id, pool_id="", owner=get_settings().owner,
                                               template=template), start=True)
            ref = obs.ref
            if not _step(prebuild_id, P.RUNNING, provider_ref=ref):
                provider.delete(ref)  # cancelled meanwhile
                _step(prebuild_id, P.CANCELLED)
                return "cancelled"
            phase = P.RUNNING
        if phase in (P.RUNNING, P.STOPPING):
            _step(prebuild_id, P.SNAPSHOTTING)
            phase = P.SNAPSHOTTING
        if phase == P.SNAPSHOTTING:
            snapshot_id = provider.snapshot(ref, f"prebuild-{prebuild_id}") if ref else None
            if not snapshot_id:
                raise ProviderPermanent("the prebuild instance vanished before its snapshot")
            provider.delete(ref)
            with session_scope() as s:
                done = prebuilds.complete(prebuild_id, snapshot_id, session=s)
            if done is None:
                provider.delete_snapshot(snapshot_id)
                return "cancelled"
            return "completed"
        return phase.value
    except ProviderTransient as exc:
        if retries >= get_settings().engine.provider_retries:
            _step(prebuild_id, P.FAILED, message=f"{exc} (after {retries + 1} attempts)")
            if ref:
                _quiet_delete(provider, ref)
            return "failed"
        raise Failed(backoff(retries, exc.retry_after)) from exc
    except ProviderPermanent as exc:
        _step(prebuild_id, P.FAILED, message=str(exc))
        if ref:
            _quiet_delete(provider, ref)
        return "failed"


def _quiet_delete(provider, ref: str) -> None:  # type: ignore[no-untyped-def]
    try:
        provider.delete(ref)
    except (ProviderTransient, ProviderPermanent):
        log.warning("could not delete prebuild resource %s; orphan collection will", ref)


def delete_snapshot(runner_id: str, snapshot_id: str, retries: int = 0) -> str:
    """Delete a snapshot no pool keeps any more (neither current nor rollback), if still unused."""
    from app.domain.pools import snapshot_in_use

    with session_scope() as s:
        runner = s.get(Runner, runner_id)
        if runner is None or snapshot_in_use(snapshot_id, session=s):
            return "kept"
    provider = provider_for(runner.provider, runner.settings, key=runner.id)
    try:
        provider.delete_snapshot(snapshot_id)
    except ProviderTransient as exc:
        if retries >= get_settings().engine.provider_retries:
            return "left"
        raise Failed(backoff(retries, exc.retry_after)) from exc
    except ProviderPermanent as exc:
        log.warning("snapshot %s could not be deleted: %s", snapshot_id, exc)
        return "refused"
    return "deleted"
