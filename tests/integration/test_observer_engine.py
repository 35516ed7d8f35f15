"""The observer with real processes (`warmpool worker`, `events` and `observe`) on real Postgres and Redis:
pods become READY as the Kubernetes stub reports them Ready and a pod deleted behind our back is replaced;
a Unikraft instance stopped behind our back is noticed within one poll; and when the replica observing a
runner dies, another one takes the runner over and re-lists."""
from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.domain import catalog, effects, podpools, pools, tenancy
from app.domain.podpools import PodPoolInput
from app.models import Instance, Pool
from tests.conftest import make_catalog, make_org
from tests.integration.test_engine_processes import Processes, wait_for
from tests.integration.test_k8s_provider import NS, PodsStub, kubeconfig
from tests.unikraft_stub import UnikraftStub
from workers.observer import LEASE_KEY
from workers.providers.fake import FakeCloud
from workers.providers.registry import clear_cache

POLL_SECONDS = 1.0
UKC_TOKEN = "ukc-observer-token-1234"


@pytest.fixture
def stack(db, redis_client, tmp_path, monkeypatch):
    """Starts processes on demand with the test's settings (and the same settings in this process)."""
    started: list[Processes] = []
    previous: list = []

    def start(settings: dict[str, str], *names: str) -> Processes:
        for k, v in settings.items():
            monkeypatch.setenv(k, v)
        from config.settings import get_settings
        from workers import celery_app as capp

        get_settings.cache_clear()
        clear_cache()
        capp.reconfigure()
        previous.append(effects.set_dispatcher(capp.dispatch_effect))
        env = {**os.environ, "WARMPOOL_LOG_LEVEL": "WARNING", "WARMPOOL_ENGINE__STUCK_AFTER_SECONDS": "30",
               "WARMPOOL_ENGINE__RECONCILE_INTERVAL_SECONDS": "60", **settings}
        procs = Processes(env, tmp_path)
        for name in names:
            args = ("worker", "--concurrency", "8", "--hostname", f"obs-{uuid.uuid4().hex[:6]}@%h") \
                if name == "worker" else (name.rstrip("0123456789"),)
            procs.start(name, *args)
        started.append(procs)
        return procs

    yield start
    for procs in started:
        procs.stop_all()
    if previous:
        effects.set_dispatcher(previous[0])
    clear_cache()


def pool_row(pool_id: str) -> Pool:
    with session_scope() as s:
        return s.get(Pool, pool_id)


def instances(pool_id: str) -> list[Instance]:
    with session_scope() as s:
        return list(s.execute(sa.select(Instance).where(Instance.pool_id == pool_id)).scalars())


# ---- Kubernetes ------------------------------------------------------------------------------------

