"""The lease domain on real PostgreSQL: claim, durations, pool choice, extension, return, expiry, policies."""
from __future__ import annotations

from datetime import timedelta

import pytest

from app import events as ev
from app.db import session_scope
from app.domain import instances, leases, reservations, tenancy
from app.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from app.models import Instance, Lease, utcnow
from tests.leasing import add_ready, get, leases_of, make_pool

pytestmark = pytest.mark.postgres


def lease(org_id: str, pool: str = "pool-a", **kw):
    with session_scope() as s:
        return leases.lease(org_id, pool, session=s, **kw)


def call(fn, org_id: str, *args, **kw):
    with session_scope() as s:
        return fn(org_id, *args, session=s, **kw)


def test_lease_claims_a_ready_instance_in_one_transaction_and_announces_it_after_commit(org, effects_log):
    pool = make_pool(org.org_id)
    [iid] = add_ready(pool, zone="eu-1")
    effects_log.clear()
    got = lease(org.org_id, service_tag="svc")
    assert isinstance(got, leases.LeaseView)
    assert (got.instance_id, got.pool_name, got.zone, got.service_tag) == (iid, "pool-a", "eu-1", "svc")
    inst = get(Instance, iid)
    assert inst.lease_id == got.lease_id and inst.idle_since is None
    row = get(Lease, got.lease_id)
    assert (row.state, row.instance_id, row.service_tag) == ("active", iid, "svc")
    names = [name for name, _ in effects_log]
    assert names == ["publish_event", "reconcile_pool"]
    event = effects_log[0][1]
    assert (event["kind"], event["instance_id"], event["pool_id"]) == (ev.KIND_LEASED, iid, pool.id)
    # The pool row's counters are the applier's: the claim leaves them alone.
    assert get(type(pool), pool.id).status_version == pool.status_version


def test_claim_prefers_fresh_then_longest_ready_and_skips_draining_leased_and_not_running(org):
    pool = make_pool(org.org_id)
    now = utcnow()
    [stale_oldest] = add_ready(pool, stale=True, ready_at=now - timedelta(hours=2))
    [newer] = add_ready(pool, ready_at=now - timedelta(minutes=1))
    [older] = add_ready(pool, ready_at=now - timedelta(minutes=10))
    [draining] = add_ready(pool, ready_at=now - timedelta(hours=3))
    with session_scope() as s:
        s.get(Instance, draining).draining = True
        s.add(Instance(pool_id=pool.id, organization_id=org.org_id, state="starting"))
    order = [lease(org.org_id).instance_id for _ in range(3)]
    assert order == [older, newer, stale_oldest]
    # Only a draining and a starting instance are left: nothing to claim, so the reservation queues.
    assert isinstance(lease(org.org_id, reservation_id="r-1"), leases.Queued)


def test_durations_default_clamp_and_past(org):
    pool = make_pool(org.org_id, lease_default_seconds=600, lease_max_seconds=3600)
    add_ready(pool, 4)
    now = utcnow()
    assert lease(org.org_id, now=now).expires_at == now + timedelta(seconds=600)
    assert lease(org.org_id, now=now, wished_expiry=now - timedelta(days=1)).expires_at == now + timedelta(seconds=600)
    assert lease(org.org_id, now=now, wished_expiry=now + timedelta(hours=5)).expires_at == now + timedelta(hours=1)
    assert lease(org.org_id, now=now, wished_expiry=now + timedelta(minutes=2)).expires_at == now + timedelta(minutes=2)


def test_empty_pool_name_picks_the_pool_with_most_ready_instances(org):
    a, b = make_pool(org.org_id, "a"), make_pool(org.org_id, "b")
    add_ready(a, 1)
    add_ready(b, 3)
    assert lease(org.org_id, "").pool_name == "b"
    assert lease(org.org_id, "").pool_name == "b"
    # 1 vs 1: the older pool wins the tie.
    assert lease(org.org_id, "").pool_name == "a"


def test_unknown_deleted_and_foreign_pools_are_not_found(org):
    other = tenancy_org("other")
    make_pool(other, "theirs")
    with pytest.raises(NotFound):
        lease(org.org_id, "nope")
    with pytest.raises(NotFound):
        lease(org.org_id, "theirs")
    with pytest.raises(NotFound, match="no pool"):
        lease(org.org_id, "")
    pool = make_pool(org.org_id, "doomed")
    add_ready(pool)
    from app.domain import pools

    call(pools.delete_pool, org.org_id, pool.id)
    with pytest.raises(NotFound):
        lease(org.org_id, "doomed")


def tenancy_org(name: str) -> str:
    with session_scope() as s:
        return tenancy.ensure_organization(name, session=s).id


