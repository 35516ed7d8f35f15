"""Orphan collection (DESIGN.md flow 9): provider resources tagged as ours with no live instance are
deleted after being seen orphaned on two passes; instances whose resource vanished are failed (and
so replaced) after two passes. Two passes, because one sighting may be a create racing its event."""
from __future__ import annotations

import logging

import redis as redis_lib
from sqlmodel import select

from app import events
from app.db import session_scope
from app.domain import instances
from app.domain.states import InstanceState as S
from app.models import Pool, Runner
from config.settings import get_settings
from workers.operations import next_seq
from workers.providers.base import ProviderPermanent, ProviderTransient
from workers.providers.registry import provider_for

log = logging.getLogger(__name__)
SEEN_KEY = "warmpool:orphans:seen"


def collect(client: redis_lib.Redis | None = None) -> dict[str, int]:
    s = get_settings()
    client = client or events.redis_client()
    stats = {"orphans_seen": 0, "orphans_deleted": 0, "vanished": 0}
    with session_scope() as session:
        runners = list(session.exec(select(Runner)).all())
    for runner in runners:
        try:
            provider = provider_for(runner.provider, runner.settings, key=runner.id)
            listed = provider.list(s.owner)
        except (LookupError, ProviderTransient, ProviderPermanent) as exc:
            log.warning("orphan collection skipped runner %s: %s", runner.name, exc)
            continue
        present = {o.ref for o in listed}
        with session_scope() as session:
            pool_ids = list(session.exec(select(Pool.id).where(Pool.runner_id == runner.id)).all())
            orphans = [o for o in listed if not instances.is_wanted(o.instance_id, session=session)]
            # Resources the provider itself reports failed (a crashed process, a dead VM) are replaced.
            broken = [(o.instance_id, o.pool_id, o.message) for o in listed
                      if o.state == S.FAILED and o.instance_id and o.pool_id and o not in orphans]
            lost = instances.note_missing(pool_ids, present, session=session) if pool_ids else []
            vanished = [(i.id, i.pool_id) for i in lost]
        for obs in orphans:
            count = client.hincrby(SEEN_KEY, obs.ref, 1)
            stats["orphans_seen"] += 1
            if count >= 2:
                try:
                    provider.delete(obs.ref)
                    client.hdel(SEEN_KEY, obs.ref)
                    stats["orphans_deleted"] += 1
                    log.info("deleted orphan %s (instance tag %s), seen twice", obs.ref, obs.instance_id)
                except (ProviderTransient, ProviderPermanent) as exc:
                    log.warning("could not delete orphan %s: %s", obs.ref, exc)
        orphan_refs = {o.ref for o in orphans}
        for ref in list(client.hkeys(SEEN_KEY)):
            ref = ref.decode() if isinstance(ref, bytes) else ref
            if ref not in orphan_refs and ref in present:
                client.hdel(SEEN_KEY, ref)  # adopted meanwhile: the sighting no longer counts
        for instance_id, pool_id, message in broken:
            events.publish(events.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state=S.FAILED,
                                                message=message or "the provider reports the instance failed",
                                                seq=next_seq(instance_id)))
        for instance_id, pool_id in vanished:
            events.publish(events.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state=S.FAILED,
                                                message="the provider resource vanished", seq=next_seq(instance_id)))
            stats["vanished"] += 1
    return stats
