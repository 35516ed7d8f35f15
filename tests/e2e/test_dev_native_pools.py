"""Issue 15's acceptance against a running `warmpool dev` (SQLite, in-process Redis, local provider): a named
pool created with POST /v1/pools (stopped tier 2, empty policy `reject`) fills, leases over gRPC by its
name, backfills from its stopped tier, answers RESOURCE_EXHAUSTED when empty; and a schedule firing is
applied by beat within one beat interval."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb, lease_api_pb2_grpc
from tests.e2e.test_dev import get, start_dev, stop_dev

pytestmark = pytest.mark.e2e
BEAT_SECONDS = 2.0  # the dev's scheduled-sizing beat interval in this test


def send(base: str, token: str, method: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def wait_for(what: str, check, timeout: float, log) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout}s\n{log()[-3000:]}")


def test_a_named_pool_fills_leases_by_name_backfills_from_its_stopped_tier_and_rejects_when_empty(tmp_path):
    proc, base, token, runner, _, grpc_port = start_dev(
        tmp_path, startup_seconds=90, env={"WARMPOOL_ENGINE__SCHEDULE_INTERVAL_SECONDS": str(BEAT_SECONDS)})
    log = (tmp_path / "dev.log").read_text
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(channel)
    md = [("authorization", f"Bearer {token}")]
    try:
        created = send(base, token, "POST", "/v1/pools", {
            "name": "ci", "runner_id": runner, "min_size": 2, "max_size": 2, "template": {}, "stopped_size": 2,
            "empty_policy": "reject", "lease_default_seconds": 1800, "lease_max_seconds": 86400})
        pool_id = created["id"]
        assert created["spec"]["stopped_size"] == 2 and created["spec"]["empty_policy"] == "reject"

        def status() -> dict:
            return get(base, token, f"/v1/pools/{pool_id}")["status"]

        def instances() -> list[dict]:
            return get(base, token, f"/v1/pools/{pool_id}/instances?page_size=100")["instances"]

        wait_for("2 ready and 2 stopped", lambda: (s := status())["ready"] == 2 and s["stopped"] == 2
                 and s["phase"] == "ready", 90, log)
        stopped_ids = {i["id"] for i in instances() if i["state"] == "stopped"}
        assert len(stopped_ids) == 2

        # Lease over gRPC by the pool's name.
        resp = stub.Lease(pb.LeaseRequest(pool="ci", service_tag="e2e"), metadata=md, timeout=10)
        assert resp.lease.pool == "ci" and resp.lease.instance
        assert resp.lease.expires.ToDatetime(tzinfo=UTC) - datetime.now(UTC) > timedelta(minutes=29)

        # The backfill starts an instance of the stopped tier (seconds), then refills the tier behind it.
        def started_from_tier() -> set[str]:
            return {i["id"] for i in instances() if i["id"] in stopped_ids and i["state"] == "running"
                    and i["lease_id"] is None}

        wait_for("a stopped instance started as the backfill", started_from_tier, 60, log)
        wait_for("2 ready and 2 stopped again", lambda: (s := status())["ready"] == 2 and s["stopped"] == 2, 90, log)

        # Empty: lease faster than it refills; `reject` answers RESOURCE_EXHAUSTED instead of queueing.
        codes = []
        for _ in range(20):
            try:
                stub.Lease(pb.LeaseRequest(pool="ci", service_tag="e2e"), metadata=md, timeout=10)
                codes.append("ok")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
                assert "reject" in exc.details()
                break
        assert codes[-1] == "RESOURCE_EXHAUSTED" and codes.count("ok") >= 2, codes

        # Scheduled sizing: entries alternating every minute; beat applies the next firing within one interval.
        schedule = send(base, token, "PUT", f"/v1/pools/{pool_id}/schedule", {"entries": [
            {"cron": "*/2 * * * *", "timezone": "Europe/Berlin", "min_size": 1, "max_size": 1},
            {"cron": "1-59/2 * * * *", "timezone": "Europe/Berlin", "min_size": 3, "max_size": 3}]})
        held = schedule["holding"]["index"]
        spec = get(base, token, f"/v1/pools/{pool_id}")["spec"]
        assert (spec["min_size"], spec["max_size"]) == ((1, 1) if held == 0 else (3, 3))  # applied at once
        fires = datetime.fromisoformat(schedule["next_fire_at"])
        expect = (3, 3) if held == 0 else (1, 1)
        left = (fires - datetime.now(UTC)).total_seconds()
        assert 0 < left <= 61, schedule
        time.sleep(max(left - 0.5, 0))  # the next firing is a wall-clock minute away: nothing to poll before it

        def applied() -> datetime | None:
            spec = get(base, token, f"/v1/pools/{pool_id}")["spec"]
            return datetime.now(UTC) if (spec["min_size"], spec["max_size"]) == expect else None

        seen = wait_for(f"the firing at {fires:%H:%M:%S} applied", applied, 60, log)
        # Within one beat interval (plus the poll and a loaded machine's slack).
        assert (seen - fires).total_seconds() <= BEAT_SECONDS + 5, (seen, fires)
        wait_for(f"the pool following its schedule to {expect}", lambda: status()["desired_size"] == expect[0], 60, log)
    finally:
        channel.close()
        stop_dev(proc)
    assert proc.returncode == 0, log()[-2000:]
