"""The observer (`warmpool observe`): one watcher per runner turns what its provider reports into instance events.

- `RunnerObserver` follows one runner's `Provider.observe` stream and publishes a state event for every
  resource of ours whose state (or address) changed since it last looked; a resource missing from a full
  listing, or reported deleted, is published `deleted` (the pool replaces it, its lease ends). Every
  (re)start of the stream (after an error, a watch gap, a lost Redis, or on taking a runner over) first
  reads what the database believes about the runner's instances, then re-lists: whatever differs is
  published, and an instance the database holds but the provider no longer lists is published
  `deleted`. The database is read before the listing, so a resource it names was created before the
  listing began: missing from it means gone, not "not made yet".
- Every (re)start of a stream begins a new epoch of the runner before listing (app.domain.epochs): nothing
  of that runner is handed out until its first full listing has confirmed it running (a `seen` event per
  instance the listing shows running; state events carry the epoch too). When the runner's epoch moves on without us (the applier found the
  event stream lost), the replica restarts that runner's stream, so the re-list follows every loss.
- `Observer` shards runners between replicas: a replica observes a runner only while it holds the Redis
  key `warmpool:observer:runner:<id>` (SET NX PX, renewed every `renew_seconds`). A replica that cannot
  renew (Redis gone, or the key taken over) stops observing that runner at once; another replica takes
  it after the key expires. Two replicas briefly observing one runner is harmless: events are idempotent.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlmodel import select

from app import events
from app.db import session_scope
from app.domain import epochs
from app.domain.states import ALIVE, InstanceState as S
from app.models import Instance, Pool, Runner
from config.settings import get_settings
from workers.loop import LoopService
from workers.operations import next_seq, next_seqs
from workers.providers.base import Observed, Provider, Sighting
from workers.providers.registry import provider_for

log = logging.getLogger(__name__)
LEASE_KEY = "warmpool:observer:runner:{}"
REPLICA_KEY = "warmpool:observer:replica:{}"


@dataclass(frozen=True)
class Seen:
    instance_id: str
    pool_id: str
    state: str
    address: str


def believed(runner_id: str) -> dict[str, Seen]:
    """What the database holds about the runner's instances that have a provider resource, by ref."""
    with session_scope() as session:
        rows = session.execute(
            sa.select(Instance.provider_ref, Instance.id, Instance.pool_id, Instance.state, Instance.address)
            .join(Pool, Pool.id == Instance.pool_id)
            .where(Pool.runner_id == runner_id, Instance.provider_ref.is_not(None),
                   Instance.state.in_([str(s) for s in ALIVE if s != S.REQUESTED]))
        ).all()
    return {ref: Seen(iid, pid, state, address or "") for ref, iid, pid, state, address in rows}


def new_epoch(runner_id: str) -> int:
    """Begin a new epoch of the runner (before a re-list); returns it."""
    with session_scope() as session:
        return epochs.bump(runner_id, session=session)


