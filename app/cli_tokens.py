"""The token commands of `warmpool`: token create|list|revoke, the operator's side of app.domain.tokens
(any organization, any scope, `metrics` included)."""
from __future__ import annotations

import argparse
import sys

from app.cli_leases import parse_duration


def cmd_token_create(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import tenancy, tokens

    try:
        expires_in = parse_duration(args.expires_in) if args.expires_in else None
    except ValueError as exc:
        print(f"--expires-in: {exc}", file=sys.stderr)
        return 2
    with session_scope() as session:
        org = tenancy.ensure_organization(args.org, session=session)
        _, token = tokens.create_token(org, session=session, scope=args.scope, name=args.name or "",
                                       expires_in=expires_in)
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from sqlmodel import select

    from app.db import session_scope
    from app.domain import tokens
    from app.models import Organization, utcnow

    with session_scope() as session:
        names = dict(session.exec(select(Organization.id, Organization.name)).all())
        org_id = None
        if args.org:
            org_id = next((i for i, n in names.items() if n == args.org), None)
            if org_id is None:
                print(f"no organization {args.org!r}", file=sys.stderr)
                return 1
        rows = tokens.list_tokens(session=session, org_id=org_id)
    now = utcnow()
    table = [("ID", "ORG", "SCOPE", "PREFIX", "NAME", "STATE", "EXPIRES", "LAST USED")]
    for r in rows:
        state = ("revoked" if r.revoked_at else "expired" if r.expires_at and r.expires_at <= now else "active")
        table.append((r.id, names.get(r.organization_id, r.organization_id), r.scope, r.prefix, r.name or "-", state,
                      _stamp(r.expires_at), _stamp(r.last_used_at)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import tokens

    with session_scope() as session:
        row = tokens.revoke(args.id, session=session)
    print(f"revoked {row.id} ({row.prefix}…); running API processes refuse it within WARMPOOL_AUTH_CACHE_SECONDS")
    return 0


def _stamp(when) -> str:  # type: ignore[no-untyped-def]
    return when.strftime("%Y-%m-%d %H:%M:%SZ") if when else "-"


def add_commands(sub: argparse._SubParsersAction) -> None:
    from app.domain.tokens import DEFAULT_SCOPE, Scope

    tok = sub.add_parser("token", help="API tokens").add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    sp = tok.add_parser("create", help="print a new API token for an organization (created if needed)")
    sp.add_argument("--org", required=True, help="organization name")
    sp.add_argument("--scope", choices=[s.value for s in Scope], default=DEFAULT_SCOPE.value,
                    help=f"admin: runners and tokens, and all a member may do; member: pools, prebuilds, projects, "
                    f"environment classes, pod pools, leases; lease: the lease service only; metrics: /metrics of "
                    f"every organization (default: {DEFAULT_SCOPE.value})")
    sp.add_argument("--expires-in", metavar="DURATION", help="lifetime, e.g. 30d, 12h, 90m (default: until revoked)")
    sp.add_argument("--name", help="a note to tell tokens apart")
    sp.set_defaults(fn=cmd_token_create)

    sp = tok.add_parser("list", help="list tokens (never the secret): id, scope, state, expiry, last use")
    sp.add_argument("--org", help="only this organization (default: all)")
    sp.set_defaults(fn=cmd_token_list)

    sp = tok.add_parser("revoke", help="revoke a token by its id (as `token list` shows it)")
    sp.add_argument("id", metavar="ID")
    sp.set_defaults(fn=cmd_token_revoke)
