"""The lease rules that need no database: granted durations, request checks, wait budgets, error mapping,
and the CLI's duration parsing and tables."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from connectrpc.code import Code
from google.protobuf.timestamp_pb2 import Timestamp

from app.api import grpc_unary, vmpool, vmpool_background
from app.api.connect_common import to_connect_error
from app.api.core import GRPC, map_error
from app.cli_leases import human_until, parse_duration, table
from app.domain import errors
from app.domain.leases import LeaseView, grant_expiry
from app.models import Pool
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def pool(default: int = 600, maximum: int = 3600) -> Pool:
    return Pool(organization_id="o", name="p", lease_default_seconds=default, lease_max_seconds=maximum)


@pytest.mark.parametrize(("wished", "granted"), [
    (None, NOW + timedelta(seconds=600)),
    (NOW, NOW + timedelta(seconds=600)),
    (NOW - timedelta(days=400), NOW + timedelta(seconds=600)),
    (NOW + timedelta(minutes=1), NOW + timedelta(minutes=1)),
    (NOW + timedelta(hours=1), NOW + timedelta(hours=1)),
    (NOW + timedelta(hours=1, seconds=1), NOW + timedelta(hours=1)),
    (NOW + timedelta(days=365), NOW + timedelta(hours=1)),
])
def test_grant_expiry(wished, granted):
    assert grant_expiry(pool(), wished, NOW) == granted


def test_a_default_longer_than_the_maximum_is_clamped_too():
    assert grant_expiry(pool(default=7200, maximum=60), None, NOW) == NOW + timedelta(seconds=60)


def ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def test_wished_time_unset_zero_and_ancient_mean_server_default():
    assert vmpool.wished_time(pb.LeaseRequest(), "expires") is None
    assert vmpool.wished_time(pb.LeaseRequest(expires=ts(0)), "expires") is None
    inctl_zero = Timestamp()
    inctl_zero.FromDatetime(datetime(1, 1, 1, tzinfo=UTC))  # what inctl sends for "no duration"
    assert vmpool.wished_time(pb.LeaseRequest(expires=inctl_zero), "expires") is None
    when = vmpool.wished_time(pb.LeaseRequest(expires=ts(1_900_000_000, 5000)), "expires")
    assert when == datetime.fromtimestamp(1_900_000_000, UTC) + timedelta(microseconds=5)


@pytest.mark.parametrize("bad", [ts(10**15), ts(100, -1), ts(100, 10**9), ts(300_000_000_000)])
def test_wished_time_out_of_range_is_invalid_argument(bad):
    with pytest.raises(errors.InvalidArgument):
        vmpool.wished_time(pb.ExtendToRequest(to=bad), "to")


def test_text_checks():
    assert vmpool.text("pool-a", "pool") == "pool-a"
    assert vmpool.text("", "pool") == ""
    with pytest.raises(errors.InvalidArgument, match="required"):
        vmpool.text("", "instance", required=True)
    with pytest.raises(errors.InvalidArgument, match="at most 200"):
        vmpool.text("x" * 201, "pool")
    with pytest.raises(errors.InvalidArgument, match="control"):
        vmpool.text("a\nb", "service_tag")


@pytest.mark.parametrize(("remaining", "budget"), [(None, 20.0), (100.0, 20.0), (10.0, 9.5), (2.5, 2.0), (1.0, 0.7),
                                                   (0.5, 0.35), (0.0, 0.0), (-3.0, 0.0)])
def test_wait_budget_answers_before_the_callers_deadline(remaining, budget, monkeypatch):
    monkeypatch.setattr(vmpool, "get_settings", lambda: type("S", (), {"lease_wait_seconds": 20.0})())
    assert vmpool.wait_budget(remaining) == pytest.approx(budget)


def test_lease_message():
    view = LeaseView(instance_id="i-1", pool_name="p", expires_at=NOW, zone="z")
    msg = vmpool.lease_message(view)
    assert (msg.instance, msg.pool, msg.zone, msg.expires.ToDatetime(tzinfo=UTC)) == ("i-1", "p", "z", NOW)


@pytest.mark.parametrize("dt", [
    NOW, NOW.replace(microsecond=0), NOW.replace(microsecond=123456), NOW.replace(tzinfo=None),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 29, 2, 30, 0, 5, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
])
def test_timestamp_parts_are_protobufs_from_datetime(dt):
    from google.protobuf.timestamp_pb2 import Timestamp

    from app.api.connect_common import timestamp_parts

    ts = Timestamp()
    ts.FromDatetime(dt)
    assert timestamp_parts(dt) == (ts.seconds, ts.nanos)


def test_timestamp_json_is_protobufs_json():
    from google.protobuf import json_format
    from google.protobuf.timestamp_pb2 import Timestamp

    from app.api.vmpool_connect import timestamp_json

    for seconds, nanos in [(0, 0), (1_800_000_000, 0), (1_800_000_000, 5_000_000), (1_800_000_000, 123_456_000),
                           (1_800_000_000, 1), (-1, 999_999_999), (1_800_000_000, 5_000_000)]:  # again: cached
        assert timestamp_json(seconds, nanos) == json_format.MessageToDict(Timestamp(seconds=seconds, nanos=nanos))


DOMAIN_ERRORS = [c for c in vars(errors).values()
                 if isinstance(c, type) and issubclass(c, errors.DomainError) and c is not errors.DomainError]


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_has_a_real_status_on_both_transports(error):
    assert map_error(error("x"), GRPC).code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    assert to_connect_error(error("x")).code not in (Code.UNKNOWN, Code.INTERNAL)


def test_grpc_parser_turns_bad_bytes_into_a_marker_not_an_exception():
    parse = grpc_unary._parser(pb.LeaseRequest)
    assert isinstance(parse(b"\xff\xff\xff"), grpc_unary._Malformed)
    assert parse(pb.LeaseRequest(pool="p").SerializeToString()).pool == "p"


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("2d", 172800),
                                               ("600", 600), ("1H", 3600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "30x", "m30", "1h 30m", "-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_table_and_human_times():
    out = table(("A", "LONGER"), [["xyz", "1"], ["q", "22"]])
    assert out.splitlines() == ["A    LONGER", "xyz  1", "q    22"]
    assert human_until(NOW + timedelta(minutes=29, seconds=59), NOW).endswith("(in 29m59s)")
    assert human_until(NOW + timedelta(hours=2, minutes=5), NOW).endswith("(in 2h05m)")
    assert human_until(NOW - timedelta(seconds=1), NOW).endswith("(past)")


def test_after_commit_sends_events_at_once_and_one_reconcile_per_burst():
    import time

    from app.domain import effects

    sent: list[tuple[str, dict, float]] = []
    previous = effects.set_dispatcher(lambda name, payload: sent.append((name, payload, time.monotonic())))
    try:
        after = vmpool_background.AfterCommit(delay=0.2)
        began = time.monotonic()
        for i in range(50):
            after.submit([("publish_event", {"seq": i}), ("reconcile_pool", {"pool_id": "p"})])
        after.submit([("reconcile_pool", {"pool_id": "q"})])
        deadline = time.monotonic() + 5
        while len([s for s in sent if s[0] == "reconcile_pool"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        events = [s for s in sent if s[0] == "publish_event"]
        reconciles = [s for s in sent if s[0] == "reconcile_pool"]
        assert [p["seq"] for _, p, _ in events] == list(range(50))
        assert sorted(p["pool_id"] for _, p, _ in reconciles) == ["p", "q"]  # one per pool for the burst
        assert all(at - began >= 0.2 for _, _, at in reconciles)
        assert all(at - began < 0.2 for _, _, at in events)
        # Once sent, a new commit gets its own; flush sends a held one at once.
        after.submit([("reconcile_pool", {"pool_id": "p"})])
        assert after.flush()
        assert [p["pool_id"] for n, p, _ in sent if n == "reconcile_pool"].count("p") == 2
    finally:
        effects.set_dispatcher(previous)