class RunnerObserver(LoopService):
    """Observes one runner's provider and publishes what changed."""

    def __init__(self, runner_id: str, provider: Provider, owner: str,
                 publish: Callable[[events.InstanceEvent], Any] = events.publish,
                 seed: Callable[[str], dict[str, Seen]] = believed, number: Callable[[str], int] = next_seq,
                 relist: Callable[[str], int] = new_epoch) -> None:
        super().__init__(f"observe-{runner_id[:8]}")
        self.runner_id, self.provider, self.owner, self.publish, self.seed = runner_id, provider, owner, publish, seed
        self.number = number
        """Issues each event's sequence number after the observation (the database's, in production)."""
        self.relist = relist
        self.epoch: int | None = None
        """The runner epoch this stream's observations belong to (None before its first start)."""
        # In production a sighting's events are numbered in one statement and published in one round trip:
        # a fill of thousands reports thousands of changes a second.
        self.number_all: Callable[[list[str]], list[int]] = (
            next_seqs if number is next_seq else (lambda ids: [number(i) for i in ids]))
        self.publish_all: Callable[[list[events.InstanceEvent]], Any] = (
            events.publish_many if publish is events.publish else (lambda evs: [publish(e) for e in evs]))
        self.known: dict[str, Seen] = {}
        self.published = 0

    def run_once(self) -> None:
        self.known = self.seed(self.runner_id)  # read before the stream's first listing (see the module docstring)
        self.epoch = self.relist(self.runner_id)  # before the listing: what it shows is seen inside the new epoch
        confirmed = False
        for sighting in self.provider.observe(self.owner, self.stopping):
            self.pump(sighting, confirm=sighting.full and not confirmed)
            confirmed = confirmed or sighting.full
            if self.stopping.is_set():
                return

    def pump(self, sighting: Sighting, confirm: bool = False) -> int:
        """Publish the changes one sighting shows; returns how many events went out. With `confirm` (the
        first full listing of an epoch), every instance listed running gets a `seen` event too (a state event
        alone may be applied as "no change" and, with several appliers, in any order)."""
        out: list[events.InstanceEvent] = []
        listed = set()
        for obs in sighting.observed:
            listed.add(obs.ref)
            out += self._one(obs, full=sighting.full)
            if confirm and obs.state == S.RUNNING and self.epoch is not None:
                out += self._confirm(obs)
        if sighting.full:
            for ref in [r for r in self.known if r not in listed]:
                out += self._one(Observed(ref=ref, state=str(S.DELETED), message="the provider resource vanished"))
        if out:  # state events are numbered after the observation, before publishing; all go out in order
            states = [n for n, e in enumerate(out) if e.kind == events.KIND_STATE]
            for n, seq in zip(states, self.number_all([out[n].instance_id for n in states])):
                out[n] = dataclasses.replace(out[n], seq=seq)
            self.publish_all(out)
        self.published += len(out)
        return len(out)

    def _one(self, obs: Observed, full: bool = True) -> list[events.InstanceEvent]:
        """The state event this observation calls for (none if nothing changed), not numbered yet. A watch's
        first sight of a resource still `provisioning` is only noted: the create call that made it publishes
        that itself (with the reference), and the watch's next change (running, failed, gone) is published.
        A full listing publishes it (it re-checks what the database believes, which a lost publish left behind)."""
        before = self.known.get(obs.ref)
        instance_id = obs.instance_id or (before.instance_id if before else None)
        pool_id = obs.pool_id or (before.pool_id if before else None)
        if not instance_id or not pool_id or instance_id.startswith("prebuild-"):
            return []  # not an instance of ours (orphan collection deals with foreign or leaked resources)
        if obs.state == S.DELETED:
            self.known.pop(obs.ref, None)
            if before is None:
                return []
        else:
            now = Seen(instance_id, pool_id, obs.state, obs.address)
            if before == now:
                return []
            self.known[obs.ref] = now
            if before is None and not full and obs.state == S.PROVISIONING:
                return []
        message = obs.message or ("the provider resource vanished" if obs.state == S.DELETED and before else "")
        return [events.InstanceEvent(
            instance_id=instance_id, pool_id=pool_id, state=obs.state, ref=obs.ref if obs.state != S.DELETED else "",
            address=obs.address, boot_ms=obs.boot_ms, message=message, epoch=self.epoch)]

    def _confirm(self, obs: Observed) -> list[events.InstanceEvent]:
        seen = self.known.get(obs.ref)
        if seen is None or seen.state != S.RUNNING:
            return []
        return [events.InstanceEvent(instance_id=seen.instance_id, pool_id=seen.pool_id, kind=events.KIND_SEEN,
                                     ref=obs.ref, epoch=self.epoch)]

    def health(self) -> dict[str, Any]:
        return {**super().health(), "runner_id": self.runner_id, "resources": len(self.known),
                "published": self.published}


