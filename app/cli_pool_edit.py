"""The pool writing commands of `warmpool`: pool create|update|delete|schedule, through the same domain
functions as POST/PATCH/DELETE /v1/pools and PUT /v1/pools/{id}/schedule (app.domain.pool_admin,
schedules), for one organization; the follow-up reconcile goes to Redis after commit."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from app.cli_context import CliError, org_name, organization_id
from app.cli_leases import _dispatch_after_commit

# option dest -> pool knob (app.domain.pool_admin.KNOBS), in the order `--help` lists them
KNOB_OPTIONS = (
    ("stopped", "stopped_size", int, "stopped (backfill) instances kept behind the running ones"),
    ("empty_policy", "empty_policy", str, "a lease on an empty pool: reserve (FIFO queue), reject "
                                          "(RESOURCE_EXHAUSTED) or cold (create one)"),
    ("lease_default", "lease_default_seconds", int, "lease duration (s) when the caller asks for none"),
    ("lease_max", "lease_max_seconds", int, "longest lease (s); longer asks are clamped"),
    ("reservation_ttl", "reservation_ttl_seconds", int, "how long (s) a queued reservation lives"),
    ("idle_reserved", "idle_recycle_reserved", int, "replace base instances idle this long (s; -1 never)"),
    ("idle_scaled", "idle_recycle_scaled", int, "stop or delete instances above the target idle this long (s; -1 never)"),
    ("surge", "rotation_max_surge", int, "extra instances above max while rotating to a new snapshot"),
    ("headroom", "autoscale_headroom", float, "the autoscaler's margin over claim rate x refill time (0.5 = 50%%)"),
    ("cooldown", "autoscale_cooldown_seconds", float, "seconds between two down steps of the running target"),
)


def _template(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.template is None and args.image is None:
        return None
    try:
        template = json.loads(args.template) if args.template is not None else {}
    except ValueError as exc:
        raise CliError(f"--template must be a JSON object: {exc}") from None
    if not isinstance(template, dict):
        raise CliError("--template must be a JSON object, e.g. '{\"image\": \"alpine\"}'")
    if args.image is not None:
        template["image"] = args.image
    return template


def _knobs(args: argparse.Namespace) -> dict[str, Any]:
    given = {knob: getattr(args, dest) for dest, knob, _, _ in KNOB_OPTIONS if getattr(args, dest) is not None}
    for dest, knob in (("min", "min_size"), ("max", "max_size")):
        if getattr(args, dest, None) is not None:
            given[knob] = getattr(args, dest)
    return given


def _show(pool: Any) -> str:
    return (f"pool {pool.name} (id {pool.id}, {pool.kind}): min {pool.min_size}, max {pool.max_size}, stopped tier "
            f"{pool.stopped_size}, empty pool: {pool.empty_policy}, leases {pool.lease_default_seconds}s default "
            f"/ {pool.lease_max_seconds}s max, spec version {pool.spec_version}")


def cmd_pool_create(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import pool_admin, tenancy

    _dispatch_after_commit()
    knobs = _knobs(args)
    min_size, max_size = knobs.pop("min_size", 0), knobs.pop("max_size")
    with session_scope() as session:
        org_id = organization_id(org_name(args.org), session=session)
        runner = tenancy.find_runner(org_id, args.runner, session=session)
        pool = pool_admin.create_named_pool(org_id, name=args.name, runner_id=runner.id, min_size=min_size,
                                            max_size=max_size, template=_template(args) or {}, session=session, **knobs)
    print(pool.id)
    print(_show(pool), file=sys.stderr)
    return 0


def _pool_ref(org_id: str, ref: str, *, session: Any) -> Any:
    from app.cli_pools import _find_pool

    return _find_pool(org_id, ref, session=session)


def cmd_pool_update(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import pool_admin

    _dispatch_after_commit()
    changes = _knobs(args)
    template = _template(args)
    if template is not None:
        changes["template"] = template
    if not changes:
        raise CliError("nothing to change: give at least one option (see `warmpool pool update --help`)")
    with session_scope() as session:
        org_id = organization_id(org_name(args.org), session=session)
        pool = pool_admin.update_pool(org_id, _pool_ref(org_id, args.pool, session=session).id, changes, session=session)
    print(_show(pool))
    return 0


def cmd_pool_delete(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import pools

    _dispatch_after_commit()
    with session_scope() as session:
        org_id = organization_id(org_name(args.org), session=session)
        pool = pools.delete_pool(org_id, _pool_ref(org_id, args.pool, session=session).id, session=session)
    print(f"pool {pool.name} ({pool.id}) is {pool.phase}: its instances are drained, then it is deleted")
    return 0


def parse_entry(text: str) -> Any:
    """'MIN HOUR DOM MON DOW TIMEZONE min=N max=N desired=N' (any of the three sizes) -> cron.Entry."""
    from app.domain.cron import Entry

    words = text.split()
    if len(words) < 7:
        raise CliError(f"--entry {text!r}: give 5 cron fields, a timezone and sizes, e.g. "
                       "'0 8 * * 1-5 Europe/Berlin min=20 max=40'")
    sizes: dict[str, int] = {}
    for word in words[6:]:
        key, sep, value = word.partition("=")
        field = {"min": "min_size", "max": "max_size", "desired": "desired_size"}.get(key)
        if not sep or field is None or not value.lstrip("-").isdigit():
            raise CliError(f"--entry {text!r}: {word!r} is not min=N, max=N or desired=N")
        sizes[field] = int(value)
    return Entry(cron=" ".join(words[:5]), timezone=words[5], **sizes)


def schedule_text(view: dict[str, Any]) -> str:
    if not view["entries"]:
        return "no schedule (warmpool pool schedule POOL --entry '0 8 * * 1-5 Europe/Berlin min=20 max=40')"
    lines = []
    for n, e in enumerate(view["entries"]):
        sizes = " ".join(f"{k.removesuffix('_size')}={e[k]}" for k in ("min_size", "max_size", "desired_size")
                         if e[k] is not None)
        mark = "*" if view["holding"] and view["holding"]["index"] == n else " "
        lines.append(f"{mark} [{n}] {e['cron']}  {e['timezone']}  {sizes}")
    if view["holding"]:
        lines.append(f"* holds since {view['holding']['fired_at']:%Y-%m-%d %H:%M:%SZ}")
    if view["next_fire_at"]:
        lines.append(f"next firing {view['next_fire_at']:%Y-%m-%d %H:%M:%SZ}")
    if view["last_error"]:
        lines.append(f"last firing not applied: {view['last_error']}")
    return "\n".join(lines)


def cmd_pool_schedule(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import schedules

    if args.clear and args.entry:
        raise CliError("--clear removes the schedule; it cannot be combined with --entry")
    writing = args.clear or bool(args.entry)
    entries = [parse_entry(e) for e in args.entry or []]
    if writing:
        _dispatch_after_commit()
    with session_scope() as session:
        org_id = organization_id(org_name(args.org), session=session)
        pool_id = _pool_ref(org_id, args.pool, session=session).id
        if writing:
            _, row = schedules.put_schedule(org_id, pool_id, entries, session=session)
        else:
            _, row = schedules.get_schedule(org_id, pool_id, session=session)
        view = schedules.schedule_view(row)
    print(schedule_text(view))
    return 0


def _add_knobs(sp: argparse.ArgumentParser) -> None:
    for dest, _, kind, help_text in KNOB_OPTIONS:
        sp.add_argument("--" + dest.replace("_", "-"), dest=dest, type=kind, help=help_text)
    sp.add_argument("--image", help="the template's image (shorthand for --template '{\"image\": ...}')")
    sp.add_argument("--template", help="the instance template as a JSON object, checked by the runner's provider")


def add_commands(pool: argparse._SubParsersAction, org_help: str) -> None:
    """pool create|update|delete|schedule, beside `pool show` (app.cli_pools)."""
    sp = pool.add_parser("create", help="create a named pool (leasable by its name) on a runner; prints its id")
    sp.add_argument("name", help="the pool's name: what `warmpool lease` and the lease service use")
    sp.add_argument("--runner", required=True, help="runner id or name (`warmpool runner list`)")
    sp.add_argument("--min", type=int, help="smallest running size (default 0)")
    sp.add_argument("--max", type=int, required=True, help="largest running size")
    _add_knobs(sp)
    sp.add_argument("--org", help=org_help)
    sp.set_defaults(fn=cmd_pool_create)

    sp = pool.add_parser("update", help="change any knob of a pool of any kind (bumps its spec version)")
    sp.add_argument("pool", metavar="POOL", help="pool id or name")
    sp.add_argument("--min", type=int, help="smallest running size")
    sp.add_argument("--max", type=int, help="largest running size")
    _add_knobs(sp)
    sp.add_argument("--org", help=org_help)
    sp.set_defaults(fn=cmd_pool_update)

    sp = pool.add_parser("delete", help="drain and delete a pool of any kind")
    sp.add_argument("pool", metavar="POOL", help="pool id or name")
    sp.add_argument("--org", help=org_help)
    sp.set_defaults(fn=cmd_pool_delete)

    sp = pool.add_parser("schedule", help="show or replace a pool's scheduled sizing")
    sp.add_argument("pool", metavar="POOL", help="pool id or name")
    sp.add_argument("--entry", action="append", metavar="'CRON TZ min=N max=N desired=N'",
                    help="an entry (repeatable; the list replaces the schedule), e.g. "
                         "'0 8 * * 1-5 Europe/Berlin min=20 max=40'")
    sp.add_argument("--clear", action="store_true", help="remove the schedule")
    sp.add_argument("--org", help=org_help)
    sp.set_defaults(fn=cmd_pool_schedule)
