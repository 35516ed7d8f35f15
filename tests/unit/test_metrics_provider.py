"""Provider calls are timed and their errors counted by provider, operation and kind, for every adapter
(the base class wraps its subclasses' contract methods), and a call made inside another is counted once."""
from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from workers.providers.base import InstanceSpec, Observed, Provider, ProviderPermanent, ProviderTransient
from workers.providers.registry import known_providers, provider_class


class Scripted(Provider):
    """Answers from a script: each call pops the next outcome (an Observed, None, or an exception)."""

    name = "scripted"

    def __init__(self, *outcomes: object) -> None:
        super().__init__()
        self.outcomes = list(outcomes)

    def _next(self):  # type: ignore[no-untyped-def]
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def create(self, spec, start):  # type: ignore[no-untyped-def]
        return self._next()

    def start(self, ref):  # type: ignore[no-untyped-def]
        return self._next()

    def stop(self, ref):  # type: ignore[no-untyped-def]
        return self._next()

    def delete(self, ref):  # type: ignore[no-untyped-def]
        return self._next()

    def get(self, ref):  # type: ignore[no-untyped-def]
        return self._next()

    def list(self, owner_tag=None):  # type: ignore[no-untyped-def]
        return self._next()

    def logs(self, ref, lines=100):  # type: ignore[no-untyped-def]
        return self._next()


def calls(op: str) -> float:
    return REGISTRY.get_sample_value("warmpool_provider_call_seconds_count", {"provider": "scripted", "operation": op}) or 0.0


def errors(op: str, kind: str) -> float:
    return REGISTRY.get_sample_value("warmpool_provider_errors_total",
                                     {"provider": "scripted", "operation": op, "kind": kind}) or 0.0


def test_calls_and_errors_are_counted_by_operation_and_kind():
    ok = Observed(ref="r1", state="provisioning")
    p = Scripted(ok, ProviderTransient("rate limited"), ProviderPermanent("bad image"), RuntimeError("bug"), None)
    before = {op: calls(op) for op in ("create", "start", "stop", "delete")}
    kinds = {k: errors(op, k) for op, k in (("start", "transient"), ("stop", "permanent"), ("delete", "unexpected"))}
    assert p.create(InstanceSpec(instance_id="i", pool_id="p", owner="o"), start=True) == ok
    with pytest.raises(ProviderTransient):
        p.start("r1")
    with pytest.raises(ProviderPermanent):
        p.stop("r1")
    with pytest.raises(RuntimeError):
        p.delete("r1")
    assert {op: calls(op) - before[op] for op in before} == {"create": 1, "start": 1, "stop": 1, "delete": 1}
    assert {k: errors(op, k) - kinds[k] for op, k in (("start", "transient"), ("stop", "permanent"),
                                                        ("delete", "unexpected"))} == {
        "transient": 1, "permanent": 1, "unexpected": 1}
    assert errors("create", "transient") == 0


def test_a_call_inside_another_is_counted_once():
    # The default reset() calls get(): one reset, no get.
    p = Scripted(Observed(ref="r1", state="running"))
    before = calls("reset"), calls("get")
    p.reset("r1")
    assert (calls("reset") - before[0], calls("get") - before[1]) == (1, 0)


@pytest.mark.parametrize("name", sorted(known_providers()))
def test_every_installed_adapter_is_timed(name):
    try:
        adapter = provider_class(name)
    except ImportError:  # its SDK is an extra that is not installed: no calls to time
        return
    for op in Provider.TIMED:
        fn = getattr(adapter, op, None)
        if fn is not None:
            assert getattr(fn, "__timed_provider_call__", False), f"{adapter.__name__}.{op} is not timed"
