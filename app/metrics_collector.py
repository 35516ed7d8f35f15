"""Gauges computed at scrape time, never stored in the process: per-pool state from the database (one
query) and the event applier's lag from Redis (two round trips). Built per scrape for one view: a
tenant's organization, or (None) every organization."""
from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import UTC, datetime

import redis
import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily

from app.db import get_engine
from app.domain.claims import READY
from app.domain.states import PoolPhase, ReservationState
from app.models import Instance, Organization, Pool, Reservation
from config.settings import get_settings

log = logging.getLogger(__name__)

PER_POOL = ["organization", "pool"]
LIVE_PHASES = [p for p in PoolPhase if p != PoolPhase.DELETED]


def pool_rows(org_id: str | None) -> list[sa.Row]:
    """Every pool not yet deleted (of one organization, or all) with its phase, the applier's counters, its
    ready instances counted now (the partial index ix_instances_ready) and its waiting reservations."""
    ready = (sa.select(Instance.pool_id, sa.func.count().label("n")).where(READY)
             .group_by(Instance.pool_id).subquery())
    waiting = (sa.select(Reservation.pool_id, sa.func.count().label("n"),
                         sa.func.min(Reservation.created_at).label("oldest"))
               .where(Reservation.state == str(ReservationState.WAITING))
               .group_by(Reservation.pool_id).subquery())
    stmt = (sa.select(Organization.name.label("org"), Pool.name, Pool.phase, Pool.deleted_at, Pool.desired_size,
                      Pool.leased_instances, Pool.stopped_instances, sa.func.coalesce(ready.c.n, 0).label("ready"),
                      sa.func.coalesce(waiting.c.n, 0).label("waiting"), waiting.c.oldest)
            .join(Organization, Organization.id == Pool.organization_id)
            .outerjoin(ready, ready.c.pool_id == Pool.id)
            .outerjoin(waiting, waiting.c.pool_id == Pool.id)
            .where(Pool.phase != str(PoolPhase.DELETED))
            .order_by(Organization.name, Pool.name))
    if org_id is not None:
        stmt = stmt.where(Pool.organization_id == org_id)
    with get_engine().connect() as conn:
        return list(conn.execute(stmt))


def _age(oldest: datetime | None, now: datetime) -> float:
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # SQLite hands back naive UTC
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (now - oldest).total_seconds())


class PoolCollector:
    """Per pool: ready, leased, stopped and desired instances, the phase (one series per phase, 1 for the
    current one), waiting reservations and the age of the oldest; per organization: pools by phase and
    ready instances. Leased and stopped are the event applier's counters (as of its last recount); ready
    is counted at scrape time, so an exhausted pool shows at once."""

    def __init__(self, org_id: str | None) -> None:
        self.org_id = org_id

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = pool_rows(self.org_id)
        now = datetime.now(UTC)
        g = {name: GaugeMetricFamily(f"warmpool_pool_{name}", doc, labels=PER_POOL) for name, doc in (
            ("ready_instances", "Instances of the pool ready to lease (running, free, not draining)"),
            ("leased_instances", "Instances of the pool held by a lease (the applier's count)"),
            ("stopped_instances", "Stopped instances kept behind the running ones (the applier's count)"),
            ("desired_instances", "Running target chosen by the autoscaler (status.desired_size)"),
            ("waiting_reservations", "Reservations queued on the pool"),
            ("oldest_reservation_age_seconds", "Age of the pool's oldest queued reservation (0: none waiting)"),
        )}
        phase = GaugeMetricFamily("warmpool_pool_phase", "The pool's phase: 1 for the current one, 0 for the others",
                                  labels=[*PER_POOL, "phase"])
        pools = GaugeMetricFamily("warmpool_pools", "Pools by organization and phase", labels=["organization", "phase"])
        ready_org = GaugeMetricFamily("warmpool_ready_instances", "Ready (leasable) instances by organization",
                                      labels=["organization"])
        by_phase: Tally[tuple[str, str]] = Tally()
        ready_by_org: Tally[str] = Tally()
        for r in rows:
            by_phase[(r.org, r.phase)] += 1
            ready_by_org[r.org] += r.ready
            if r.deleted_at is not None:  # being deleted: its name may already belong to a new pool
                continue
            labels = [r.org, r.name]
            for name, value in (("ready_instances", r.ready), ("leased_instances", r.leased_instances),
                                ("stopped_instances", r.stopped_instances), ("desired_instances", r.desired_size),
                                ("waiting_reservations", r.waiting),
                                ("oldest_reservation_age_seconds", _age(r.oldest, now))):
                g[name].add_metric(labels, value)
            for p in LIVE_PHASES:
                phase.add_metric([*labels, p.value], 1.0 if r.phase == p else 0.0)
        for (org, ph), n in sorted(by_phase.items()):
            pools.add_metric([org, ph], n)
        for org, n in sorted(ready_by_org.items()):
            ready_org.add_metric([org], n)
        yield from g.values()
        yield phase
        yield pools
        yield ready_org


