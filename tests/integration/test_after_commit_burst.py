"""The lease path's after-commit hand-off sends a burst as one: every event and wake-up in one Redis
pipeline, the destroys of returned instances in one task per 50 (deduplicated like single ones), one
reconcile per pool however many leases the burst made."""
from __future__ import annotations

import pytest

from app import events
from app.api.vmpool_background import AfterCommit
from app.domain import effects
from config.settings import get_settings
from workers import celery_app as celery_module

pytestmark = [pytest.mark.redis]


@pytest.fixture
def sent(settings_env, redis_client, monkeypatch):
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(celery_module.celery_app, "send_task",
                        lambda name, kwargs=None, **_: calls.append((name, kwargs or {})))
    previous = effects.set_dispatcher(celery_module.dispatch_effect, batch=celery_module.dispatch_burst)
    yield calls
    effects.set_dispatcher(previous)


def test_a_burst_goes_out_in_one_pipeline_and_one_destroy_task(sent, redis_client, monkeypatch):
    pipelines = []
    real = events.publish_many
    monkeypatch.setattr(events, "publish_many", lambda evs, client=None, notices=(): (pipelines.append(len(evs)),
                                                                                    real(evs, client, notices))[1])
    gone = [f"i-{n}" for n in range(120)]
    burst = []
    for n, iid in enumerate(gone):
        burst += [("delete_instance", {"instance_id": iid}),
                  ("publish_event", vars(events.InstanceEvent(instance_id=iid, pool_id="p1", kind="returned")))]
        burst.append(("reconcile_pool", {"pool_id": "p1"}))
        if n % 10 == 0:  # observations travel with them, each one: the applier reads every state event
            burst.append(("publish_event", vars(events.InstanceEvent(instance_id=f"s-{n}", pool_id="p1",
                                                                     state="running", seq=n))))
    burst.append(("delete_instance", {"instance_id": gone[0]}))  # a duplicate: already in flight
    after = AfterCommit(delay=0.01)
    after.submit(burst)
    assert after.flush(10)
    stream = get_settings().engine.events_stream
    entries = [events.InstanceEvent.from_fields(f) for _, f in redis_client.xrange(stream)]
    # The returns of p1 go once per pipeline (the applier reads them for their pool), the 12 state events each.
    assert sorted(e.instance_id for e in entries if e.kind == "state") == sorted(f"s-{n}" for n in range(0, 120, 10))
    returned = [e for e in entries if e.kind == "returned"]
    assert {e.pool_id for e in returned} == {"p1"} and 1 <= len(returned) <= len(pipelines)
    assert pipelines and sum(pipelines) == len(entries) and len(pipelines) < 20  # bursts, not 120 round trips
    destroys = [kw["instance_ids"] for name, kw in sent if name == "warmpool.delete_instances"]
    assert sorted(i for chunk in destroys for i in chunk) == sorted(gone)  # each once, the duplicate dropped
    assert all(len(chunk) <= 50 for chunk in destroys) and len(destroys) < 20
    assert not [name for name, _ in sent if name == "warmpool.delete_instance"]
    assert [kw for name, kw in sent if name == "warmpool.reconcile_pool"] == [{"pool_id": "p1"}]


def test_a_destroy_already_in_flight_is_not_sent_again(sent, redis_client):
    after = AfterCommit(delay=0.01)
    after.submit([("delete_instance", {"instance_id": "i-a"}), ("delete_instance", {"instance_id": "i-b"})])
    assert after.flush(10)
    after.submit([("delete_instance", {"instance_id": "i-b"}), ("delete_instance", {"instance_id": "i-c"})])
    assert after.flush(10)
    destroys = [i for name, kw in sent if name == "warmpool.delete_instances" for i in kw["instance_ids"]]
    assert sorted(destroys) == ["i-a", "i-b", "i-c"]  # i-b's second ask found its key taken
