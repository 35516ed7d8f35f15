"""`warmpool rollout status|policy|pause|resume|rollback POOL`: rollout control of a pool's snapshot
rotation from the terminal, through the same domain calls as /v1/pools/{id}/rollout."""
from __future__ import annotations

import argparse
from typing import Any

from app.cli_context import org_name, organization_id
from app.cli_leases import printable

ORG_HELP = "organization name (default: $WARMPOOL_ORG, which `warmpool dev` provides, else dev)"
POLICY_FLAGS = (("max_surge", "instances made above max_size while rotating"),
                ("max_unavailable", "ready capacity the rotation may take below the target"),
                ("canary", "fresh instances made first (0: no canary)"),
                ("bake_seconds", "wait after the canary is ready (-1: until `warmpool rollout resume`)"),
                ("progress_deadline_seconds", "no progress for this long makes the pool DEGRADED"))


def _in_pool(args: argparse.Namespace, call: Any, *extra: Any) -> dict[str, Any]:
    from app.cli_pools import _find_pool
    from app.db import session_scope

    with session_scope() as session:
        org_id = organization_id(org_name(args.org), session=session)
        pool = _find_pool(org_id, args.pool, session=session)
        return call(pool.id, org_id, *extra, session=session)


def show(status: dict[str, Any]) -> None:
    p = status["policy"]
    rows = [
        ("stage", status["stage"] + (" (paused)" if status["paused"] else "")),
        ("snapshot", f"{status['snapshot_id'] or '-'} (previous {status['previous_snapshot_id'] or '-'})"),
        ("stale", f"{status['stale_instances']} instances on another snapshot"),
        ("fresh ready", str(status["fresh_ready_instances"])),
        ("last progress", status["progress_at"] or "-"),
        ("stalled", status["stalled"] or "-"),
        ("policy", " ".join(f"{k}={v}" for k, v in p.items())),
    ]
    for key, value in rows:
        print(f"{key + ':':<15}{printable(str(value))}")


def cmd_status(args: argparse.Namespace) -> int:
    from app.domain import rollouts

    show(_in_pool(args, rollouts.get_status))
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from app.domain import rollouts
    from app.domain.rollout import Policy

    from pydantic import ValidationError

    from app.cli_context import CliError

    def merged(pool_id: str, org_id: str, *, session: Any) -> dict[str, Any]:
        current = rollouts.get_status(pool_id, org_id, session=session)["policy"]
        given = {k: getattr(args, k) for k, _ in POLICY_FLAGS if getattr(args, k) is not None}
        try:
            policy = Policy(**{**current, **given})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise CliError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
        return rollouts.set_policy(pool_id, org_id, policy, session=session)

    show(_in_pool(args, merged))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    from app.domain import rollouts

    show(_in_pool(args, getattr(rollouts, args.action)))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    ro = sub.add_parser("rollout", help="rollout control of a pool's snapshot rotation").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")

    def pool_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("pool", metavar="POOL", help="pool id or name (as `warmpool pools` shows it)")
        sp.add_argument("--org", help=ORG_HELP)

    sp = ro.add_parser("status", help="where the pool's rotation stands, and its policy")
    pool_arg(sp)
    sp.set_defaults(fn=cmd_status)
    sp = ro.add_parser("policy", help="change the rollout policy (flags not given keep their value)")
    pool_arg(sp)
    for name, text in POLICY_FLAGS:
        sp.add_argument("--" + name.replace("_", "-"), dest=name, type=int, help=text)
    sp.set_defaults(fn=cmd_policy)
    for action, text in (("pause", "freeze the rotation where it stands (and any next one)"),
                         ("resume", "unpause; a canary waiting for the operator's go goes on"),
                         ("rollback", "point the pool back at its previous snapshot, at once")):
        sp = ro.add_parser(action, help=text)
        pool_arg(sp)
        sp.set_defaults(fn=cmd_action, action=action)
