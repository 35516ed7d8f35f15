"""The pool and runner commands of `warmpool`: pools [--watch], pool show, runner list|delete. They read
through the domain (app.domain.pools, instances, leases, tenancy) for one organization and never write,
but for `runner delete`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from app.cli_context import org_name, organization_id
from app.cli_leases import human_until, printable, table
from app.models import utcnow

CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen: each --watch frame replaces the last on a terminal
POOL_HEADERS = ("POOL", "KIND", "PHASE", "READY", "LEASED", "STOPPED", "DESIRED", "MIN-MAX", "SNAPSHOT", "FAILURE")
INSTANCE_HEADERS = ("INSTANCE", "STATE", "DESIRED", "LEASE", "ADDRESS", "ZONE", "SNAPSHOT")
RUNNER_HEADERS = ("ID", "NAME", "PROVIDER", "POOLS", "SETTINGS")
PAGE = 500


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ").strip()
    if not text:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def _all_pools(org_id: str, *, session: Any, include_deleted: bool) -> list:
    from app.domain import pools
    from app.domain.pagination import Page, decode_token

    rows: list = []
    page = Page(size=PAGE)
    while True:
        got, token = pools.list_pools(org_id, page, session=session, include_deleted=include_deleted)
        rows += got
        if not token:
            return rows
        page = Page(size=PAGE, after=decode_token(token))


def read_pools(org: str, *, include_deleted: bool = False) -> list:
    """The organization's pools, read fresh in a unit of work of their own."""
    from app.db import session_scope

    with session_scope() as session:
        org_id = organization_id(org, session=session)
        return _all_pools(org_id, session=session, include_deleted=include_deleted)


def all_ready(rows: list) -> bool:
    """Every pool READY with its desired number of ready instances (what --until-ready waits for)."""
    return bool(rows) and all(p.phase == "ready" and p.ready_instances >= p.desired_size for p in rows
                              if p.phase not in ("deleting", "deleted"))


def pools_frame(org: str, rows: list, *, now: datetime | None = None) -> str:
    """One rendering of `warmpool pools`: a title line and a table."""
    now = now or utcnow()
    title = f"organization {org}: {len(rows)} pool(s) at {now:%H:%M:%SZ}"
    if not rows:
        return f"{title}\nno pools (create one through any API; see the README)"
    body = [[p.name, p.kind, p.phase, str(p.ready_instances), str(p.leased_instances), str(p.stopped_instances),
             str(p.desired_size), f"{p.min_size}-{p.max_size}", _short(p.snapshot_id, 28), _short(p.failure_message, 60)]
            for p in rows]
    return f"{title}\n{table(POOL_HEADERS, body)}"


def _pause(seconds: float) -> None:
    """Between --watch frames (tests replace it to act between two frames without waiting)."""
    time.sleep(seconds)


def cmd_pools(args: argparse.Namespace) -> int:
    org = org_name(args.org)
    if not (args.watch or args.until_ready):
        print(pools_frame(org, read_pools(org, include_deleted=args.all)))
        return 0
    if args.interval <= 0:
        print("error: --interval must be > 0", file=sys.stderr)
        return 2
    tty = sys.stdout.isatty()
    frames = 0
    try:
        while True:
            rows = read_pools(org, include_deleted=args.all)
            frame = pools_frame(org, rows)
            # On a terminal each frame replaces the last; into a pipe or file they follow one another.
            print(CLEAR + frame if tty else frame + "\n", flush=True)
            frames += 1
            if (args.count and frames >= args.count) or (args.until_ready and all_ready(rows)):
                return 0
            _pause(args.interval)
    except KeyboardInterrupt:  # Ctrl-C is how --watch ends
        return 0


def _find_pool(org_id: str, ref: str, *, session: Any) -> Any:
    from app.domain import pools
    from app.domain.errors import NotFound

    try:
        return pools.get_pool(org_id, ref, session=session)
    except NotFound:
        return pools.find_pool(org_id, ref, session=session)


def _all_instances(org_id: str, pool_id: str, *, session: Any) -> list:
    from app.domain import instances
    from app.domain.pagination import Page, decode_token

    rows: list = []
    page = Page(size=PAGE)
    while True:
        got, token = instances.list_instances(org_id, pool_id, page, session=session)
        rows += got
        if not token:
            return rows
        page = Page(size=PAGE, after=decode_token(token))


