"""run_prebuild like every reconciler: run twice, row deleted mid-flight, transient retried, permanent
fails with the provider's message, cancel; on real Postgres and the fake cloud on real Redis."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app.db import session_scope
from app.domain import prebuilds
from app.models import Prebuild, Runner
from tests.conftest import make_catalog, make_org
from workers import operations, prebuild
from workers.providers.fake import FakeCloud
from workers.providers.registry import clear_cache


@pytest.fixture
def world(db, redis_client, effects_log):
    clear_cache()
    w = make_catalog(make_org())
    ns = f"pb-{uuid.uuid4().hex[:6]}"
    with session_scope() as s:
        s.get(Runner, w.runner_id).settings = {"namespace": ns, "boot_ms": 0, "snapshot_ms": 0, "delete_ms": 0}
    yield w, FakeCloud(redis_client, ns)
    clear_cache()


def new_prebuild(w) -> str:
    with session_scope() as s:
        return prebuilds.create_prebuild(w.org_id, w.project_id, w.env_class_id, session=s).id


def row(pid: str) -> Prebuild:
    with session_scope() as s:
        return s.get(Prebuild, pid)


def test_runs_to_completion_and_a_second_run_changes_nothing(world):
    w, cloud = world
    pid = new_prebuild(w)
    assert prebuild.run(pid) == "completed"
    first = row(pid)
    assert first.phase == "completed" and first.snapshot_id.startswith("fake-snap-") and first.completion_time
    assert cloud.all() == {}  # the prebuild instance is gone, its snapshot stays
    assert prebuild.run(pid) == "completed"
    again = row(pid)
    assert (again.snapshot_id, again.status_version) == (first.snapshot_id, first.status_version)
    assert len(cloud.r.smembers(cloud.snapshots)) == 1


def test_row_deleted_mid_flight(world):
    w, cloud = world
    pid = new_prebuild(w)
    with session_scope() as s:
        s.execute(sa.delete(Prebuild).where(Prebuild.id == pid))
    assert prebuild.run(pid) == "gone" and cloud.all() == {}


def test_transient_snapshot_failure_is_retried(world):
    w, cloud = world
    cloud.configure(fail_snapshot=1)
    pid = new_prebuild(w)
    with pytest.raises(operations.Failed):
        prebuild.run(pid)
    assert row(pid).phase == "snapshotting"
    cloud.reset_config()
    assert prebuild.run(pid, retries=1) == "completed"
    assert cloud.all() == {}


def test_permanent_failure_fails_with_the_message_and_cleans_up(world):
    w, cloud = world
    cloud.configure(fail_snapshot=1, fail_snapshot_permanent="true")
    pid = new_prebuild(w)
    assert prebuild.run(pid) == "failed"
    p = row(pid)
    assert p.phase == "failed" and "snapshot" in p.failure_message
    assert cloud.all() == {}


def test_cancel_before_and_during_the_run(world):
    w, cloud = world
    pid = new_prebuild(w)
    with session_scope() as s:
        assert prebuilds.cancel_prebuild(w.org_id, pid, session=s).phase == "cancelled"
    assert prebuild.run(pid) == "cancelled"
    pid2 = new_prebuild(w)
    with session_scope() as s:
        prebuilds.advance(pid2, prebuilds.PrebuildPhase.STARTING, session=s)
        prebuilds.advance(pid2, prebuilds.PrebuildPhase.RUNNING, session=s, provider_ref="fake-prebuild-x")
        assert prebuilds.cancel_prebuild(w.org_id, pid2, session=s).phase == "cancelling"
    assert prebuild.run(pid2) == "cancelled" and row(pid2).phase == "cancelled"
