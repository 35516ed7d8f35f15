"""The Gitpod façade's size and id rules, checked on the helpers and handlers without any service."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from app.api import gitpod
from app.api.connect_common import optional_uuids, require_uuid
from app.models import Pool
from proto.gitpod.v1 import messages_pb2 as pb

P, E = str(uuid.uuid4()), str(uuid.uuid4())


def create_req(**sizes: int) -> pb.CreateWarmPoolRequest:
    return pb.CreateWarmPoolRequest(project_id=P, environment_class_id=E, **sizes)


def update_req(**sizes: int) -> pb.UpdateWarmPoolRequest:
    return pb.UpdateWarmPoolRequest(warm_pool_id=str(uuid.uuid4()), **sizes)


def invalid(fn: Any, *args: Any, match: str, **kwargs: Any) -> ConnectError:
    with pytest.raises(ConnectError, match=match) as info:
        fn(*args, **kwargs)
    assert info.value.code == Code.INVALID_ARGUMENT
    return info.value


# ---- _sizes: the bounds ----------------------------------------------------------------------

@pytest.mark.parametrize("creating", [True, False])
@pytest.mark.parametrize("min_size", [0, 1, 19, 20])
def test_min_size_accepts_0_to_20(creating, min_size):
    req = (create_req if creating else update_req)(min_size=min_size, max_size=20)
    assert gitpod._sizes(req, creating=creating) == (min_size, 20)


@pytest.mark.parametrize("creating", [True, False])
@pytest.mark.parametrize("min_size", [-1, 21, 1000])
def test_min_size_outside_0_to_20_is_invalid(creating, min_size):
    req = (create_req if creating else update_req)(min_size=min_size, max_size=20)
    invalid(gitpod._sizes, req, creating=creating, match=f"min_size must be between 0 and 20, got {min_size}")


@pytest.mark.parametrize("creating", [True, False])
@pytest.mark.parametrize("max_size", [1, 20])
def test_max_size_accepts_1_to_20(creating, max_size):
    req = (create_req if creating else update_req)(max_size=max_size)
    assert gitpod._sizes(req, creating=creating) == (None, max_size)


@pytest.mark.parametrize("creating", [True, False])
@pytest.mark.parametrize("max_size", [0, -3, 21])
def test_max_size_outside_1_to_20_is_invalid(creating, max_size):
    req = (create_req if creating else update_req)(max_size=max_size)
    invalid(gitpod._sizes, req, creating=creating, match=f"max_size must be between 1 and 20, got {max_size}")


@pytest.mark.parametrize("creating", [True, False])
def test_min_above_max_is_invalid(creating):
    req = (create_req if creating else update_req)(min_size=5, max_size=4)
    invalid(gitpod._sizes, req, creating=creating, match=r"min_size must be <= max_size \(got min_size=5, max_size=4\)")


@pytest.mark.parametrize("creating", [True, False])
def test_min_equal_max_is_fine(creating):
    req = (create_req if creating else update_req)(min_size=7, max_size=7)
    assert gitpod._sizes(req, creating=creating) == (7, 7)


# ---- _sizes: the deprecated desired_size -----------------------------------------------------

@pytest.mark.parametrize("creating", [True, False])
@pytest.mark.parametrize("desired", [1, 4, 20])
def test_desired_size_sets_min_and_max(creating, desired):
    req = (create_req if creating else update_req)(desired_size=desired)
    assert gitpod._sizes(req, creating=creating) == (desired, desired)


@pytest.mark.parametrize("creating", [True, False])
@pytest.mark.parametrize("desired", [-1, 21])
def test_desired_size_outside_1_to_20_is_invalid(creating, desired):
    req = (create_req if creating else update_req)(desired_size=desired)
    invalid(gitpod._sizes, req, creating=creating, match=f"desired_size must be between 1 and 20, got {desired}")


def test_update_with_desired_size_zero_is_given_and_invalid():
    # On UpdateWarmPoolRequest desired_size is `optional`: an explicit 0 is a (bad) value, not absence.
    invalid(gitpod._sizes, update_req(desired_size=0), creating=False, match="desired_size must be between 1 and 20, got 0")


@pytest.mark.parametrize("creating", [True, False])
@pytest.mark.parametrize("other", [{"min_size": 2}, {"max_size": 2}, {"min_size": 0}, {"min_size": 1, "max_size": 3}])
def test_desired_size_with_min_or_max_is_invalid(creating, other):
    req = (create_req if creating else update_req)(desired_size=2, **other)
    invalid(gitpod._sizes, req, creating=creating, match="desired_size is deprecated and cannot be combined")


# ---- presence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("creating", [True, False])
def test_min_size_zero_is_given_not_absent(creating):
    req = (create_req if creating else update_req)(min_size=0)
    assert req.HasField("min_size")
    assert gitpod._sizes(req, creating=creating) == (0, None)


@pytest.mark.parametrize("creating", [True, False])
def test_nothing_given_is_none_none(creating):
    req = create_req() if creating else update_req()
    assert gitpod._sizes(req, creating=creating) == (None, None)


def test_cap_comes_from_settings(monkeypatch):
    from config.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("WARMPOOL_GITPOD__MAX_POOL_SIZE", "5")
    try:
        invalid(gitpod._sizes, create_req(max_size=6), creating=True, match="max_size must be between 1 and 5, got 6")
        assert gitpod._sizes(create_req(max_size=5), creating=True) == (None, 5)
    finally:
        monkeypatch.delenv("WARMPOOL_GITPOD__MAX_POOL_SIZE")
        get_settings.cache_clear()


# ---- the CreateWarmPool handler: defaults and what it hands the domain ------------------------

class FakeCall:
    """Stands in for connect_common.call: records the domain call, answers with a Pool row."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple, dict]] = []

    async def __call__(self, ctx: Any, fn: Any, *args: Any, **kwargs: Any) -> Pool:
        self.calls.append((fn, args, kwargs))
        return Pool(id=str(uuid.uuid4()), organization_id=str(uuid.uuid4()), name="p", project_id=P,
                    environment_class_id=E, min_size=kwargs.get("min_size", 0), max_size=kwargs.get("max_size", 1))