def _seconds(n: int) -> str:
    if n < 0:
        return "never"
    h, rest = divmod(n, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def _schedule_fact(pool_id: str, *, session: Any) -> str:
    from app.domain import schedules
    from app.models import PoolSchedule

    row = session.get(PoolSchedule, pool_id)
    if row is None:
        return ""
    view = schedules.schedule_view(row)
    holding = f", entry {view['holding']['index']} holds" if view["holding"] else ""
    upcoming = f", next firing {view['next_fire_at']:%Y-%m-%d %H:%M}Z" if view["next_fire_at"] else ""
    return f"{len(view['entries'])} entries{holding}{upcoming} (warmpool pool schedule)"


def cmd_pool_show(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import leases, tenancy

    org = org_name(args.org)
    with session_scope() as session:
        org_id = organization_id(org, session=session)
        pool = _find_pool(org_id, args.pool, session=session)
        insts = _all_instances(org_id, pool.id, session=session)
        active = {v.instance_id: v for v in leases.list_leases(org_id, session=session, pool_name=pool.name,
                                                               limit=len(insts) + 100) if v.pool_id == pool.id}
        runner = tenancy.get_runner(org_id, pool.runner_id, session=session) if pool.runner_id else None
        schedule = _schedule_fact(pool.id, session=session)
    now = utcnow()
    facts = [
        ("pool", f"{pool.name} (id {pool.id})" if pool.name != pool.id else pool.id),
        ("kind", pool.kind + (f", group {pool.group_name}" if pool.kind == "podpool" else "")),
        ("phase", pool.phase),
        ("failure", pool.failure_message or "-"),
        ("sizes", f"min {pool.min_size}, max {pool.max_size}, stopped tier {pool.stopped_size}, "
                  f"desired {pool.desired_size}"),
        ("instances", f"ready {pool.ready_instances}, leased {pool.leased_instances}, "
                      f"running {pool.running_instances}, stopped {pool.stopped_instances}"),
        ("snapshot", (pool.snapshot_id or "-") + (f" (previous {pool.previous_snapshot_id})" if pool.previous_snapshot_id else "")),
        ("runner", f"{runner.name} ({runner.provider}, id {runner.id})" if runner else "-"),
        ("leases", f"default {_seconds(pool.lease_default_seconds)}, max {_seconds(pool.lease_max_seconds)}, "
                   f"empty pool: {pool.empty_policy}" + (", reuse" if pool.reuse else "")),
    ]
    if schedule:
        facts.append(("schedule", schedule))
    if pool.labels:
        facts.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(pool.labels.items()))))
    width = max(len(k) for k, _ in facts)
    print("\n".join(f"{k.ljust(width)}  {printable(v)}" for k, v in facts))
    print()
    if not insts:
        print("no instances")
        return 0
    rows = []
    for inst in insts:
        lease = active.get(inst.id)
        held = (f"{lease.service_tag or 'untagged'} until {human_until(lease.expires_at, now)}" if lease
                else ("draining" if inst.draining else "free" if inst.lease_id is None else "held"))
        rows.append([inst.id, inst.state, inst.desired_state, held, inst.address or "-", inst.zone or "-",
                     _short(inst.snapshot_id, 28) + (" (stale)" if inst.stale else "")])
    print(table(INSTANCE_HEADERS, rows))
    return 0


def _settings_text(stored: dict) -> str:
    from app.domain import compute

    shown = compute.public_settings(stored)  # secret fields read '***': never decrypted here
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(shown.items())) or "-"


def cmd_runner_list(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import tenancy

    org = org_name(args.org)
    with session_scope() as session:
        org_id = organization_id(org, session=session)
        rows = [[r.id, r.name, r.provider, str(len(tenancy.pools_using_runner(r.id, session=session))),
                 _settings_text(r.settings or {})] for r in tenancy.list_runners(org_id, session=session)]
    if not rows:
        print(f"organization {org} has no runners (`warmpool runner create NAME --provider PROVIDER --org {org}`)")
        return 0
    print(table(RUNNER_HEADERS, rows))
    return 0


def cmd_runner_delete(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import tenancy

    org = org_name(args.org)
    with session_scope() as session:
        org_id = organization_id(org, session=session)
        runner, classes = tenancy.delete_runner(org_id, args.runner, session=session)
    extra = f" and its {classes} environment class(es)" if classes else ""
    print(f"deleted runner {runner.name} ({runner.id}){extra}")
    return 0


ORG_HELP = "organization name (default: $WARMPOOL_ORG, which `warmpool dev` provides, else dev)"


def add_commands(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("pools", help="every pool of the organization as a table (--watch: live until Ctrl-C)")
    sp.add_argument("--watch", "-w", action="store_true", help="redraw the table every --interval seconds")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (default 1)")
    sp.add_argument("--count", type=int, default=0, help="with --watch: stop after this many redraws (default: until Ctrl-C)")
    sp.add_argument("--until-ready", action="store_true", help="watch until every pool is READY with its desired "
                    "ready instances, then exit (for scripts)")
    sp.add_argument("--all", action="store_true", help="include deleted pools")
    sp.add_argument("--org", help=ORG_HELP)
    sp.set_defaults(fn=cmd_pools)

    pool = sub.add_parser("pool", help="one pool").add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    sp = pool.add_parser("show", help="a pool's spec and status, and its instances (state, lease, address)")
    sp.add_argument("pool", metavar="ID", help="pool id or name (as `warmpool pools` shows it)")
    sp.add_argument("--org", help=ORG_HELP)
    sp.set_defaults(fn=cmd_pool_show)
    from app.cli_pool_edit import add_commands as add_edit_commands

    add_edit_commands(pool, ORG_HELP)  # pool create|update|delete|schedule


def add_runner_commands(run: argparse._SubParsersAction) -> None:
    sp = run.add_parser("list", help="the organization's runners; secret settings read ***")
    sp.add_argument("--org", help=ORG_HELP)
    sp.set_defaults(fn=cmd_runner_list)
    sp = run.add_parser("delete", help="delete a runner no live pool uses (its environment classes go with it)")
    sp.add_argument("runner", metavar="ID", help="runner id or name")
    sp.add_argument("--org", help=ORG_HELP)
    sp.set_defaults(fn=cmd_runner_delete)