class Observer(LoopService):
    """One replica of `warmpool observe`: holds Redis leases on runners and runs a RunnerObserver for each."""

    name = "observer"

    def __init__(self, client: redis_lib.Redis | None = None, replica: str | None = None) -> None:
        super().__init__()
        s = get_settings()
        self.r = client or redis_lib.Redis.from_url(s.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease_ms, self.renew_every = s.observer.lease_ms, s.observer.renew_seconds
        # Looking for runners nobody observes is cheaper than renewing, and a new runner's first pool
        # should not wait a whole renewal period for its observer.
        self.interval = min(s.observer.discover_seconds, self.renew_every)
        self.renewed = 0.0
        self.watchers: dict[str, RunnerObserver] = {}
        self.taken_with: dict[str, tuple[str, dict[str, Any]]] = {}
        """The provider and settings each watcher was started with: a runner whose settings change (another
        namespace, account or cluster) is watched anew with its new ones."""

    def run_once(self) -> None:
        try:
            if time.monotonic() - self.renewed >= self.renew_every:
                for runner_id in list(self.watchers):  # renew first: a slow database must not cost us our leases
                    if not self._renew(LEASE_KEY.format(runner_id)):
                        log.info("observer %s lost runner %s to another replica", self.replica, runner_id)
                        self._drop(runner_id, release=False)
                self.renewed = time.monotonic()
                self.heartbeat()
            with session_scope() as session:
                rows = session.exec(select(Runner)).all()
                runners = [(r.id, r.provider, dict(r.settings or {})) for r in rows]
                moved_on = {r.id: r.epoch for r in rows}
            for runner_id, *rest in runners:
                watcher = self.watchers.get(runner_id)
                if watcher is None:
                    continue
                if watcher.epoch is not None and moved_on[runner_id] > watcher.epoch:
                    # Another process began a new epoch (the applier lost the event stream): re-list now.
                    log.info("observer %s re-lists runner %s (epoch %d > %d)", self.replica, runner_id,
                             moved_on[runner_id], watcher.epoch)
                elif self.taken_with.get(runner_id) != tuple(rest):
                    # Its settings changed since it was taken: what it watched may not be where the runner now is.
                    log.info("observer %s watches runner %s anew: its settings changed", self.replica, runner_id)
                else:
                    continue
                self._drop(runner_id, release=False)
                if self._renew(LEASE_KEY.format(runner_id)):  # still ours: a replica that lost it must not
                    self._take(runner_id, *rest)               # bump the epoch under the new holder's feet
            unobserved = [r for r in runners if r[0] not in self.watchers]
            if unobserved:
                with self.r.pipeline(transaction=False) as pipe:  # one round trip however many runners there are
                    for runner_id, _, _ in unobserved:
                        pipe.set(LEASE_KEY.format(runner_id), self.replica, nx=True, px=self.lease_ms)
                    won = pipe.execute()
                for (runner_id, provider_name, settings), ours in zip(unobserved, won):
                    if ours:
                        self._take(runner_id, provider_name, settings)
            for runner_id in set(self.watchers) - {r[0] for r in runners}:
                self._drop(runner_id, release=True)  # the runner was deleted
        except redis_lib.RedisError:
            # Without Redis we cannot know we still hold any lease: stop observing everything now.
            for runner_id in list(self.watchers):
                self._drop(runner_id, release=False)
            raise

    def _take(self, runner_id: str, provider_name: str, settings: dict[str, Any]) -> None:
        """Start observing a runner whose lease this replica just won."""
        key = LEASE_KEY.format(runner_id)
        try:
            provider = provider_for(provider_name, settings, key=runner_id)
        except Exception as exc:  # noqa: BLE001 - an unusable runner must not stop the others
            log.warning("observer: runner %s cannot be observed: %s", runner_id, exc)
            self._release(key)
            return
        log.info("observer %s now observes runner %s (%s)", self.replica, runner_id, provider_name)
        self.watchers[runner_id] = RunnerObserver(runner_id, provider, get_settings().owner).start()
        self.taken_with[runner_id] = (provider_name, settings)

    def heartbeat(self) -> None:
        """Publish this replica's health (`warmpool:observer:replica:<id>`, expiring with the leases), so an
        operator sees which replica observes which runner and how each watcher fares."""
        self.r.set(REPLICA_KEY.format(self.replica), json.dumps(self.health(), default=str), px=self.lease_ms)

    def _renew(self, key: str) -> bool:
        """PEXPIRE the key only if it is still ours (WATCH/MULTI, so it works on any Redis, fakeredis too)."""
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                holder = pipe.get(key)
                if (holder.decode() if isinstance(holder, bytes) else holder) != self.replica:
                    return False
                pipe.multi()
                pipe.pexpire(key, self.lease_ms)
                return bool(pipe.execute()[0])
            except redis_lib.WatchError:
                return False

    def _release(self, key: str) -> None:
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                holder = pipe.get(key)
                if (holder.decode() if isinstance(holder, bytes) else holder) == self.replica:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except redis_lib.WatchError:
                pass

    def _drop(self, runner_id: str, *, release: bool) -> None:
        watcher = self.watchers.pop(runner_id, None)
        self.taken_with.pop(runner_id, None)
        if watcher is not None:
            watcher.stop()
        if release:
            try:
                self._release(LEASE_KEY.format(runner_id))
            except redis_lib.RedisError:
                pass  # it expires on its own

    def on_stop(self) -> None:
        for runner_id in list(self.watchers):
            self._drop(runner_id, release=True)

    def health(self) -> dict[str, Any]:
        return {**super().health(), "replica": self.replica,
                "runners": [w.health() for w in self.watchers.values()]}


def main() -> None:
    observer = Observer()

    def stop(*_: Any) -> None:
        observer.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("observer %s started", observer.replica)
    observer.run()
