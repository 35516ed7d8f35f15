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
