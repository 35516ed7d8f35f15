"""The observer's diffing (what a sighting publishes), its Redis lease per runner, and LoopService's error handling."""
from __future__ import annotations


import fakeredis
import pytest

from app.domain.states import progresses
from workers.loop import LoopService
from workers.observer import LEASE_KEY, RunnerObserver
from workers.providers.base import Observed, Sighting


def obs(ref: str, state: str, address: str = "", inst: str | None = None) -> Observed:
    return Observed(ref=ref, state=state, instance_id=inst or f"i-{ref}", pool_id="p1", owner="warmpool", address=address)


@pytest.fixture
def watcher():
    sent = []
    w = RunnerObserver("runner-1", provider=None, owner="warmpool", publish=sent.append,  # type: ignore[arg-type]
                       seed=lambda _: {}, number=lambda _: 0)
    w.sent = sent
    return w


def test_a_full_listing_publishes_everything_then_only_changes(watcher):
    assert watcher.pump(Sighting([obs("a", "running", "10.0.0.1"), obs("b", "provisioning")], full=True)) == 2
    assert watcher.pump(Sighting([obs("a", "running", "10.0.0.1"), obs("b", "provisioning")], full=True)) == 0
    assert watcher.pump(Sighting([obs("a", "running", "10.0.0.1"), obs("b", "running", "10.0.0.2")], full=True)) == 1
    last = watcher.sent[-1]
    assert (last.instance_id, last.pool_id, last.state, last.ref, last.address) == ("i-b", "p1", "running", "b", "10.0.0.2")


def test_a_resource_missing_from_a_full_listing_or_reported_deleted_is_published_deleted(watcher):
    watcher.pump(Sighting([obs("a", "running"), obs("b", "running")], full=True))
    assert watcher.pump(Sighting([obs("a", "running")], full=True)) == 1
    gone = watcher.sent[-1]
    assert (gone.instance_id, gone.state) == ("i-b", "deleted") and "vanished" in gone.message
    # A watch's deletion names only the ref: the tags come from what the observer knew.
    assert watcher.pump(Sighting([Observed(ref="a", state="deleted")])) == 1
    assert (watcher.sent[-1].instance_id, watcher.sent[-1].state) == ("i-a", "deleted")
    assert watcher.pump(Sighting([Observed(ref="a", state="deleted")])) == 0  # already known gone


def test_resources_not_ours_and_prebuild_instances_are_left_to_others(watcher):
    foreign = Observed(ref="x", state="running")
    prebuild = obs("y", "running", inst="prebuild-123")
    assert watcher.pump(Sighting([foreign, prebuild], full=True)) == 0


def test_a_new_stream_starts_from_a_full_listing_again():
    class Flaky:
        calls = 0

        def observe(self, owner, stop):
            Flaky.calls += 1
            yield Sighting([obs("a", "running")], full=True)
            if Flaky.calls == 1:
                raise ConnectionError("watch cut")  # a gap: the next stream must re-list
            stop.set()

    sent = []
    w = RunnerObserver("r", Flaky(), "warmpool", publish=sent.append, seed=lambda _: {}, number=lambda _: 0,  # type: ignore[arg-type]
                       relist=lambda _: 1)
    w.backoff_base = 0.01
    w.run()
    assert Flaky.calls == 2 and [e.state for e in sent if e.kind == "state"] == ["running", "running"] and w.errors == 1
    assert [e.kind for e in sent].count("seen") == 2  # each new stream's first listing confirms what runs


def test_a_restart_publishes_only_what_differs_from_the_database_and_what_vanished():
    from workers.observer import Seen

    class Once:
        def observe(self, owner, stop):
            stop.set()
            yield Sighting([obs("a", "running", "10.0.0.1"), obs("b", "running", "10.0.0.2")], full=True)

    db = {"a": Seen("i-a", "p1", "running", "10.0.0.1"), "b": Seen("i-b", "p1", "provisioning", ""),
          "c": Seen("i-c", "p1", "running", "10.0.0.3")}
    sent = []
    epochs = iter([7])
    RunnerObserver("r", Once(), "warmpool", publish=sent.append, seed=lambda _: dict(db), number=lambda _: 0,  # type: ignore[arg-type]
                   relist=lambda _: next(epochs)).run()
    assert sorted((e.instance_id, e.state) for e in sent if e.kind == "state") == [("i-b", "running"), ("i-c", "deleted")]
    # The re-list began epoch 7: what it shows running is confirmed in it (i-a unchanged, i-b besides its
    # state event), and the state events carry it too, so each of them may be handed out again.
    assert [(e.instance_id, e.epoch) for e in sent if e.kind == "seen"] == [("i-a", 7), ("i-b", 7)]
    assert {e.epoch for e in sent} == {7}


def test_loop_service_survives_errors_backs_off_and_reports_health():
    class Boom(LoopService):
        backoff_base = 0.01
        n = 0

        def run_once(self):
            Boom.n += 1
            if Boom.n < 3:
                raise RuntimeError("boom")
            self.stop()

    loop = Boom("boom")
    loop.run()
    h = loop.health()
    assert (h["steps"], h["errors"], h["consecutive_errors"]) == (1, 2, 0) and "boom" in h["last_error"]


def test_runner_lease_is_held_by_one_replica_and_lost_when_taken(monkeypatch):
    from workers import observer as mod

    client = fakeredis.FakeRedis()
    a, b = mod.Observer(client=client, replica="a"), mod.Observer(client=client, replica="b")
    key = LEASE_KEY.format("r1")
    assert client.set(key, "a", nx=True, px=10_000)
    assert a._renew(key) and not b._renew(key)
    client.set(key, "b")  # a's lease expired and b took the runner
    assert not a._renew(key)
    a._release(key)
    assert client.get(key) == b"b"  # a never deletes a lease it no longer holds


def test_a_replica_reports_its_health_in_redis_while_alive():
    import json

    from workers import observer as mod

    client = fakeredis.FakeRedis()
    replica = mod.Observer(client=client, replica="a")
    replica.watchers["r1"] = RunnerObserver("r1", provider=None, owner="warmpool", publish=list.append,  # type: ignore[arg-type]
                                            seed=lambda _: {}, number=lambda _: 0)
    replica.heartbeat()
    health = json.loads(client.get(mod.REPLICA_KEY.format("a")))
    assert health["replica"] == "a" and [r["runner_id"] for r in health["runners"]] == ["r1"]
    assert 0 < client.pttl(mod.REPLICA_KEY.format("a")) <= replica.lease_ms


def test_stale_events_may_only_progress_never_turn():
    assert progresses("provisioning", "running") and progresses("starting", "running")
    assert progresses("stopping", "stopped") and progresses("running", "failed") and progresses("running", "deleted")
    assert progresses("requested", "stopped")
    assert not progresses("running", "stopped") and not progresses("stopped", "running")
    assert not progresses("running", "running") and not progresses("deleted", "running")