def test_extend_to_clamps_to_created_plus_max_and_extend_only_never_shortens(org):
    make_pool(org.org_id, lease_default_seconds=600, lease_max_seconds=3600)
    pool = get_pool(org.org_id)
    add_ready(pool)
    now = utcnow()
    got = lease(org.org_id, service_tag="svc", now=now)
    iid = got.instance_id
    longer = call(leases.extend_to, org.org_id, iid, now + timedelta(hours=9), service_tag="svc", now=now)
    assert longer.expires_at == now + timedelta(hours=1)  # created_at + max
    shorter = call(leases.extend_to, org.org_id, iid, now + timedelta(minutes=5), service_tag="svc",
                   extend_only=True, now=now)
    assert shorter.expires_at == now + timedelta(hours=1)
    shortened = call(leases.extend_to, org.org_id, iid, now + timedelta(minutes=5), service_tag="svc", now=now)
    assert shortened.expires_at == now + timedelta(minutes=5)
    with pytest.raises(InvalidArgument, match="future"):
        call(leases.extend_to, org.org_id, iid, now - timedelta(seconds=1), service_tag="svc", now=now)
    with pytest.raises(PermissionDenied):
        call(leases.extend_to, org.org_id, iid, now + timedelta(minutes=9), service_tag="other", now=now)
    assert get(Lease, got.lease_id).expires_at == now + timedelta(minutes=5)


def get_pool(org_id: str, name: str = "pool-a"):
    from app.domain.pools import find_pool

    with session_scope() as s:
        return find_pool(org_id, name, session=s)


def test_return_destroys_the_instance_and_a_second_return_is_failed_precondition(org, effects_log):
    pool = make_pool(org.org_id)
    [iid] = add_ready(pool)
    got = lease(org.org_id, service_tag="svc")
    with pytest.raises(PermissionDenied):
        call(leases.return_lease, org.org_id, iid, service_tag="intruder")
    effects_log.clear()
    call(leases.return_lease, org.org_id, iid, service_tag="svc")
    row, inst = get(Lease, got.lease_id), get(Instance, iid)
    assert row.state == "returned" and row.ended_at is not None and row.end_reason == "returned"
    assert (inst.lease_id, inst.desired_state, inst.draining) == (None, "deleted", True)
    names = [n for n, _ in effects_log]
    assert names == ["delete_instance", "publish_event", "reconcile_pool"]
    assert effects_log[1][1]["kind"] == ev.KIND_RETURNED
    with pytest.raises(FailedPrecondition, match="already ended: returned"):
        call(leases.return_lease, org.org_id, iid, service_tag="svc")
    with pytest.raises(FailedPrecondition):
        call(leases.get_lease, org.org_id, iid)
    with pytest.raises(FailedPrecondition):
        call(leases.extend_to, org.org_id, iid, utcnow() + timedelta(minutes=1), service_tag="svc")
    # The returned instance is never claimed again.
    assert isinstance(lease(org.org_id, reservation_id="x"), leases.Queued)


def test_unknown_and_foreign_instances_are_not_found(org):
    pool = make_pool(org.org_id)
    [iid] = add_ready(pool)
    lease(org.org_id)
    other = tenancy_org("other")
    for fn, extra in ((leases.get_lease, {}), (leases.return_lease, {}),
                      (leases.extend_to, {"to": utcnow() + timedelta(minutes=1)})):
        args = (extra["to"],) if extra else ()
        with pytest.raises(NotFound):
            call(fn, org.org_id, "00000000-0000-0000-0000-000000000000", *args)
        with pytest.raises(NotFound):
            call(fn, other, iid, *args)
    [free] = add_ready(pool)
    with pytest.raises(NotFound, match="never leased"):
        call(leases.get_lease, org.org_id, free)


def recycled(pool, iid: str) -> None:
    """The provider reset the returned instance (operations.recycle): the applier gets `recycled`."""
    with session_scope() as s:
        instances.apply_event(ev.InstanceEvent(instance_id=iid, pool_id=pool.id, kind=ev.KIND_RECYCLED), session=s)


def test_reuse_pool_recycles_the_instance_to_the_next_claim_or_the_oldest_reservation(org, effects_log):
    pool = make_pool(org.org_id, reuse=True)
    [iid] = add_ready(pool)
    first = lease(org.org_id, service_tag="a")
    call(leases.return_lease, org.org_id, iid, service_tag="a")
    inst = get(Instance, iid)
    # Out of the ready set until its provider has reset it (recycle_instance, then `recycled` applied).
    assert (inst.lease_id, inst.desired_state, inst.draining) == (None, "running", True)
    assert "delete_instance" not in [n for n, _ in effects_log]
    assert ("recycle_instance", {"instance_id": iid}) in effects_log
    recycled(pool, iid)
    assert get(Instance, iid).idle_since
    second = lease(org.org_id, service_tag="b")
    assert second.instance_id == iid and second.lease_id != first.lease_id
    queued = lease(org.org_id, service_tag="c", reservation_id="waiting-c")
    assert isinstance(queued, leases.Queued)
    call(leases.return_lease, org.org_id, iid, service_tag="b")
    assert call(reservations.outcome, org.org_id, queued.reservation_id) is None  # not handed over dirty
    recycled(pool, iid)
    served = call(reservations.outcome, org.org_id, queued.reservation_id)
    assert served.instance_id == iid and served.service_tag == "c"


