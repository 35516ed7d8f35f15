"""The `warmpool` command: set-up (migrate, tokens, runners), the server processes, and lease tools."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from app.cli_context import CliError, check_database, load_dev_env, org_name
from config.logging import configure_logging
from config.settings import Settings, get_settings

log = logging.getLogger("warmpool")


def _settings_for_cli() -> Settings:
    s = get_settings()
    configure_logging(s.log_level)
    return s


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.migrate import upgrade

    s = _settings_for_cli()
    upgrade(s.database_url)
    print(f"database is at the latest schema ({_redact(s.database_url)})")
    return 0


def cmd_runner_create(args: argparse.Namespace) -> int:
    from app.db import session_scope
    from app.domain import tenancy
    from app.domain.errors import InvalidArgument

    _settings_for_cli()
    settings: dict[str, str] = {}
    for item in args.setting or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"--setting takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        settings[key] = value
    try:  # the provider's typed model checks the settings before anything is stored
        with session_scope() as session:
            org = tenancy.ensure_organization(org_name(args.org), session=session)
            runner = tenancy.create_runner(org.id, args.name, args.provider, settings, session=session)
    except InvalidArgument as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(runner.id)
    return 0


def cmd_secrets_rotate(args: argparse.Namespace) -> int:
    from app.crypto import SecretKeyError
    from app.db import session_scope
    from app.domain import compute

    _settings_for_cli()
    try:
        with session_scope() as session:
            runners, secrets = compute.rotate_secrets(session=session)
    except SecretKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"re-encrypted {secrets} secret(s) of {runners} runner(s) with the first key of WARMPOOL_SECRET_KEYS; "
          "the other keys can now be removed")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from app.serve import serve_api

    s = _settings_for_cli()
    serve_api(s, host=args.host or s.http_host, port=args.port or s.http_port, workers=args.workers)
    return 0


def _engine_niceness(s: Settings) -> None:
    from app.niceness import apply_engine_niceness

    apply_engine_niceness(s)


def cmd_worker(args: argparse.Namespace) -> int:
    s = _settings_for_cli()
    _engine_niceness(s)
    from workers.celery_app import celery_app

    argv = ["worker", "-Q", args.queues, "--pool", "threads", "--concurrency",
            str(args.concurrency or s.engine.worker_concurrency), "--loglevel", s.log_level]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    _serve_metrics(args, s)
    celery_app.worker_main(argv)
    return 0


def _serve_metrics(args: argparse.Namespace, s) -> None:  # type: ignore[no-untyped-def]
    """Provider calls run in `worker` and `observe`: their metrics (app.metrics) on a port of their own."""
    if args.metrics_port:
        from app.metrics import serve_process_metrics

        serve_process_metrics(args.metrics_port, s.http_host)


def cmd_beat(args: argparse.Namespace) -> int:
    s = _settings_for_cli()
    _engine_niceness(s)
    from workers.celery_app import celery_app

    s.data_dir.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", "--loglevel", s.log_level, "-s", str(s.data_dir / "celerybeat-schedule")])
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    _engine_niceness(_settings_for_cli())
    from workers.events import main as applier_main

    applier_main()
    return 0


def cmd_observe(args: argparse.Namespace) -> int:
    s = _settings_for_cli()
    _engine_niceness(s)
    _serve_metrics(args, s)
    from workers.observer import main as observer_main

    observer_main()
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    from app.flower import run_flower

    run_flower(_settings_for_cli(), port=args.port)  # basic auth on every page, /metrics included
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from app.devserver import run_dev

    return run_dev(args)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warmpool", description="Warm pools of compute instances, leased in milliseconds.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("migrate", help="bring the database schema up to date")
    sp.set_defaults(fn=cmd_migrate)

    from app.cli_tokens import add_commands as add_token_commands

    add_token_commands(sub)  # token create|list|revoke

    run = sub.add_parser("runner", help="runners (a provider + its settings)").add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    sp = run.add_parser("create", help="create a runner and print its id")
    sp.add_argument("name")
    sp.add_argument("--provider", required=True, help="provider name: fake, local, unikraft, kubernetes, …")
    sp.add_argument("--setting", action="append", metavar="KEY=VALUE",
                    help="provider setting (repeatable), checked by the provider's settings model")
    sp.add_argument("--org", help="organization name, created if needed (default: $WARMPOOL_ORG, else dev)")
    sp.set_defaults(fn=cmd_runner_create)

    from app.cli_pools import add_commands as add_pool_commands, add_runner_commands

    add_runner_commands(run)  # runner list|delete
    add_pool_commands(sub)  # pools [--watch], pool show

    sec = sub.add_parser("secrets", help="runner secrets at rest").add_subparsers(dest="sub", required=True,
                                                                               metavar="SUBCOMMAND")
    sp = sec.add_parser("rotate", help="re-encrypt every runner's secrets with the first key of WARMPOOL_SECRET_KEYS")
    sp.set_defaults(fn=cmd_secrets_rotate)

    sp = sub.add_parser("api", help="serve HTTP (Connect, REST, metrics) and gRPC")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--workers", type=int, help="processes serving HTTP and gRPC on the same ports "
                    "(default: WARMPOOL_API_WORKERS; 0 or unset: one per core, one under dev/test or on SQLite)")
    sp.set_defaults(fn=cmd_api)

    sp = sub.add_parser("worker", help="Celery worker for the reconcile, provider, system and sweep queues")
    sp.add_argument("--queues", default="reconcile,provider,system,sweep",
                    help="comma-separated queues (default: all four; `system` carries lease expiry and the sweeps, "
                    "`sweep` the sweep's reconcile passes)")
    sp.add_argument("--concurrency", type=int, help="worker threads (default: WARMPOOL_ENGINE__WORKER_CONCURRENCY)")
    sp.add_argument("--hostname", help="Celery node name")
    sp.add_argument("--metrics-port", type=int, help="serve this process's Prometheus metrics (provider calls) on "
                    "http://WARMPOOL_HTTP_HOST:PORT/metrics (default: off)")
    sp.set_defaults(fn=cmd_worker)

    sp = sub.add_parser("beat", help="the periodic sweeps (run exactly one)")
    sp.set_defaults(fn=cmd_beat)

    sp = sub.add_parser("events", help="the event applier (Redis Stream -> Postgres)")
    sp.set_defaults(fn=cmd_events)

    sp = sub.add_parser("observe", help="the provider observers (one per runner, sharded between replicas)")
    sp.add_argument("--metrics-port", type=int, help="serve this process's Prometheus metrics (provider calls) on "
                    "http://WARMPOOL_HTTP_HOST:PORT/metrics (default: off)")
    sp.set_defaults(fn=cmd_observe)

    sp = sub.add_parser("flower", help="Celery's Flower dashboard behind basic auth")
    sp.add_argument("--port", type=int)
    sp.set_defaults(fn=cmd_flower)

    sp = sub.add_parser("dev", help="everything on one machine with embedded defaults")
    sp.add_argument("--org", default="dev", help="organization whose token is printed")
    sp.add_argument("--embedded-redis", choices=["auto", "server", "fakeredis"], default="auto",
                    help="without WARMPOOL_REDIS_URL: a private redis-server if installed (auto), or fakeredis in-process")
    sp.set_defaults(fn=cmd_dev)

    from app.cli_leases import add_commands as add_lease_commands

    add_lease_commands(sub)  # lease, leases, return

    from app.cli_quota import add_commands as add_quota_commands

    add_quota_commands(sub)  # quota set|show

    from app.cli_rollout import add_commands as add_rollout_commands

    add_rollout_commands(sub)  # rollout status|policy|pause|resume|rollback
    return p


def _org_hint(args: argparse.Namespace, exc: Exception) -> str:
    """A thing not found may be in another organization: say which one was searched (the README's flow
    once made everything in `acme` and then looked in `dev`)."""
    from app.domain.errors import NotFound

    if not isinstance(exc, NotFound) or not hasattr(args, "org") or str(exc.message).startswith("no organization"):
        return ""
    return f" in organization {org_name(args.org)!r} (--org or $WARMPOOL_ORG picks another)"


# Commands that set up the database or serve: they do not need (or make) a migrated one first.
NO_DATABASE_CHECK = frozenset({"migrate", "dev", "api", "worker", "beat", "events", "flower", "observe"})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # pg_stat_activity says which process each PostgreSQL session serves (libpq reads PGAPPNAME), unless the
    # operator named them; `warmpool dev`'s children name their own.
    if os.environ.get("PGAPPNAME", "warmpool ").startswith("warmpool "):
        os.environ["PGAPPNAME"] = f"warmpool {args.command}"
    if args.command != "dev" and load_dev_env() is not None:
        get_settings.cache_clear()  # a running `warmpool dev` supplied Redis, database and org
    from workers.providers.catalog import install as install_catalog

    install_catalog()  # runner settings and templates are checked by the providers' typed models
    try:
        if args.command not in NO_DATABASE_CHECK:
            check_database(get_settings().database_url)
        return args.fn(args) or 0
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from sqlalchemy.exc import OperationalError

        from app.domain.errors import DomainError

        if isinstance(exc, DomainError):
            print(f"error: {exc.message}{_org_hint(args, exc)}", file=sys.stderr)
            return 1
        if isinstance(exc, OperationalError):  # the database went away mid-command: one line, not a traceback
            print(f"error: database {_redact(get_settings().database_url)}: {str(exc.orig).strip().splitlines()[0]}",
                  file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
