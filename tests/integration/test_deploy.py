"""deploy/: the Prometheus alert rules parse (with `promtool check rules` when it is installed) and have the
shape Prometheus loads, the Grafana dashboard is valid JSON, and every metric either of them names is one
that /metrics exposes (and every label they select on is one that metric carries)."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.domain.errors import DomainError
from tests.conftest import ROOT, make_org, token_for
from tests.leasing import add_ready, make_pool
from tests.unit.test_metrics_provider import Scripted
from workers.providers.base import ProviderPermanent

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

RULES = ROOT / "deploy/prometheus/warmpool-alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/warmpool-dashboard.json"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SELECTOR = re.compile(r"\b(warmpool_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
REQUIRED_ALERTS = {"WarmpoolPoolExhausted", "WarmpoolPoolDegraded", "WarmpoolApplierLag", "WarmpoolDeadLetters"}


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    assert isinstance(doc, dict) and set(doc) == {"groups"}, "a rule file has one key, groups"
    out = []
    names = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"] not in names
        names.add(group["name"])
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert isinstance(rule.get("alert"), str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert "for" not in rule or DURATION.match(rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            assert rule["annotations"]["summary"]
            out.append(rule)
    return out


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs and all(e.strip() for e in exprs)
    return exprs


def test_the_rules_have_the_shape_prometheus_loads():
    assert REQUIRED_ALERTS <= {r["alert"] for r in rules()}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_checks_the_rules():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def exposed(db, redis_client, effects_log) -> dict[str, set[str]]:
    """Sample name -> label names, from /metrics as a `metrics` token sees it, after a lease and a provider
    call so that the labelled series have samples."""
    from app.api.vmpool import LeaseService
    from app.main import create_app
    from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb

    world = make_org("acme")
    add_ready(make_pool(world.org_id, "web"), 2)
    make_pool(world.org_id, "empty")
    svc = LeaseService()
    try:
        asyncio.run(svc.lease(f"Bearer {world.token}", pb.LeaseRequest(pool="web"), 10))
        with pytest.raises(DomainError):  # waits for its reservation past the deadline
            asyncio.run(svc.lease(f"Bearer {world.token}", pb.LeaseRequest(pool="empty", reservation_id="r"), 0.2))
    finally:
        svc.waiter.close()
        svc.executor.shutdown(wait=False)
    with pytest.raises(ProviderPermanent):
        Scripted(ProviderPermanent("gone")).delete("ref")
    with TestClient(create_app(dispatcher=False)) as c:
        r = c.get("/metrics", headers={"Authorization": f"Bearer {token_for(world, 'metrics')}"})
    assert r.status_code == 200
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(r.text):
        for suffix in {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""]):
            out.setdefault(family.name + suffix, set())
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def used(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, labels it selects on) for each metric an expression names."""
    return [(m.group(1), {kv.split("=")[0].strip().rstrip("!~") for kv in (m.group(2) or "").split(",") if kv.strip()})
            for m in SELECTOR.finditer(expr)]


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_and_label_they_use_is_exposed(exposed, source):
    exprs = [r["expr"] for r in rules()] if source == "rules" else dashboard_exprs()
    missing = []
    for expr in exprs:
        for metric, labels in used(expr):
            if metric not in exposed:
                missing.append(metric)
            elif labels - exposed[metric] - {"le"}:
                missing.append(f"{metric}{{{','.join(sorted(labels - exposed[metric]))}}}")
    assert not missing, f"{source} name what /metrics does not expose: {sorted(set(missing))}"
    assert len({m for e in exprs for m, _ in used(e)}) >= 5


def test_the_checker_catches_a_misspelt_metric(exposed):
    assert used('rate(warmpool_leases_totl{how="warm"}[5m])')[0][0] not in exposed
    assert used('warmpool_pool_phase{phaze="degraded"}')[0][1] - exposed["warmpool_pool_phase"] == {"phaze"}