def _entry_ms(entry_id: bytes | str | None) -> int | None:
    if not entry_id:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def applier_lag(client: redis.Redis) -> dict[str, float]:
    """The event stream as the appliers see it: its length, entries delivered but not acknowledged
    (pending), entries not yet delivered, the age of the oldest entry not acknowledged, dead letters."""
    s = get_settings().engine
    stream, group = s.events_stream, s.events_group
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.xlen(stream)
    pipe.xlen(f"{stream}:dead")
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, group)
    now, length, dead, groups, pending = pipe.execute(raise_on_error=False)
    if isinstance(now, Exception):
        raise now
    now_ms = now[0] * 1000 + now[1] // 1000
    ours = next((g for g in groups if _text(g.get("name")) == group), None) if isinstance(groups, list) else None
    out = {"stream_length": float(length or 0), "dead_letters": float(dead or 0), "pending": 0.0,
           "undelivered": 0.0, "oldest_unacknowledged_age_seconds": 0.0}
    if ours is None:  # no group yet: nothing was ever read, so everything is undelivered
        out["undelivered"] = out["stream_length"]
        oldest = client.xrange(stream, count=1) if length else []
        first = _entry_ms(oldest[0][0]) if oldest else None
    else:
        out["pending"] = float(ours.get("pending") or 0)
        lag = ours.get("lag")
        after = client.xrange(stream, min=f"({_text(ours.get('last-delivered-id')) or '0-0'}", count=1)
        if lag is None:  # Redis < 7 or a lag it cannot tell: at least the entries we can see are waiting
            lag = 1 if after else 0
        out["undelivered"] = float(lag)
        candidates = [_entry_ms(pending.get("min"))] if isinstance(pending, dict) and pending.get("pending") else []
        if after:
            candidates.append(_entry_ms(after[0][0]))
        first = min((c for c in candidates if c is not None), default=None)
    if first is not None:
        out["oldest_unacknowledged_age_seconds"] = max(0.0, (now_ms - first) / 1000)
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


class ApplierLagCollector:
    """The event applier's lag, from Redis at scrape time (the operator's view only)."""

    DOCS = {
        "stream_length": "Entries on the instance event stream (trimmed by length)",
        "pending": "Events delivered to an applier and not yet acknowledged",
        "undelivered": "Events on the stream no applier has read yet",
        "oldest_unacknowledged_age_seconds": "Age of the oldest event not yet applied (pending or undelivered; 0: none)",
        "dead_letters": "Events on the dead-letter stream (<stream>:dead), needing an operator",
    }

    def __init__(self, client: redis.Redis | None = None) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        client = self.client or redis.Redis.from_url(get_settings().redis_url, socket_timeout=2,
                                                     socket_connect_timeout=1)
        try:
            lag = applier_lag(client)
        finally:
            if self.client is None:
                client.close()
        for name, doc in self.DOCS.items():
            yield GaugeMetricFamily(f"warmpool_events_{name}", doc, value=lag[name])


class Guarded:
    """Collectors whose failure (the database or Redis unreachable) costs their own series, not the whole
    scrape; `warmpool_collector_up{collector}` says which answered."""

    def __init__(self, **collectors: object) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("warmpool_collector_up", "1 if the collector's source answered this scrape",
                               labels=["collector"])
        for name, inner in self.collectors.items():
            try:
                families, ok = list(inner.collect()), True  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
                log.warning("metrics: the %s collector failed: %s: %s", name, type(exc).__name__, exc)
                families, ok = [], False
            up.add_metric([name], 1 if ok else 0)
            yield from families
        yield up
