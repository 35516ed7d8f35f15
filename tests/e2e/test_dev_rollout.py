"""Issue 15's rollout acceptance against a running `warmpool dev`: a Gitpod pool on a fake runner rotates
to a prebuild whose snapshot does not boot. The rotation stalls past its progress deadline, the pool goes
DEGRADED, ready capacity stays at the target on the old snapshot (and leases get old instances), and one
rollback call brings the pool back to READY on the old snapshot alone."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import redis

from app.cli_context import dev_env_path, read_dev_env
from tests.e2e.test_dev import call, get, start_dev, stop_dev
from workers.providers.fake import FakeCloud

SIZE = 2


def send(base: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{base}{path}", method=method, data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def wait_for(what: str, check, tmp_path: Path, seconds: float = 60.0):
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; dev log tail: {(tmp_path / 'dev.log').read_text()[-3000:]}")


def prebuild(base: str, token: str, project: str, ec: str, tmp_path: Path) -> str:
    pid = call(base, token, "gitpod.v1.PrebuildService/CreatePrebuild",
               {"projectId": project, "environmentClassId": ec, "spec": {}})["prebuild"]["id"]

    def done():
        p = call(base, token, "gitpod.v1.PrebuildService/GetPrebuild", {"prebuildId": pid})["prebuild"]
        phase = p.get("status", {}).get("phase")
        assert phase != "PREBUILD_PHASE_FAILED", p
        return p if phase == "PREBUILD_PHASE_COMPLETED" else None
    wait_for("the prebuild", done, tmp_path)
    return pid


def instances_by_snapshot(base: str, token: str, pool: str) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for i in get(base, token, f"/v1/pools/{pool}/instances")["instances"]:
        if i["state"] not in ("deleted", "deleting"):
            key = (i.get("snapshot_id") or "", i["state"])
            out[key] = out.get(key, 0) + 1
    return out


def test_a_bad_snapshot_degrades_keeps_the_old_ones_serving_and_rollback_restores(tmp_path):
    proc, base, token, _, _, _ = start_dev(tmp_path, env={"WARMPOOL_ENGINE__RECONCILE_INTERVAL_SECONDS": "1"})
    try:
        ns = f"rollout-{time.time_ns()}"
        runner = send(base, token, "POST", "/v1/runners", {
            "name": "fake", "provider": "fake",
            "settings": {"namespace": ns, "boot_ms": 50, "start_ms": 0, "stop_ms": 0, "delete_ms": 0, "snapshot_ms": 0}})["id"]
        ec = call(base, token, "gitpod.v1.RunnerConfigurationService/CreateEnvironmentClass",
                  {"runnerId": runner, "displayName": "fake"})["id"]
        project = call(base, token, "gitpod.v1.ProjectService/CreateProject",
                       {"name": "p", "prebuildConfiguration": {"enabled": True, "environmentClassIds": [ec]}})["project"]["id"]
        pool = call(base, token, "gitpod.v1.PrebuildService/CreateWarmPool",
                    {"projectId": project, "environmentClassId": ec, "minSize": SIZE, "maxSize": SIZE})["warmPool"]["id"]
        send(base, token, "PUT", f"/v1/pools/{pool}/rollout", {"progress_deadline_seconds": 3})

        prebuild(base, token, project, ec, tmp_path)
        good = wait_for("the pool on the first snapshot", lambda: (
            (p := get(base, token, f"/v1/pools/{pool}"))["spec"]["snapshot_id"]
            and instances_by_snapshot(base, token, pool) == {(p["spec"]["snapshot_id"], "running"): SIZE}
            and p["status"]["phase"] == "ready" and p["spec"]["snapshot_id"]), tmp_path)

        cloud = FakeCloud(redis.Redis.from_url(read_dev_env(dev_env_path(tmp_path / "data"))["WARMPOOL_REDIS_URL"]), ns)
        cloud.configure(snapshots_broken="true")  # the next prebuild's snapshot does not boot
        prebuild(base, token, project, ec, tmp_path)
        bad = get(base, token, f"/v1/pools/{pool}")["spec"]["snapshot_id"]
        assert bad and bad != good

        degraded = wait_for("DEGRADED", lambda: (p := get(base, token, f"/v1/pools/{pool}"))["status"]["phase"] == "degraded" and p, tmp_path)
        rollout = get(base, token, f"/v1/pools/{pool}/rollout")
        assert "made no progress" in rollout["stalled"], rollout
        assert degraded["status"]["failure_message"]
        assert instances_by_snapshot(base, token, pool).get((good, "running")) == SIZE, "the old ones keep serving"

        lease = call(base, token, "intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Lease", {"pool": pool})
        leased = get(base, token, f"/v1/instances/{lease['lease']['instance']}")
        assert leased["snapshot_id"] == good
        call(base, token, "intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService/Return",
             {"instance": lease["lease"]["instance"]})

        back = send(base, token, "POST", f"/v1/pools/{pool}/rollout:rollback")
        assert back["snapshot_id"] == good and back["previous_snapshot_id"] == bad
        wait_for("READY on the old snapshot alone", lambda: (
            get(base, token, f"/v1/pools/{pool}")["status"]["phase"] == "ready"
            and instances_by_snapshot(base, token, pool) == {(good, "running"): SIZE}), tmp_path)
        assert get(base, token, f"/v1/pools/{pool}/rollout")["stalled"] == ""
    finally:
        stop_dev(proc)
