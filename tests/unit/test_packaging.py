"""What operators rely on: docker-compose runs the CLI's own commands, settings keep their names."""
from __future__ import annotations

from pathlib import Path

import yaml

from app.cli import build_parser
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_run_existing_cli_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = build_parser()._subparsers._group_actions[0].choices
    expected = {"postgres", "redis", "migrate", "api", "worker", "beat", "events", "observe", "flower"}
    assert expected <= set(compose["services"])
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command and command[0] == "warmpool":
            assert command[1] in commands, f"{name} runs unknown command {command[1]!r}"


def test_documented_environment_names(monkeypatch):
    monkeypatch.setenv("WARMPOOL_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("WARMPOOL_REDIS_URL", "redis://h:1/2")
    monkeypatch.setenv("WARMPOOL_HTTP_PORT", "9090")
    monkeypatch.setenv("WARMPOOL_GRPC_PORT", "9091")
    monkeypatch.setenv("WARMPOOL_ENGINE__FAILURE_THRESHOLD", "7")
    s = Settings()
    assert (s.database_url, s.redis_url, s.http_port, s.grpc_port, s.engine.failure_threshold) == (
        "postgresql+psycopg://u@h/db", "redis://h:1/2", 9090, 9091, 7)


def test_default_secrets_are_refused_in_production(monkeypatch):
    import pydantic
    import pytest

    monkeypatch.setenv("WARMPOOL_ENV", "prod")
    with pytest.raises(pydantic.ValidationError, match="FLOWER__PASSWORD"):
        Settings()
    monkeypatch.setenv("WARMPOOL_FLOWER__PASSWORD", "s3cret")
    assert Settings().flower.password.get_secret_value() == "s3cret"
    # A secret never shows in a repr, a log line or a validation error.
    assert "s3cret" not in repr(Settings()) and "s3cret" not in str(Settings().flower)


def test_every_setting_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(Settings)


def test_env_example_lists_every_setting():
    from pydantic import BaseModel

    names = set()

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
            else:
                names.add(f"{prefix}{name.upper()}")

    walk(Settings, "WARMPOOL_")
    listed = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
              if line and not line.startswith("#")}
    assert names == listed, f"missing: {names - listed}, stale: {listed - names}"


def compose_environment(values: dict[str, str]) -> dict[str, str]:
    """The warmpool services' environment as docker compose makes it from `values` (its .env / shell)."""
    import re

    def substitute(text: str) -> str:
        def one(m: re.Match) -> str:
            name, op, arg = m.group(1), m.group(2), m.group(3)
            if values.get(name):
                return values[name]
            if op == ":?":
                raise LookupError(f"compose refuses: {arg}")
            return arg or ""
        return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {k: substitute(str(v)) for k, v in compose["x-warmpool"]["environment"].items()}


def test_compose_refuses_its_default_postgres_password(monkeypatch):
    import pydantic
    import pytest

    required = {"FLOWER_PASSWORD": "f-s3cret", "WARMPOOL_SECRET_KEYS": "k" * 43 + "="}
    for name, value in compose_environment(required).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError, match="POSTGRES_PASSWORD") as refused:
        Settings(_env_file=None)  # compose's fallback password: refused, without echoing it or any other secret
    assert "change-me" not in str(refused.value) and "kkkk" not in str(refused.value)

    for name, value in compose_environment(dict(required, POSTGRES_PASSWORD="pg-s3cret")).items():
        monkeypatch.setenv(name, value)
    assert "pg-s3cret@postgres" in Settings().database_url
    monkeypatch.setenv("WARMPOOL_ENV", "dev")  # dev keeps its defaults
    monkeypatch.setenv("WARMPOOL_DATABASE_URL", "postgresql+psycopg://warmpool:change-me@localhost/warmpool")
    assert Settings().env == "dev"


def test_the_image_has_what_compose_runs_and_a_data_dir_its_user_owns():
    import re
    import tomllib

    docker = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER (\S+)", docker, re.M)[-1]
    data_dir = re.search(r"WARMPOOL_DATA_DIR=(\S+)", docker).group(1)
    # beat writes its schedule under the data dir: the image makes it, owned by the user the processes run as.
    assert re.search(rf"install -d -o {user} -g {user} (-m \d+ )?{re.escape(data_dir)}\b", docker), docker
    assert not re.search(r"WORKDIR\s+" + re.escape(data_dir), docker)  # not the root-owned code directory
    # pinned by the lock, with the extras of every process and provider the compose file runs
    install = re.search(r"pip install [^\n]*-c requirements\.lock '\.\[([\w,]+)\]'", docker)
    assert install and "COPY pyproject.toml requirements.lock" in docker, docker
    extras = set(install.group(1).split(","))
    assert extras <= set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "flower" in compose["services"] and "flower" in extras
    enabled = compose_environment({"FLOWER_PASSWORD": "x", "WARMPOOL_SECRET_KEYS": "x"})["WARMPOOL_PROVIDERS__ENABLED"]
    assert set(enabled.split(",")) - {"fake", "local"} <= extras, (enabled, extras)
    # provider credentials named by token_env reach every warmpool process, from a file kept out of git
    files = [e["path"] for e in compose["x-warmpool"]["env_file"]]
    assert files == ["./provider-secrets.env"] and "provider-secrets.env" in (ROOT / ".gitignore").read_text()
    assert "provider-secrets.env" in (ROOT / ".dockerignore").read_text()


def test_migrating_logs_nothing_at_info(tmp_path):
    """`warmpool dev` migrates on every start with logging at INFO: alembic's own plugin and context lines
    were seven lines of noise there."""
    import subprocess
    import sys

    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            f"from app.migrate import upgrade; upgrade('sqlite:///{tmp_path}/x.sqlite3'); print('migrated')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "migrated" and "alembic" not in done.stderr, (done.stdout, done.stderr)
