"""Instance events as the domain knows them: their schema, and the names of the pub/sub channels that
wake listeners. No Redis here: app.events publishes them (after commit, through app.domain.effects).

Providers' observations (a state change) and the API's assignments (leased, returned) travel as one
kind of message. The event applier (workers/events.py) is the only consumer that writes observed
state. Consumers ignore unknown fields, so the schema can grow.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.domain.states import InstanceState

KIND_STATE = "state"  # a provider observed `state` for the instance
KIND_LEASED = "leased"  # the instance was claimed by a lease (assignment changed)
KIND_RETURNED = "returned"  # a lease ended (returned or expired)
KIND_RECYCLED = "recycled"  # a returned instance of a `reuse` pool was reset by its provider: ready again
KIND_POOL = "pool"  # something about the pool changed; recount its status
KIND_FAILURE = "failure"  # a provider call failed transiently (message says why); counts toward DEGRADED
KIND_SUCCESS = "success"  # a provider call succeeded without a state change worth an event; clears failures
KIND_SEEN = "seen"  # a re-list saw the instance running at `epoch` (app.domain.epochs): it may be handed out again


@dataclass(frozen=True)
class InstanceEvent:
    instance_id: str
    pool_id: str
    kind: str = KIND_STATE
    state: str = ""
    ref: str = ""
    seq: int = 0
    """Per-instance order, issued by the database (workers.operations.next_seq; app.domain.instances.issue_seq) when the
    observation is published; the applier compares on it and never on a clock. A state event applies if
    newer than the last one applied, or if it only moves the instance forward within one leg of its
    lifecycle. Other kinds ignore it."""
    message: str = ""
    address: str = ""
    boot_ms: int | None = None
    epoch: int | None = None
    """The runner epoch the observation was made in (app.domain.epochs); None: the current one."""
    observed_at: float = field(default_factory=lambda: time.time())  # informational: never used to order
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_fields(self) -> dict[str, str]:
        # The fields are plain values: the instance's own dict is what asdict() would deep-copy.
        return {"data": json.dumps(vars(self), separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> InstanceEvent:
        """Decode and validate an entry (unknown fields ignored); raises MalformedEvent if it is not one."""
        raw = fields.get(b"data", fields.get("data"))
        if raw is None:
            raise MalformedEvent("no `data` field")
        try:
            wire = _WireEvent.model_validate_json(raw)
        except ValidationError as exc:
            raise MalformedEvent(_first_problem(exc)) from None
        return cls(**wire.model_dump())


POOL_ONLY = frozenset({KIND_LEASED, KIND_RETURNED})
"""Kinds the applier reads for their pool alone (app.domain.observations: the pool is asked for a pass, which
recounts it); the instance they name is informational."""


def one_per_pool(batch: list[InstanceEvent]) -> list[InstanceEvent]:
    """A burst of events as the applier needs them: every event, except that a POOL_ONLY kind goes once per
    (pool, kind), its first. A burst of a thousand leases of one pool is one stream entry, not a thousand
    the applier would each decode only to ask that pool for the same pass. Order is kept."""
    seen: set[tuple[str, str]] = set()
    out: list[InstanceEvent] = []
    for event in batch:
        if event.kind in POOL_ONLY:
            key = (event.pool_id, event.kind)
            if key in seen:
                continue
            seen.add(key)
        out.append(event)
    return out


class MalformedEvent(ValueError):
    """A stream entry that is not a valid instance event: the applier dead-letters it at once."""


_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
_STATES = frozenset(s.value for s in InstanceState)


class _WireEvent(BaseModel):
    """The typed shape of an event on the stream, checked at decode so a malformed entry never reaches
    the database (where it would fail every retry and hold up its batch)."""

    model_config = ConfigDict(extra="ignore")

    instance_id: str = Field(pattern=_ID)
    pool_id: str = Field(pattern=_ID)
    kind: str = Field(KIND_STATE, pattern=r"^[a-z_]{1,32}$")  # a kind this applier does not know is ignored by it
    state: str = ""
    ref: str = Field("", max_length=512)
    seq: int = Field(default_factory=lambda: time.time_ns() // 1000, ge=0, le=2**63 - 1)
    message: str = Field("", max_length=10_000)
    address: str = Field("", max_length=512)
    boot_ms: int | None = Field(None, ge=0, le=2**31 - 1)
    epoch: int | None = Field(None, ge=0, le=2**31 - 1)
    observed_at: float = Field(default_factory=time.time, allow_inf_nan=False)
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=_ID)

    @field_validator("state")
    @classmethod
    def _known_state(cls, value: str) -> str:
        if value and value not in _STATES:
            raise ValueError(f"unknown instance state {value!r}")
        return value


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "entry"
    return f"{where}: {err.get('msg', 'invalid')}"


def reservation_channel(reservation_id: str) -> str:
    return f"warmpool:reservation:{reservation_id}"


def pool_channel(organization_id: str, pool_id: str) -> str:
    """Where a pool's status changes are announced: under its organization, so a listener subscribes to
    its own organization's pools only (SSE /v1/events) and never sees another's."""
    return f"warmpool:org:{organization_id}:pool:{pool_id}"


def organization_pools_pattern(organization_id: str) -> str:
    """The PSUBSCRIBE pattern of every pool_channel of one organization (its id's glob characters, if it
    ever had any, escaped: a pattern matches that organization and no other)."""
    return pool_channel(re.sub(r"([*?\[\]\\])", r"\\\1", organization_id), "*")