def test_pods_are_ready_as_the_cluster_reports_them_and_a_deleted_pod_is_replaced(stack, tmp_path):
    stub = PodsStub()
    try:
        procs = stack({"WARMPOOL_PROVIDERS__KUBERNETES__KUBECONFIG": kubeconfig(tmp_path, stub.url),
                       "WARMPOOL_PROVIDERS__KUBERNETES__NAMESPACES": NS}, "worker", "events", "observe")
        w = make_org()
        with session_scope() as s:
            tenancy.create_runner(w.org_id, "k8s", "kubernetes", {"namespace": NS, "request_timeout_s": 5}, session=s)
            spec = dict(id=f"pp-{uuid.uuid4().hex[:6]}", size=2, image="python:3.12",
                        resources={"requests": {"cpu": "100m", "memory": "64Mi"}})
            assert podpools.create_pod_pools(w.org_id, [PodPoolInput(**spec, given=spec)], tenant_id="0", session=s) == []
            pool_id = s.execute(sa.select(Pool.id).where(Pool.name == spec["id"])).scalar_one()

        wait_for(lambda: len(stub.pods) == 2, what="two pods created\n" + procs.log("worker"))
        wait_for(lambda: all(i.state == "provisioning" for i in instances(pool_id)) and len(instances(pool_id)) == 2,
                 what="both instances provisioning (pods Pending)")
        assert pool_row(pool_id).phase == "pending"
        ready_at = time.monotonic()
        for n, name in enumerate(sorted(stub.pods)):
            stub.set_status(name, "Running", ready=True, ip=f"10.0.0.{n + 1}")
        wait_for(lambda: (lambda p: p.phase == "ready" and p.ready_instances == 2)(pool_row(pool_id)), timeout=10,
                 what="READY after the pods became Ready\n" + procs.log("observe"))
        # The pods' watch is the only way their readiness reaches us (the Kubernetes provider does not poll):
        # READY at all is the mechanism. How fast (issue 11: within 1 s) is a figure for a quiet machine.
        took = time.monotonic() - ready_at
        print(f"pod pool READY {took * 1000:.0f} ms after its pods became Ready (issue 11: within 1 s)")

        victim = sorted(stub.pods)[0]
        with stub.cond:  # deleted behind our back (kubectl delete pod, an eviction)
            stub._event("DELETED", stub.pods.pop(victim))
        wait_for(lambda: len(stub.pods) == 2 and victim not in stub.pods, what="a replacement pod\n" + procs.log("worker"))
        new = [n for n in stub.pods if stub.pods[n].get("status", {}).get("phase") == "Pending"]
        assert len(new) == 1
        stub.set_status(new[0], "Running", ready=True, ip="10.0.0.9")
        wait_for(lambda: (lambda p: p.ready_instances == 2)(pool_row(pool_id)), timeout=10, what="2 ready again")
        gone = [i for i in instances(pool_id) if i.provider_ref == victim]
        assert gone and gone[0].state == "deleted"
    finally:
        stub.close()


# ---- Unikraft ----------------------------------------------------------------------------------------

def test_a_unikraft_instance_stopped_behind_our_back_is_noticed_within_one_poll(stack):
    with UnikraftStub(UKC_TOKEN, boot_ms=5, stop_ms=5) as stub:
        procs = stack({"WARMPOOL_PROVIDERS__ALLOWED_HOSTS": "127.0.0.1",
                       "WARMPOOL_OBSERVER__POLL_SECONDS": str(POLL_SECONDS),
                       "WARMPOOL_OBSERVER__POLL_FAST_SECONDS": "0.2"}, "worker", "events", "observe")
        w = make_org()
        with session_scope() as s:
            runner = tenancy.create_runner(w.org_id, "ukc", "unikraft", {
                "metro": stub.url, "token": UKC_TOKEN, "timeout_s": 2, "start_timeout_s": 2, "stop_timeout_s": 2,
                "drain_timeout_ms": 10}, session=s)
            ec = catalog.create_environment_class(w.org_id, runner.id, "nginx", "unikernel",
                                                  [{"key": "image", "value": "nginx:latest"}], session=s)
            project = catalog.create_project(w.org_id, "p", {"prebuildConfiguration": {
                "enabled": True, "environmentClassIds": [ec.id]}}, session=s)
            pool_id = pools.create_warm_pool(w.org_id, project.id, ec.id, min_size=1, max_size=1, session=s).id
        wait_for(lambda: pool_row(pool_id).ready_instances == 1, what="READY\n" + procs.log("worker"))
        inst = next(i for i in instances(pool_id) if i.state == "running")
        # Let the observer settle on its slow interval (nothing on its way), then stop the instance at the cloud.
        time.sleep(POLL_SECONDS)
        with stub.lock:
            stub._halt(stub._find(inst.provider_ref), "stopped", 0)
        stopped_at = time.monotonic()

        def noticed():
            with session_scope() as s:
                row = s.get(Instance, inst.id)
                return row.state != "running" or row.state_changed_at > inst.state_changed_at

        wait_for(noticed, timeout=10, what="the stop noticed\n" + procs.log("observe"))
        took = time.monotonic() - stopped_at
        # Noticed by the configured poll (1 s), not the default one (5 s): the bound tells the two apart and
        # leaves 2 s for the publish -> apply hop on a loaded machine.
        assert took < POLL_SECONDS + 2.0, f"noticed after {took:.2f}s (poll interval {POLL_SECONDS}s)"
        print(f"unikraft stop behind our back noticed after {took * 1000:.0f} ms (poll {POLL_SECONDS * 1000:.0f} ms)")
        # The pool wants it running: the engine starts it again.
        wait_for(lambda: pool_row(pool_id).ready_instances == 1 and any(
            r["state"] == "running" for r in stub.instances()), timeout=15, what="running again")


