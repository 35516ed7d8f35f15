"""The lease commands of `warmpool`: lease, leases, return. They call the lease domain directly for an
existing organization (app.cli_context: --org, $WARMPOOL_ORG, dev), print readable tables with each
instance's address, and hand the deferred work (backfill, instance deletion, events) to Celery after
commit like the API does."""
from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from app.models import utcnow

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+)([dhms])")


def _pause(seconds: float) -> None:
    """Between two tries on an exhausted pool (tests replace it to act during the wait)."""
    time.sleep(seconds)


def parse_duration(text: str) -> timedelta:
    """'30m', '1h30m', '90s', '2d' or plain seconds ('600') -> timedelta; ValueError otherwise."""
    text = text.strip().lower()
    if text.isdigit():
        return timedelta(seconds=int(text))
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h30m, 90s or seconds)")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def human_duration(span: timedelta) -> str:
    """A positive span as '24h00m', '29m05s' or '42s'."""
    h, rest = divmod(max(int(span.total_seconds()), 0), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def human_until(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    stamp = when.strftime("%Y-%m-%d %H:%M:%SZ")
    if when <= now:
        return f"{stamp} (past)"
    return f"{stamp} (in {human_duration(when - now)})"


def printable(text: str) -> str:
    """Tenant-made text (names, labels, failure messages) as a terminal may show it: control characters,
    escape sequences included, become '?' so nothing a tenant wrote can drive the operator's terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in (headers, *rows)]
    return "\n".join(lines)


def _expiry(v, now: datetime) -> str:  # type: ignore[no-untyped-def]
    if v.ended_at is not None:  # an ended lease's expiry is history, not a countdown
        return f"ended {v.ended_at:%Y-%m-%d %H:%M:%SZ}" + (f" ({v.end_reason})" if v.end_reason else "")
    return human_until(v.expires_at, now)


def _lease_rows(views: Sequence, now: datetime) -> list[list[str]]:
    return [[v.instance_id, v.pool_name, v.state, v.service_tag or "-", _expiry(v, now), v.address or "-", v.zone or "-"]
            for v in views]


LEASE_HEADERS = ("INSTANCE", "POOL", "STATE", "TAG", "EXPIRES", "ADDRESS", "ZONE")


def _organization(name: str | None) -> str:
    """The id of the organization the command acts for; an unknown one is an error, never created."""
    from app.cli_context import org_name, organization_id
    from app.db import session_scope

    with session_scope() as session:
        return organization_id(org_name(name), session=session)


def _dispatch_after_commit() -> None:
    """Hand the committed follow-up work to Celery and the event stream. If Redis does not take it, one
    line says so (not a traceback per effect): the lease is committed, and the engine's sweep catches up."""
    from app.cli import _redact
    from app.domain import effects
    from config.settings import get_settings
    from workers.celery_app import dispatch_effect

    warned: list[str] = []

    def dispatch(name: str, payload: dict) -> None:
        logging.disable(logging.ERROR)  # the plumbing's own retries and warnings: the line below says it once
        try:
            dispatch_effect(name, payload)
        except Exception as exc:  # noqa: BLE001 - a committed lease must not end in a traceback
            if not warned:
                warned.append(name)
                print(f"warning: done, but Redis at {_redact(get_settings().redis_url)} did not take the follow-up "
                      f"work ({type(exc).__name__}); the engine's next sweep does it. Is `warmpool dev` running "
                      "here, or WARMPOOL_REDIS_URL set?", file=sys.stderr)
        finally:
            logging.disable(logging.NOTSET)

    effects.set_dispatcher(dispatch)


def cmd_lease(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import leases, reservations

    from app.domain.errors import ResourceExhausted

    try:
        duration = parse_duration(args.duration)
        patience = parse_duration(args.wait).total_seconds() if args.wait not in ("0", "") else 0.0
    except ValueError as exc:
        print(f"error: --for/--wait: {exc}", file=sys.stderr)
        return 2
    _dispatch_after_commit()
    org_id = _organization(args.org)
    give_up = time.monotonic() + patience
    while True:
        now = utcnow()
        try:
            with session_scope() as session:
                got = leases.lease(org_id, args.pool or "", service_tag=args.tag, wished_expiry=now + duration,
                                   reservation_id=args.reservation, session=session, now=now)
                if isinstance(got, leases.Queued) and got.automatic:
                    # Nobody would wait on it: do not leave it in the queue.
                    reservations.cancel(org_id, got.reservation_id, session=session)
            break
        except ResourceExhausted as exc:
            # Backpressure (an exhausted `reject` pool): wait as long as the server says, within --wait.
            left = give_up - time.monotonic()
            if exc.retry_after is None or left <= 0:
                raise
            pause = min(float(exc.retry_after), left)
            print(f"{exc.message}; waiting {pause:.0f} s (--wait {args.wait})", file=sys.stderr)
            _pause(pause)
    if not isinstance(got, leases.Queued):
        got = _with_address(org_id, got)
    if isinstance(got, leases.Queued):
        if got.automatic:
            print(f"pool {got.pool_name!r} has no ready instance; try again, or pass --reservation ID to queue",
                  file=sys.stderr)
        else:
            print(f"pool {got.pool_name!r} has no ready instance: reservation {got.client_id!r} is queued until "
                  f"{got.expires_at:%H:%M:%SZ}; run the same command again to pick up its instance", file=sys.stderr)
        return 3
    granted = got.expires_at - now if got.expires_at else duration
    if granted < duration - timedelta(seconds=1):  # the pool's maximum lease clamped it: say so, once
        print(f"warning: --for {args.duration} is longer than pool {got.pool_name!r} grants; the lease is for "
              f"{human_duration(granted)} (until {got.expires_at:%Y-%m-%d %H:%M:%SZ})", file=sys.stderr)
    if args.quiet:  # for scripts: `read ID ADDRESS < <(warmpool lease -q)`
        print(got.instance_id, got.address or "-")
    else:
        print(table(LEASE_HEADERS, _lease_rows([got], utcnow())))
    if not got.address:
        print(f"instance {got.instance_id} has no address yet (a cold instance still booting, or a provider that "
              f"has not reported one); `warmpool pool show {got.pool_name}` shows it once observed", file=sys.stderr)
    return 0


def _with_address(org_id: str, view):  # type: ignore[no-untyped-def]
    """The granted lease with its instance's observed address (the claim itself reads no more than it must)."""
    from dataclasses import replace

    from app.db import session_scope
    from app.domain import instances

    with session_scope() as session:
        inst = instances.get_instance(org_id, view.instance_id, session=session)
    return replace(view, address=inst.address or "")


def cmd_leases(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import leases

    org_id = _organization(args.org)
    with session_scope() as session:
        rows = leases.list_leases(org_id, session=session, include_ended=args.all, pool_name=args.pool or "",
                                  limit=args.limit)
    if not rows:
        print("no active leases" if not args.all else "no leases")
        return 0
    print(table(LEASE_HEADERS, _lease_rows(rows, utcnow())))
    return 0


def cmd_return(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import leases
    from app.models import Pool

    _dispatch_after_commit()
    org_id = _organization(args.org)
    with session_scope() as session:
        ended = leases.return_lease(org_id, args.instance, service_tag=args.tag, session=session)
        reuse = bool(getattr(session.get(Pool, ended.pool_id), "reuse", False))
    fate = "it goes back to the pool" if reuse else "it is destroyed and the pool backfills"
    print(f"returned the lease of instance {ended.instance_id} (pool {ended.pool_name}); {fate}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    org_help = "organization name (default: $WARMPOOL_ORG, which `warmpool dev` provides, else dev)"

    sp = sub.add_parser("lease", help="lease a ready instance from a pool and print it")
    sp.add_argument("--pool", default="", help="pool name (default: the pool with the most ready instances)")
    sp.add_argument("--for", dest="duration", default="30m", help="lease duration, e.g. 30m, 2h, 90s (default 30m; "
                    "clamped to the pool's maximum, with a warning)")
    sp.add_argument("--tag", default="", help="service tag; returning or extending needs the same one")
    sp.add_argument("--reservation", help="reservation id: queue FIFO when the pool is empty; run again to pick it up")
    sp.add_argument("--quiet", "-q", action="store_true", help="print only the instance id and its address")
    sp.add_argument("--wait", default="30s", help="when the pool refuses for now (empty with the `reject` policy), "
                    "retry after the wait it names, for up to this long (default 30s; 0: do not wait)")
    sp.add_argument("--org", help=org_help)
    sp.set_defaults(fn=cmd_lease)

    sp = sub.add_parser("leases", help="list leases as a table (active ones unless --all)")
    sp.add_argument("--all", action="store_true", help="include returned and expired leases")
    sp.add_argument("--pool", default="", help="only this pool")
    sp.add_argument("--limit", type=int, default=100, help="at most this many rows, newest first (default 100)")
    sp.add_argument("--org", help=org_help)
    sp.set_defaults(fn=cmd_leases)

    sp = sub.add_parser("return", help="return a lease by its instance id (the instance is destroyed)")
    sp.add_argument("instance", metavar="ID", help="instance id, as `warmpool lease` printed it")
    sp.add_argument("--tag", default="", help="the service tag the lease was taken with")
    sp.add_argument("--org", help=org_help)
    sp.set_defaults(fn=cmd_return)
