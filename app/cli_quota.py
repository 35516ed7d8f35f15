"""`warmpool quota set|show`: the operator's per-organization limits (tenants can only read theirs)."""
from __future__ import annotations

import argparse
import json

FLAGS = {"max_pool_size": "largest min/max/stopped size of one pool",
         "max_pools": "live pools of the organization",
         "max_instances": "instances the organization may hold",
         "max_pools_per_request": "pod pools in one openYuanrong create request",
         "max_creating": "instances being created at once (requested, or provisioning at the provider)",
         "lease_rate": "Lease calls per second (0: no limit)",
         "lease_burst": "Lease calls at once above the rate (0: one second's worth)"}


def _limit(text: str) -> int | None:
    """A non-negative integer, or `default` to drop the override."""
    if text == "default":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'default', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _show(org_name: str, session) -> dict:  # type: ignore[no-untyped-def]
    from dataclasses import asdict

    from app.domain import quotas

    org = quotas.organization_named(org_name, session=session)
    return {"organization": org.name, "limits": asdict(quotas.quota_of(org.id, session=session)),
            "overridden": sorted(quotas.overrides(org.id, session=session)),
            "usage": quotas.usage(org.id, session=session)}


def cmd_quota_set(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import quotas

    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not _UNSET}
    if not given:
        print("give at least one limit, e.g. --max-pool-size 100 (or 'default' to drop an override)")
        return 2
    with session_scope() as session:
        org = quotas.organization_named(args.org, session=session)
        quotas.set_quota(org.id, session=session, **given)
        shown = _show(args.org, session)
    print(json.dumps(shown, indent=2))
    return 0


def cmd_quota_show(args: argparse.Namespace) -> int:
    from app.db import session_scope

    with session_scope() as session:
        shown = _show(args.org, session)
    print(json.dumps(shown, indent=2))
    return 0


_UNSET = object()


def add_commands(sub: argparse._SubParsersAction) -> None:
    quota = sub.add_parser("quota", help="per-organization quotas (operator only)").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    sp = quota.add_parser("set", help="override an organization's limits ('default' drops an override)")
    sp.add_argument("--org", required=True, help="organization name")
    for name, what in FLAGS.items():
        sp.add_argument("--" + name.replace("_", "-"), dest=name, type=_limit, default=_UNSET, metavar="N",
                        help=f"{what} (WARMPOOL_QUOTAS__{name.upper()} is the default)")
    sp.set_defaults(fn=cmd_quota_set)
    sp = quota.add_parser("show", help="an organization's limits, which are overridden, and its usage")
    sp.add_argument("--org", required=True, help="organization name")
    sp.set_defaults(fn=cmd_quota_show)