@pytest.fixture
def fake_call(monkeypatch) -> FakeCall:
    fake = FakeCall()
    monkeypatch.setattr(gitpod, "call", fake)
    return fake


def create(req: pb.CreateWarmPoolRequest) -> pb.CreateWarmPoolResponse:
    return asyncio.run(gitpod.PrebuildService().create_warm_pool(req, None))


@pytest.mark.parametrize("sizes, expected", [
    ({"min_size": 1, "max_size": 3}, (1, 3)),
    ({"desired_size": 4}, (4, 4)),
    ({"min_size": 0}, (0, 1)),     # max defaults to at least 1
    ({"min_size": 6}, (6, 6)),     # max follows a lone min
    ({"max_size": 5}, (0, 5)),     # min defaults to 0 (full scale-down)
    ({"min_size": 0, "max_size": 1}, (0, 1)),
])
def test_create_hands_the_domain_the_resolved_sizes(fake_call, sizes, expected):
    resp = create(create_req(**sizes))
    fn, args, kwargs = fake_call.calls[0]
    assert fn.__name__ == "create_warm_pool" and args == (P, E)
    assert (kwargs["min_size"], kwargs["max_size"]) == expected
    assert (resp.warm_pool.spec.min_size, resp.warm_pool.spec.max_size) == expected


@pytest.mark.parametrize("sizes, match", [
    ({}, "give min_size and max_size"),
    ({"min_size": 3, "max_size": 2}, "min_size must be <= max_size"),
    ({"min_size": 21}, "min_size must be between 0 and 20"),
    ({"max_size": 0}, "max_size must be between 1 and 20"),
    ({"desired_size": 2, "max_size": 2}, "cannot be combined"),
])
def test_create_rejects_bad_sizes_before_touching_the_domain(fake_call, sizes, match):
    invalid(create, create_req(**sizes), match=match)
    assert fake_call.calls == []


@pytest.mark.parametrize("field, value", [("project_id", ""), ("project_id", "not-a-uuid"),
                                          ("environment_class_id", "1234"), ("environment_class_id", "")])
def test_create_needs_uuid_ids(fake_call, field, value):
    req = create_req(min_size=1, max_size=2)
    setattr(req, field, value)
    invalid(create, req, match=field)
    assert fake_call.calls == []


def test_update_passes_absent_sizes_as_none(fake_call):
    req = update_req(max_size=9)
    asyncio.run(gitpod.PrebuildService().update_warm_pool(req, None))
    fn, args, _ = fake_call.calls[0]
    assert args == (req.warm_pool_id, None, 9)


@pytest.mark.parametrize("method, req", [
    ("get_warm_pool", pb.GetWarmPoolRequest(warm_pool_id="nope")),
    ("delete_warm_pool", pb.DeleteWarmPoolRequest(warm_pool_id="")),
    ("update_warm_pool", pb.UpdateWarmPoolRequest(warm_pool_id="123", min_size=1)),
    ("list_warm_pools", pb.ListWarmPoolsRequest(filter=pb.ListWarmPoolsRequest.Filter(project_ids=["x"]))),
])
def test_other_handlers_reject_non_uuid_ids(fake_call, method, req):
    invalid(lambda: asyncio.run(getattr(gitpod.PrebuildService(), method)(req, None)), match="UUID|required")
    assert fake_call.calls == []


# ---- connect_common id helpers -----------------------------------------------------------------

def test_require_uuid_normalises_and_rejects():
    u = uuid.uuid4()
    assert require_uuid(str(u).upper(), "x") == str(u)
    invalid(require_uuid, "", "warm_pool_id", match="warm_pool_id is required")
    invalid(require_uuid, "zzz", "warm_pool_id", match="warm_pool_id must be a UUID, got 'zzz'")


def test_optional_uuids_limit():
    ids = [str(uuid.uuid4()) for _ in range(26)]
    assert optional_uuids(ids[:25], "f") == ids[:25]
    invalid(optional_uuids, ids, "filter.project_ids", match="at most 25 ids, got 26")
