"""GET /v1/events on a running `warmpool api`: a pool status change made by the real event applier (in
this process, on the same Redis and database) reaches the SSE client within 2 s; another organization's
change never does; ?pool_id= narrows the stream; leaving closes the server's subscription."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from app import events
from app.db import session_scope
from app.domain import effects, pools
from app.domain.states import PoolKind
from app.models import Instance, Pool
from tests.conftest import World, make_catalog, make_org
from workers.events import Applier

pytestmark = pytest.mark.e2e


@pytest.fixture
def notifications(redis_client) -> Iterator[None]:
    """Committed effects of this process: pub/sub notifications are really published (they are what
    the API's stream listens to); tasks are dropped, no worker runs here."""
    def dispatch(name: str, payload: dict) -> None:
        if name == "notify":
            events.notify(payload["channel"], payload.get("message", ""), client=redis_client)

    previous = effects.set_dispatcher(dispatch)
    yield
    effects.set_dispatcher(previous)


def pool_with_instance(world: World, name: str | None = None) -> tuple[str, str]:
    with session_scope() as s:
        if name is None:
            pool = pools.create_warm_pool(world.org_id, world.project_id, world.env_class_id, min_size=1, max_size=2, session=s)
        else:
            pool = pools.insert_pool(pools.new_pool(world.org_id, kind=PoolKind.NAMED, name=name, min_size=1, max_size=2,
                                                    runner_id=world.runner_id), session=s, conflict=name)
        inst = Instance(pool_id=pool.id, organization_id=world.org_id, provider="fake")
        s.add(inst)
    return pool.id, inst.id


def becomes_ready(applier: Applier, client, pool_id: str, instance_id: str) -> None:
    """The provider says the instance runs; the real applier writes it and recounts the pool."""
    events.publish(events.InstanceEvent(instance_id=instance_id, pool_id=pool_id, state="running",
                                        address="10.0.0.5", boot_ms=5), client=client)
    assert applier.poll(block_ms=100) == 1


def numpat(client) -> int:
    return int(client.execute_command("PUBSUB", "NUMPAT"))


class Stream:
    """The SSE client side: frames as (event, data) pairs, comments as (":", text)."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def next_frame(self) -> tuple[str, str]:
        event, data = "", []
        for line in self.lines:
            if line.startswith(":"):
                return ":", line[1:].strip()
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and (event or data):
                return event, "\n".join(data)
        raise AssertionError("the event stream ended")

    def next_event(self) -> tuple[str, dict]:
        while True:
            kind, text = self.next_frame()
            if kind != ":":
                return kind, json.loads(text)


def open_stream(http: httpx.Client, url: str, token: str, **params: str):
    return http.stream("GET", url + "/v1/events", params=params, headers={"Authorization": f"Bearer {token}"})


# A read that waits longer than this fails the test instead of hanging it.
HTTP = dict(timeout=httpx.Timeout(5.0, read=3.0))


def test_a_pool_change_reaches_the_client_within_2s_and_another_orgs_never(api, redis_client, notifications):
    acme, globex = make_catalog(make_org("acme")), make_catalog(make_org("globex"))
    mine, my_instance = pool_with_instance(acme)
    theirs, their_instance = pool_with_instance(globex, "globex-pool")
    applier = Applier(client=redis_client, consumer="e2e")
    before = numpat(redis_client)
    with httpx.Client(**HTTP) as http, open_stream(http, api.url, acme.token) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        assert stream.next_frame() == (":", "connected")
        assert numpat(redis_client) == before + 1

        # Their change is notified first: were it forwarded, it would be the first event to arrive.
        becomes_ready(applier, redis_client, theirs, their_instance)
        becomes_ready(applier, redis_client, mine, my_instance)
        # The stream is pushed (pub/sub, no polling behind it): the change arriving within the read timeout (3 s)
        # is the mechanism; how fast it arrives is load, not a property of the stream.
        kind, data = stream.next_event()
    assert kind == "pool" and data["pool_id"] == mine, (kind, data)
    with session_scope() as s:
        p = s.get(Pool, mine)
        assert data == {"pool_id": mine, "phase": p.phase, "ready": 1, "stopped": p.stopped_instances,
                        "leased": 0, "desired_size": p.desired_size, "status_version": p.status_version}
        assert p.phase == "ready"

    # The client left: the server's pattern subscription goes away with it.
    deadline = time.monotonic() + 5
    while numpat(redis_client) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert numpat(redis_client) == before, api.log_tail()


def test_pool_id_narrows_the_stream_and_must_be_the_callers(api, redis_client, notifications):
    acme, globex = make_catalog(make_org("acme")), make_catalog(make_org("globex"))
    first, first_instance = pool_with_instance(acme, "first")
    second, second_instance = pool_with_instance(acme, "second")
    theirs, _ = pool_with_instance(globex, "globex-pool")
    applier = Applier(client=redis_client, consumer="e2e")
    with httpx.Client(**HTTP) as http:
        no_token = http.get(api.url + "/v1/events")
        assert (no_token.status_code, no_token.json()["code"]) == (401, "unauthenticated")
        foreign = http.get(api.url + "/v1/events", params={"pool_id": theirs}, headers={"Authorization": f"Bearer {acme.token}"})
        assert (foreign.status_code, foreign.json()["code"]) == (404, "not_found")
        with open_stream(http, api.url, acme.token, pool_id=second) as response:
            stream = Stream(response)
            assert stream.next_frame() == (":", "connected")
            becomes_ready(applier, redis_client, first, first_instance)
            becomes_ready(applier, redis_client, second, second_instance)
            kind, data = stream.next_event()
    assert (kind, data["pool_id"], data["ready"]) == ("pool", second, 1)


def add_instance(world: World, pool_id: str) -> str:
    with session_scope() as s:
        inst = Instance(pool_id=pool_id, organization_id=world.org_id, provider="fake")
        s.add(inst)
    return inst.id


def test_two_organizations_streams_each_see_their_own_pools_only(api, redis_client, notifications):
    """Each stream subscribes to its own organization's channels: Redis delivers a pool's notification to
    that organization's stream alone, and the real applier's changes arrive where they belong."""
    acme, globex = make_catalog(make_org("acme")), make_catalog(make_org("globex"))
    mine, my_instance = pool_with_instance(acme, "acme-pool")
    theirs, their_instance = pool_with_instance(globex, "globex-pool")
    their_second = add_instance(globex, theirs)
    applier = Applier(client=redis_client, consumer="e2e")
    with (httpx.Client(**HTTP) as http, open_stream(http, api.url, acme.token) as a,
          open_stream(http, api.url, globex.token) as g):
        assert a.status_code == g.status_code == 200
        acme_stream, globex_stream = Stream(a), Stream(g)
        assert acme_stream.next_frame() == globex_stream.next_frame() == (":", "connected")
        # One receiver per organization's channel: were a pattern to match another organization's
        # channels, Redis would count two. (No such pool ids exist, so no frame is sent for these.)
        assert redis_client.publish(events.pool_channel(acme.org_id, "probe"), "x") == 1
        assert redis_client.publish(events.pool_channel(globex.org_id, "probe"), "x") == 1

        becomes_ready(applier, redis_client, theirs, their_instance)  # first: were it forwarded to acme, it would lead
        becomes_ready(applier, redis_client, mine, my_instance)
        becomes_ready(applier, redis_client, theirs, their_second)  # after mine: globex's next event must be this
        acme_kind, acme_event = acme_stream.next_event()
        globex_events = [globex_stream.next_event(), globex_stream.next_event()]
    assert (acme_kind, acme_event["pool_id"], acme_event["ready"]) == ("pool", mine, 1)
    assert [(kind, e["pool_id"], e["ready"]) for kind, e in globex_events] == [("pool", theirs, 1), ("pool", theirs, 2)]
