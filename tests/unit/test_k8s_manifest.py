"""The pod a full openYuanrong PoolInfo turns into (PoolInfo -> pool template -> pod manifest), field by
field, and how a pod's JSON reads back as an Observed. Pure: no cluster, no database."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from app.domain.podpools import PodPoolInput, template_for, validate
from workers.providers.base import InstanceSpec, ProviderPermanent
from workers.providers.kubernetes import STOP_UNSUPPORTED, KubernetesProvider, observe, pod_manifest, pod_name

INSTANCE, POOL = "6f1c1f3e-3c7a-4a8e-9d59-2f0b8f6b7c10", "0d9a1c55-5f43-4f1e-8f4b-a1f0e2b7c3d4"
VOLUMES = [{"name": "data", "hostPath": {"path": "/data", "type": "Directory"}},
           {"name": "cache", "persistentVolumeClaim": {"claimName": "cache-pvc"}}]
MOUNTS = [{"name": "data", "mountPath": "/mnt/data", "readOnly": True}, {"name": "cache", "mountPath": "/cache"}]
AFFINITY = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
    "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"team": "ml"}}}}]}}
TOLERATIONS = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
               {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60}]
SPREAD = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
           "labelSelector": {"matchLabels": {"team": "ml"}}}]
RESOURCES = {"requests": {"cpu": "600m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}


def full_pool() -> PodPoolInput:
    return PodPoolInput(
        id="pool1", group="rg1", size=1, max_size=3, reuse=True,
        image="registry.example/runtime-manager:2.0", init_image="registry.example/function-agent-init:2.0",
        labels={"team": "ml", "yr-idle-to-recycle": "30"}, environment={"LOG_LEVEL": "debug", "YR_MODE": "warm"},
        node_selector={"disktype": "ssd"}, volumes=json.dumps(VOLUMES), volume_mounts=json.dumps(MOUNTS),
        affinities=json.dumps(AFFINITY), tolerations=json.dumps(TOLERATIONS), topology_spread_constraints=json.dumps(SPREAD),
        resources=RESOURCES, runtime_class_name="kata", pod_pending_duration_threshold=90,
        idle_recycle_time={"reserved": 60, "scaled": 10},
    )


def spec_for(p: PodPoolInput, snapshot_id: str | None = None) -> InstanceSpec:
    _, parsed = validate(p)
    return InstanceSpec(instance_id=INSTANCE, pool_id=POOL, owner="warmpool", snapshot_id=snapshot_id, template=template_for(p, parsed))


def test_full_pool_info_becomes_this_pod() -> None:
    m = pod_manifest(spec_for(full_pool()), "pools")
    assert (m["apiVersion"], m["kind"]) == ("v1", "Pod")
    meta = m["metadata"]
    assert (meta["name"], meta["namespace"]) == (f"wp-{INSTANCE}", "pools")
    assert meta["labels"] == {
        "team": "ml", "yr-idle-to-recycle": "30", "rg1": "rg1",
        "warmpool.dev/owner": "warmpool", "warmpool.dev/instance": INSTANCE, "warmpool.dev/pool": POOL,
    }
    assert meta["annotations"] == {"yr-pod-pool": "pool1", "warmpool.dev/pending-threshold-seconds": "90"}

    s = m["spec"]
    assert set(s) == {"containers", "initContainers", "restartPolicy", "nodeSelector", "tolerations", "affinity",
                      "topologySpreadConstraints", "runtimeClassName", "volumes"}
    assert s["restartPolicy"] == "Always"
    assert s["nodeSelector"] == {"disktype": "ssd"}
    assert s["tolerations"] == TOLERATIONS
    assert s["affinity"] == AFFINITY
    assert s["topologySpreadConstraints"] == SPREAD
    assert s["runtimeClassName"] == "kata"
    assert s["volumes"] == VOLUMES
    assert s["containers"] == [{
        "name": "main", "image": "registry.example/runtime-manager:2.0",
        "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "YR_MODE", "value": "warm"}],
        "resources": RESOURCES, "volumeMounts": MOUNTS,
    }]
    assert s["initContainers"] == [{
        "name": "init", "image": "registry.example/function-agent-init:2.0", "resources": RESOURCES, "volumeMounts": MOUNTS,
    }]
    # Every label is a valid Kubernetes label (keys: optional DNS prefix + name; values <= 63 chars).
    name = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
    for key, value in meta["labels"].items():
        assert name.match(key.rpartition("/")[2]) and (value == "" or name.match(value)), (key, value)
    assert re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", meta["name"])


def test_minimal_pool_and_provider_settings() -> None:
    p = PodPoolInput(id="p", image="img:1", resources={"limits": {"cpu": "1"}})
    m = pod_manifest(spec_for(p), "ns", service_account="runner-sa", image_pull_policy="IfNotPresent")
    assert m["metadata"]["labels"] == {"default": "default", "warmpool.dev/owner": "warmpool",
                                       "warmpool.dev/instance": INSTANCE, "warmpool.dev/pool": POOL}
    assert m["metadata"]["annotations"]["warmpool.dev/pending-threshold-seconds"] == "120"
    assert m["spec"] == {
        "containers": [{"name": "main", "image": "img:1", "resources": {"limits": {"cpu": "1"}}, "imagePullPolicy": "IfNotPresent"}],
        "restartPolicy": "Always", "serviceAccountName": "runner-sa",
    }


def test_snapshot_is_the_image_and_flat_templates_work() -> None:
    spec = InstanceSpec(instance_id=INSTANCE, pool_id=POOL, owner="warmpool", snapshot_id="registry/snap:42",
                        template={"image": "alpine", "zone": "a", "command": ["sleep"], "args": ["infinity"]})
    main = pod_manifest(spec, "ns")["spec"]["containers"][0]
    assert main == {"name": "main", "image": "registry/snap:42", "command": ["sleep"], "args": ["infinity"]}


@pytest.mark.parametrize("template,owner,error", [
    ({}, "warmpool", "has no image"),
    ({"image": "x", "environment": "A=1"}, "warmpool", "'environment' must be a dict"),
    ({"image": "x"}, "not a valid value!", "cannot be the value of label warmpool.dev/owner"),
])
def test_bad_templates_are_permanent(template: dict, owner: str, error: str) -> None:
    with pytest.raises(ProviderPermanent, match=re.escape(error)):
        pod_manifest(InstanceSpec(instance_id=INSTANCE, pool_id=POOL, owner=owner, template=template), "ns")


def test_pod_name_is_a_dns_label() -> None:
    assert pod_name(INSTANCE) == f"wp-{INSTANCE}"
    odd = pod_name("Some_ID." + "x" * 80)
    assert len(odd) <= 63 and re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", odd)


def test_no_stopped_pods() -> None:
    provider = KubernetesProvider({"namespace": "ns"})
    with pytest.raises(ProviderPermanent, match="stopped_size = 0"):
        provider.stop("wp-x")
    with pytest.raises(ProviderPermanent, match=re.escape(STOP_UNSUPPORTED)):
        provider.create(spec_for(full_pool()), start=False)


# ---- reading pods back ---------------------------------------------------------------------------

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def pod(phase: str, *, ready: bool = False, waiting: str = "", deleting: bool = False, threshold: str = "120",
        **status: object) -> dict:
    p = {
        "metadata": {"name": "wp-1", "namespace": "ns", "creationTimestamp": "2025-01-01T00:00:00Z", "resourceVersion": "7",
                     "labels": {"warmpool.dev/owner": "warmpool", "warmpool.dev/instance": "i-1", "warmpool.dev/pool": "p-1"},
                     "annotations": {"warmpool.dev/pending-threshold-seconds": threshold}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "x"}]},
        "status": {"phase": phase, "podIP": "10.0.0.9" if phase == "Running" else "", **status},
    }
    if ready:
        p["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:02.5Z"}]
    if waiting:
        p["status"]["containerStatuses"] = [{"name": "main", "state": {"waiting": {"reason": waiting, "message": "details"}}}]
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2025-01-01T00:01:00Z"
    return p


@pytest.mark.parametrize("p,state,message", [
    (pod("Pending"), "provisioning", ""),
    (pod("Pending", waiting="ErrImagePull"), "provisioning", "container main: ErrImagePull: details"),
    (pod("Pending", waiting="InvalidImageName"), "failed", "container main: InvalidImageName: details"),
    (pod("Running"), "starting", ""),
    (pod("Running", ready=True), "running", ""),
    (pod("Running", waiting="CrashLoopBackOff"), "failed", "container main: CrashLoopBackOff: details"),
    (pod("Running", ready=True, deleting=True), "deleting", ""),
    (pod("Failed", reason="Evicted", message="low on memory"), "failed", "pod Failed: Evicted low on memory"),
    (pod("Succeeded"), "failed", "pod Succeeded:"),
    (pod("Unknown"), "starting", "pod phase Unknown: its node stopped reporting"),
])
def test_pod_states(p: dict, state: str, message: str) -> None:
    obs = observe(p, now=T0 + timedelta(seconds=5))
    assert (obs.state, obs.message) == (state, message)
    assert (obs.ref, obs.instance_id, obs.pool_id, obs.owner) == ("wp-1", "i-1", "p-1", "warmpool")
    assert obs.extra == {"phase": p["status"]["phase"], "node": "node-a", "namespace": "ns", "resource_version": "7"}


def test_ready_pod_has_address_and_boot_time_and_a_stuck_pod_says_so() -> None:
    obs = observe(pod("Running", ready=True))
    assert (obs.address, obs.boot_ms) == ("10.0.0.9", 2500)
    late = observe(pod("Pending", waiting="ImagePullBackOff", threshold="60"), now=T0 + timedelta(seconds=61))
    assert late.state == "provisioning"
    assert late.message == "pod pending for 61s, over the pool's 60s threshold (container main: ImagePullBackOff: details)"
    foreign = observe({"metadata": {"name": "other"}, "status": {"phase": "Running"}})
    assert (foreign.instance_id, foreign.pool_id, foreign.owner) == (None, None, None)