# ---- sharding between replicas -----------------------------------------------------------------------

def test_when_the_observing_replica_dies_another_takes_the_runner_over(stack, redis_client):
    procs = stack({"WARMPOOL_OBSERVER__LEASE_MS": "1500", "WARMPOOL_OBSERVER__RENEW_SECONDS": "0.3"},
                  "worker", "events", "observe1", "observe2")
    w = make_catalog(make_org())
    ns = f"obs-{uuid.uuid4().hex[:6]}"
    from app.models import Runner

    with session_scope() as s:
        s.get(Runner, w.runner_id).settings = {"namespace": ns, "boot_ms": 50, "start_ms": 10, "stop_ms": 10,
                                               "delete_ms": 5}
        pool_id = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=2, max_size=2, session=s).id
    wait_for(lambda: pool_row(pool_id).ready_instances == 2, what="READY\n" + procs.log("observe1"))
    holder = wait_for(lambda: redis_client.get(LEASE_KEY.format(w.runner_id)), what="a replica holds the runner")
    pid = int(holder.decode().split("-")[-2])
    name = next(n for n, p in procs.procs.items() if p.pid == pid)
    survivor = "observe2" if name == "observe1" else "observe1"
    procs.kill(name, signal.SIGKILL)
    killed = time.monotonic()
    cloud = FakeCloud(redis_client, ns)
    victim = next(i for i in instances(pool_id) if i.state == "running")
    cloud.drop(victim.provider_ref)  # vanished at the provider while nobody observed the runner
    taken = wait_for(lambda: (lambda v: v and v != holder and v)(redis_client.get(LEASE_KEY.format(w.runner_id))),
                     timeout=10, what="the other replica takes the runner")
    assert str(procs.procs[survivor].pid) in taken.decode()
    wait_for(lambda: next(i for i in instances(pool_id) if i.id == victim.id).state == "deleted", timeout=10,
             what="the vanished instance noticed by the new holder's listing\n" + procs.log(survivor))
    wait_for(lambda: pool_row(pool_id).ready_instances == 2, timeout=10, what="replaced")
    took = time.monotonic() - killed
    print(f"runner taken over and the vanished instance replaced {took:.2f}s after the holder died (lease 1.5 s)")
    assert procs.procs[survivor].poll() is None  # the survivor kept running


# ---- a runner's settings change while it is observed ----------------------------------------------------

def test_a_runner_whose_settings_change_is_observed_with_its_new_settings(stack, redis_client):
    """The observer watches a runner with the settings it had when taken; when they change (another
    namespace of the fake cloud, as an operator would point a runner at another account), it watches with
    the new ones, so instances created there become ready (before this, they stayed provisioning until the
    stuck-instance re-kick, 30 s here; the race tests met it when their runner was taken between its
    creation and its settings)."""
    procs = stack({}, "worker", "events", "observe")
    w = make_catalog(make_org())  # a fake runner with no settings yet
    wait_for(lambda: redis_client.get(LEASE_KEY.format(w.runner_id)), what="the observer takes the new runner")
    from app.models import Runner

    with session_scope() as s:
        s.get(Runner, w.runner_id).settings = {"namespace": f"obs-{uuid.uuid4().hex[:6]}", "boot_ms": 20,
                                               "start_ms": 10, "stop_ms": 10, "delete_ms": 5}
        pool_id = pools.create_warm_pool(w.org_id, w.project_id, w.env_class_id, min_size=2, max_size=2, session=s).id
    try:
        wait_for(lambda: pool_row(pool_id).ready_instances == 2, timeout=20, what="READY")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: instances {[i.state for i in instances(pool_id)]}\n{procs.log('observe')}") from None
