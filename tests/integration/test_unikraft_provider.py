"""The Unikraft Cloud provider driven through every operation against the local API stub, over real HTTP
through the official SDK; faults mapped to ProviderTransient/ProviderPermanent; the token never leaks."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
import traceback
from email.utils import formatdate

import pytest
from unikraft_cloud import UnikraftCloud

from tests.unikraft_stub import UnikraftStub
from workers.providers.base import (
    INSTANCE_TAG, OWNER_TAG, POOL_TAG, InstanceSpec, ProviderPermanent, ProviderTransient,
)
from workers.providers.registry import provider_class
from workers.providers.unikraft import UnikraftProvider

TOKEN = "ukc-secret-7f3a9c1e5d"
FAST = {"start_timeout_s": 2, "stop_timeout_s": 2, "timeout_s": 2, "drain_timeout_ms": 20}
IMAGE = {"image": "nginx:latest"}


@pytest.fixture
def stub():
    with UnikraftStub(TOKEN) as s:
        yield s


@pytest.fixture
def provider(stub):
    return UnikraftProvider({"metro": stub.url, "token": TOKEN, **FAST})


def spec(instance_id="inst-1", template=None, owner="warmpool", snapshot_id=None, pool_id="pool-1"):
    return InstanceSpec(instance_id=instance_id, pool_id=pool_id, owner=owner, snapshot_id=snapshot_id,
                        template=IMAGE if template is None else template)


def last_body(stub, op):
    return [r for r in stub.requests if r["op"] == op][-1]["body"]


# ---- create ----------------------------------------------------------------------------------------

def test_create_running_carries_the_template_and_our_ids(stub, provider):
    template = {"image": "nginx:latest", "args": ["-g", "daemon off;"], "env": {"MODE": "warm"}, "memory_mb": 256,
                "vcpus": 2, "ports": ["443:8080", "80:8080/http+redirect"], "scale_to_zero": "idle",
                "scale_to_zero_stateful": True, "scale_to_zero_cooldown_ms": 500, "tags": ["team:infra"]}
    obs = provider.create(spec(template=template), start=True)

    body = last_body(stub, "create")
    assert body["name"] == "wp-inst-1" and body["autostart"] is True and body["timeout_s"] == 2
    assert (body["image"], body["args"], body["env"], body["memory_mb"], body["vcpus"]) == \
        ("nginx:latest", ["-g", "daemon off;"], {"MODE": "warm"}, 256, 2)
    assert body["service_group"]["services"] == [
        {"port": 443, "destination_port": 8080, "handlers": ["tls", "http"]},
        {"port": 80, "destination_port": 8080, "handlers": ["http", "redirect"]}]
    assert body["scale_to_zero"] == {"policy": "idle", "stateful": True, "cooldown_time_ms": 500}
    assert set(body["tags"]) == {f"{OWNER_TAG}:warmpool", f"{INSTANCE_TAG}:inst-1", f"{POOL_TAG}:pool-1", "team:infra"}
    assert body["annotations"] == {OWNER_TAG: "warmpool", INSTANCE_TAG: "inst-1", POOL_TAG: "pool-1"}

    assert (obs.state, obs.instance_id, obs.pool_id, obs.owner) == ("running", "inst-1", "pool-1", "warmpool")
    assert obs.ref == stub.instances()[0]["uuid"]
    assert obs.address.startswith("10.0.") and "/" not in obs.address  # CIDR suffix dropped
    assert obs.boot_ms == 20 and obs.extra["boot_time_us"] == 20123
    assert obs.extra["private_fqdn"] == "wp-inst-1.internal" and obs.extra["fqdns"] == ["wp-inst-1.fra.unikraft.app"]


def test_create_stopped_boots_then_suspends_into_standby(stub, provider):
    obs = provider.create(spec(), start=False)
    assert last_body(stub, "create")["autostart"] is True and stub.calls("suspend") == 1
    assert (obs.state, obs.extra["provider_state"]) == ("stopped", "standby")
    assert provider.logs(obs.ref).splitlines()[-2:] == ["ready", "suspended"]  # booted before it slept
    assert provider.create(spec(), start=False).extra["provider_state"] == "standby"  # a retry changes nothing
    assert stub.calls("suspend") == 1 and len(stub.instances()) == 1


def test_a_create_cut_short_before_its_suspend_is_finished_by_the_retry(stub, provider):
    stub.inject("suspend", status=503, message="busy")
    with pytest.raises(ProviderTransient, match="busy"):
        provider.create(spec(), start=False)
    assert stub.instances()[0]["state"] == "running"
    obs = provider.create(spec(), start=False)
    assert obs.extra["provider_state"] == "standby" and len(stub.instances()) == 1


def test_create_with_autostart_off_leaves_it_stopped(stub):
    p = UnikraftProvider({"metro": stub.url, "token": TOKEN, **FAST, "standby_boot": "false"})
    obs = p.create(spec(), start=False)
    body = last_body(stub, "create")
    assert body["autostart"] is False and "timeout_s" not in body
    assert obs.state == "stopped" and obs.extra["provider_state"] == "stopped"
    assert body["memory_mb"] == 128  # the runner's default memory


def test_flat_string_template_of_a_gitpod_environment_class(stub):
    p = UnikraftProvider({"metro": stub.url, "token": TOKEN, "default_memory_mb": "512", **FAST})
    template = {"image": "nginx:latest", "args": "-c 'echo hi'", "env": '{"A": "1"}', "memory": "1Gi",
                "ports": "443:8080,8080", "scale_to_zero": "on"}
    p.create(spec(template=template), start=False)
    body = last_body(stub, "create")
    assert body["args"] == ["-c", "echo hi"] and body["env"] == {"A": "1"} and body["memory_mb"] == 1024
    assert [s["port"] for s in body["service_group"]["services"]] == [443, 8080]
    p.create(spec("inst-2", template={"image": "nginx:latest"}), start=False)
    assert last_body(stub, "create")["memory_mb"] == 512


def test_create_twice_for_one_instance_id_makes_one_instance(stub, provider):
    first = provider.create(spec(), start=False)
    again = provider.create(spec(), start=False)
    assert again.ref == first.ref and again.state == "stopped"
    started = provider.create(spec(), start=True)  # a retried create that wanted it running starts it
    assert started.ref == first.ref and started.state == "running"
    assert len(stub.instances()) == 1 and stub.calls("create") == 3


# ---- lifecycle -------------------------------------------------------------------------------------

def test_stop_suspends_to_standby_and_start_wakes_it(stub, provider):
    ref = provider.create(spec(), start=True).ref
    stopped = provider.stop(ref)
    assert (stopped.state, stopped.extra["provider_state"]) == ("stopped", "standby")
    assert last_body(stub, "suspend") == {"drain_timeout_ms": 20} and stub.calls("stop") == 0
    assert provider.stop(ref).extra["provider_state"] == "standby"  # already there: left as it is
    began = time.monotonic()
    woke = provider.start(ref)
    assert woke.state == "running" and woke.address and time.monotonic() - began < 1.0
    assert provider.start(ref).state == "running"  # a running one is left as it is


def test_stopped_tier_can_be_a_real_stop_with_a_drain_timeout(stub):
    p = UnikraftProvider({"metro": stub.url, "token": TOKEN, **FAST, "stopped_tier": "stopped"})
    ref = p.create(spec(), start=True).ref
    obs = p.stop(ref, drain_timeout_ms=25)
    assert (obs.state, obs.extra["provider_state"]) == ("stopped", "stopped")
    assert last_body(stub, "stop") == {"drain_timeout_ms": 25}
    # Suspending a stopped instance is refused by the API (wrong state); it is in the stopped tier already.
    assert p.suspend(ref).extra["provider_state"] == "stopped"
    assert p.stop(ref).state == "stopped"


def test_get_delete_and_unknown_refs(stub, provider):
    ref = provider.create(spec(), start=False).ref
    assert provider.get(ref).instance_id == "inst-1"
    provider.delete(ref)
    provider.delete(ref)  # already gone: succeeds
    assert provider.get(ref) is None and stub.instances() == []
    with pytest.raises(ProviderPermanent, match="not found"):
        provider.start(ref)


def test_wait_for_state_that_never_comes_is_transient(stub, provider):
    ref = provider.create(spec(), start=False).ref
    with pytest.raises(ProviderTransient, match="timed out") as info:
        provider.wait_for_state(ref, "running", 1)
    assert "it is standby" in str(info.value)  # the state it was left in
    assert provider.wait_for_state(ref, "standby", 1).state == "stopped"


def test_list_returns_everything_visible_and_filters_by_owner_tag(stub):
    p = UnikraftProvider({"metro": stub.url, "token": TOKEN, **FAST, "page_size": 2})
    ours = {p.create(spec(f"inst-{i}"), start=False).ref for i in range(3)}
    theirs = p.create(spec("x", owner="someone-else"), start=False).ref
    p.snapshot(next(iter(ours)), "snap")  # a checkpoint is a snapshot, not an instance

    everything = p.list()
    assert {o.ref for o in everything} == ours | {theirs}
    assert {o.ref for o in p.list("warmpool")} == ours
    assert all(o.owner == "warmpool" and o.pool_id == "pool-1" for o in p.list("warmpool"))
    assert any(r["query"].get("tags") == [f"{OWNER_TAG}:warmpool"] for r in stub.requests if r["op"] == "list")
    assert stub.calls("list") >= 3 + 2  # paged two at a time


def test_logs_are_decoded_from_base64(stub, provider):
    ref = provider.create(spec(), start=True).ref
    stub.console(ref, "".join(f"line {i}\n" for i in range(50)) + "grüße ✓\n")
    assert provider.logs(ref, 3).splitlines() == ["line 48", "line 49", "grüße ✓"]
    assert "Powered by Unikraft ✓" in provider.logs(ref, 1000)
    assert last_body(stub, "log")["offset"] < 0


# ---- snapshots -------------------------------------------------------------------------------------

def test_checkpoint_snapshot_and_instances_restored_from_it(stub, provider):
    prebuild = provider.create(spec("prebuild-1", pool_id=""), start=True).ref
    snapshot_id = provider.snapshot(prebuild, "prebuild-1")
    kind, _, uuid = snapshot_id.partition(":")
    assert kind == "checkpoint" and stub.instances("checkpoint")[0]["uuid"] == uuid
    assert provider.snapshot(prebuild, "prebuild-1") == snapshot_id  # a retried snapshot finds the same one
    provider.delete(prebuild)
    assert provider.get(prebuild) is None

    obs = provider.create(spec("inst-9", snapshot_id=snapshot_id), start=True)
    body = last_body(stub, "create")
    assert body["checkpoint"] == {"uuid": uuid} and "image" not in body
    assert obs.state == "running" and obs.instance_id == "inst-9" and "restored from checkpoint" in provider.logs(obs.ref)

    provider.delete_snapshot(snapshot_id)
    provider.delete_snapshot(snapshot_id)  # already gone: succeeds
    assert stub.instances("checkpoint") == []


def test_template_snapshot_survives_the_prebuild_delete(stub):
    p = UnikraftProvider({"metro": stub.url, "token": TOKEN, **FAST, "snapshot_kind": "template"})
    ref = p.create(spec("prebuild-2", template={"image": "unikraft.org/python:3.12", "memory_mb": 64}), start=True).ref
    snapshot_id = p.snapshot(ref, "prebuild-2")
    assert snapshot_id == f"template:{ref}" and p.snapshot(ref, "prebuild-2") == snapshot_id
    p.delete(ref)  # the prebuild flow deletes its instance: the template it became stays
    assert [t["uuid"] for t in stub.instances("template")] == [ref]
    assert p.list() == [] and p.get(ref).state == "deleted"

    obs = p.create(spec("inst-3", snapshot_id=snapshot_id, template={}), start=True)
    assert last_body(stub, "create")["template"] == {"uuid": ref}
    assert obs.state == "running" and obs.extra["image"] == "unikraft.org/python:3.12"
    p.delete_snapshot(snapshot_id)
    assert stub.instances("template") == []


# ---- faults ----------------------------------------------------------------------------------------

def test_rate_limit_is_transient_with_retry_after(stub, provider):
    stub.inject("create", status=429, retry_after="7", message="Too many requests, slow down")
    with pytest.raises(ProviderTransient, match="Too many requests, slow down") as info:
        provider.create(spec(), start=True)
    assert info.value.retry_after == 7 and "HTTP 429" in str(info.value)
    assert stub.instances() == []
    assert provider.create(spec(), start=True).state == "running"  # the retry goes through


def test_retry_after_as_an_http_date(stub, provider):
    stub.inject("list", status=429, retry_after=formatdate(time.time() + 30, usegmt=True))
    with pytest.raises(ProviderTransient) as info:
        provider.list()
    assert 25 <= info.value.retry_after <= 31


def test_server_errors_are_transient(stub, provider):
    ref = provider.create(spec(), start=False).ref
    stub.inject("start", status=503, message="Service temporarily unavailable")
    with pytest.raises(ProviderTransient, match="Service temporarily unavailable") as info:
        provider.start(ref)
    assert info.value.retry_after is None
    stub.inject("delete", status=500, message="internal error")
    with pytest.raises(ProviderTransient, match="internal error"):
        provider.delete(ref)


def test_slow_answers_and_unreachable_api_are_transient(stub):
    p = UnikraftProvider({"metro": stub.url, "token": TOKEN, **FAST, "timeout_s": 0.3})
    stub.inject("get", delay=1.0)
    began = time.monotonic()
    with pytest.raises(ProviderTransient):
        p.get("00000000-0000-4000-8000-000000000000")
    assert time.monotonic() - began < 0.9
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    nowhere = UnikraftProvider({"metro": f"http://127.0.0.1:{closed_port}", "token": TOKEN, **FAST})
    with pytest.raises(ProviderTransient):
        nowhere.list()


def test_quota_and_invalid_image_are_permanent_with_the_api_message(stub):
    stub.quota_instances = 1
    p = UnikraftProvider({"metro": stub.url, "token": TOKEN, **FAST})
    p.create(spec("a"), start=False)
    with pytest.raises(ProviderPermanent, match="Quota exceeded: your plan allows 1 instances") as info:
        p.create(spec("b"), start=False)
    assert "error 19 Quota" in str(info.value)
    with pytest.raises(ProviderPermanent, match="Invalid image: 'nope:latest' was not found"):
        p.create(spec("c", template={"image": "nope:latest"}), start=False)
    assert len(stub.instances()) == 1


def test_bad_templates_fail_before_calling_the_api(stub, provider):
    with pytest.raises(ProviderPermanent, match="scale_to_zero needs a service group"):
        provider.create(spec(template={"image": "nginx:latest", "scale_to_zero": "on"}), start=True)
    with pytest.raises(ProviderPermanent, match="no image"):
        provider.create(spec(template={}), start=True)
    with pytest.raises(ProviderPermanent, match="memory"):
        provider.create(spec(template={"image": "nginx:latest", "memory": "lots"}), start=True)
    assert stub.calls("create") == 0


def test_partial_success_is_judged_by_our_item(stub, provider):
    stub.inject("create", partial="ours", code=19, message="Quota exceeded: memory")
    with pytest.raises(ProviderPermanent, match="Quota exceeded: memory"):
        provider.create(spec(), start=False)
    ref = provider.create(spec(), start=True).ref
    stub.inject("start", partial="ours", code=11, message="instance is busy")
    with pytest.raises(ProviderTransient, match="instance is busy"):
        provider.start(ref)
    stub.inject("suspend", partial="other")  # another item failed, ours went through
    assert provider.stop(ref).extra["provider_state"] == "standby"
    stub.inject("list", partial="other")
    assert [o.ref for o in provider.list()] == [ref]


def test_wrong_token_is_permanent(stub):
    p = UnikraftProvider({"metro": stub.url, "token": "not-the-token", **FAST})
    with pytest.raises(ProviderPermanent, match="Unauthorized"):
        p.list()


def test_the_token_never_leaks(stub, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    p = UnikraftProvider({"metro": stub.url, "token": TOKEN, **FAST})
    errors: list[BaseException] = []
    ref = p.create(spec(), start=True).ref
    p.stop(ref), p.start(ref), p.logs(ref), p.list("warmpool"), p.delete_snapshot(p.snapshot(ref, "s"))
    for op, kw in [("create", {"status": 429, "retry_after": "1"}), ("start", {"status": 503}),
                   ("get", {"status": 400, "message": f"echoed header: Bearer {TOKEN}"})]:
        stub.inject(op, **kw)
    for call in (lambda: p.create(spec("i2"), start=True), lambda: p.start(ref), lambda: p.get(ref),
                 lambda: p.start("no-such-instance"), lambda: p.create(spec(template={}), start=True)):
        try:
            call()
        except (ProviderTransient, ProviderPermanent) as exc:
            errors.append(exc)
    assert len(errors) == 5 and all(r["authorized"] for r in stub.requests[:5])  # the token was really sent
    texts = [caplog.text, repr(p), str(p.settings)] + [
        str(e) + repr(e) + "".join(traceback.format_exception(e)) for e in errors]
    assert "unikraft: created" in caplog.text and "HTTP Request" in caplog.text  # the logs were captured
    assert all(TOKEN not in text for text in texts)
    assert "echoed header: Bearer ***" in str(errors[2])


# ---- the SDK as a user, the registry, settings -----------------------------------------------------

def test_the_official_sdk_sees_and_drives_what_the_provider_made(stub, provider):
    ref = provider.create(spec(), start=True).ref

    async def as_a_user():
        async with UnikraftCloud(token=TOKEN, metro=stub.url) as ukc:
            tagged = await ukc.instances.list(details=True, tags=[f"{OWNER_TAG}:warmpool"])
            await ukc.instances.create(image="nginx:latest", name="hand-made", autostart=False)
            await ukc.instances.get(uuid=ref).suspend()
            waited = await ukc.instances.get(uuid=ref).wait(state="standby", timeout_seconds=2)
            return tagged, waited

    tagged, waited = asyncio.run(as_a_user())
    assert [i.uuid for i in tagged] == [ref] and tagged[0].annotations[INSTANCE_TAG] == "inst-1"
    assert waited.state == "standby"
    assert provider.get(ref).extra["provider_state"] == "standby"
    visible = {o.extra["name"]: o for o in provider.list()}
    assert set(visible) == {"wp-inst-1", "hand-made"} and visible["hand-made"].owner is None
    assert [o.ref for o in provider.list("warmpool")] == [ref]


def test_callable_from_inside_a_running_event_loop(stub, provider):
    ref = provider.create(spec(), start=False).ref

    async def handler():  # e.g. an async API route asking for an instance's state
        return provider.get(ref)

    assert asyncio.run(handler()).ref == ref


def test_registered_as_an_entry_point_and_settings():
    assert provider_class("unikraft") is UnikraftProvider
    assert UnikraftProvider({"metro": "fra0"}).base_url == "https://api.fra0.unikraft.cloud"
    assert UnikraftProvider({}).base_url == "https://api.fra.unikraft.cloud"
    assert UnikraftProvider({"metro": "https://api.example.test/v1"}).base_url == "https://api.example.test"
    with pytest.raises(ValueError, match="stopped_tier"):
        UnikraftProvider({"stopped_tier": "frozen"})


def test_token_from_an_environment_variable(stub, monkeypatch):
    monkeypatch.setenv("MY_UKC_TOKEN", TOKEN)
    p = UnikraftProvider({"metro": stub.url, "token_env": "MY_UKC_TOKEN", **FAST})
    assert p.list() == [] and stub.requests[-1]["authorized"]