def test_a_lease_past_its_expiry_is_never_served_and_the_sweep_ends_it(org, effects_log):
    pool = make_pool(org.org_id, lease_default_seconds=60)
    [iid] = add_ready(pool)
    now = utcnow()
    got = lease(org.org_id, service_tag="svc", now=now)
    later = now + timedelta(seconds=61)
    with pytest.raises(FailedPrecondition, match="expired"):
        call(leases.get_lease, org.org_id, iid, now=later)
    with pytest.raises(FailedPrecondition, match="expired"):
        call(leases.extend_to, org.org_id, iid, later + timedelta(minutes=1), service_tag="svc", now=later)
    with pytest.raises(FailedPrecondition, match="expired"):
        call(leases.return_lease, org.org_id, iid, service_tag="svc", now=later)
    assert get(Lease, got.lease_id).state == "active"  # the sweep has not run yet
    with session_scope() as s:
        assert leases.expire_due(now + timedelta(seconds=59), 100, session=s) == 0
    effects_log.clear()
    with session_scope() as s:
        assert leases.expire_due(later, 100, session=s) == 1
    row, inst = get(Lease, got.lease_id), get(Instance, iid)
    assert (row.state, row.end_reason) == ("expired", "expired")
    assert (inst.lease_id, inst.desired_state) == (None, "deleted")
    assert ("delete_instance", {"instance_id": iid}) in effects_log
    with session_scope() as s:
        assert leases.expire_due(later, 100, session=s) == 0


def test_expiry_sweep_is_bounded_and_recycles_on_reuse_pools(org):
    pool = make_pool(org.org_id, reuse=True, lease_default_seconds=10)
    ids = add_ready(pool, 5)
    now = utcnow()
    for _ in ids:
        lease(org.org_id, now=now)
    with session_scope() as s:
        assert leases.expire_due(now + timedelta(seconds=11), 3, session=s) == 3
    with session_scope() as s:
        assert leases.expire_due(now + timedelta(seconds=11), 3, session=s) == 2
    assert all(get(Instance, i).lease_id is None and get(Instance, i).desired_state == "running" for i in ids)
    assert {r.state for r in leases_of(pool.id)} == {"expired"}


def test_reject_policy_is_resource_exhausted_and_reserve_policy_queues_an_automatic_reservation(org):
    make_pool(org.org_id, "strict", empty_policy="reject")
    make_pool(org.org_id, "patient")
    with pytest.raises(ResourceExhausted, match="reject"):
        lease(org.org_id, "strict")
    # A reservation id always queues, whatever the policy.
    assert isinstance(lease(org.org_id, "strict", reservation_id="r"), leases.Queued)
    auto = lease(org.org_id, "patient")
    assert isinstance(auto, leases.Queued) and auto.automatic and auto.client_id.startswith("auto-")
    assert call(reservations.cancel, org.org_id, auto.reservation_id) is None


def test_cold_policy_creates_and_leases_a_booting_instance_up_to_max_size(org, effects_log):
    with session_scope() as s:
        runner = tenancy.create_runner(org.org_id, "r", "fake", {}, session=s)
    make_pool(org.org_id, "cold", runner_id=runner.id, empty_policy="cold", max_size=2, template={"zone": "z9"})
    effects_log.clear()
    got = lease(org.org_id, "cold", service_tag="svc")
    inst = get(Instance, got.instance_id)
    assert (inst.state, inst.lease_id, inst.provider, got.zone) == ("requested", got.lease_id, "fake", "z9")
    assert ("provision_instance", {"instance_id": inst.id}) in effects_log
    lease(org.org_id, "cold")
    with pytest.raises(ResourceExhausted, match="cold"):
        lease(org.org_id, "cold")


def test_list_leases_and_leasable_pools(org):
    pool = make_pool(org.org_id, "b-pool", labels={"region": "eu", "kind": "spoofed"})
    make_pool(org.org_id, "a-pool")
    add_ready(pool, 2)
    one = lease(org.org_id, "b-pool", service_tag="x")
    two = lease(org.org_id, "b-pool", service_tag="y")
    call(leases.return_lease, org.org_id, one.instance_id, service_tag="x")
    with session_scope() as s:
        active = leases.list_leases(org.org_id, session=s)
        everything = leases.list_leases(org.org_id, session=s, include_ended=True)
        listed = leases.leasable_pools(org.org_id, session=s)
    assert [v.instance_id for v in active] == [two.instance_id]
    assert {v.state for v in everything} == {"active", "returned"}
    assert listed == [("a-pool", [("kind", "named")]), ("b-pool", [("region", "eu"), ("kind", "named")])]
