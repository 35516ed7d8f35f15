"""Runner settings and templates as the domain stores them: checked by the providers' typed models (a
`Catalog` the edges install, since the domain never imports a provider), secret fields encrypted at rest;
and an instance's console output, read through the same catalog.

A stored runner's `settings` holds the public fields as given, plus `SECRETS_KEY` mapping each secret
field (a `SecretStr` of the provider's model) to its Fernet token. Responses show those fields as '***'.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlmodel import Session, select

from app import crypto
from app.domain.errors import FailedPrecondition, NotFound
from app.models import Instance, Pool, Runner

SECRETS_KEY = "$secrets"
MASK = "***"


class Catalog(Protocol):
    def check_settings(self, provider: str, settings: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """(public settings, secret fields in plain text) of a provider's runner settings, checked by its model
        and the operator's configuration; raises InvalidArgument saying what is wrong and what is allowed."""

    def check_template(self, provider: str, template: Any) -> None:
        """Raise InvalidArgument unless `template` passes the provider's template model."""

    def read_logs(self, provider: str, settings: dict[str, Any], runner_id: str, ref: str, lines: int) -> str:
        """The last `lines` lines of console output of the provider's resource `ref`, by the adapter of the
        runner whose stored settings are `settings`; raises ProviderFailed saying what went wrong."""


_catalog: Catalog | None = None


def install(catalog: Catalog) -> None:
    global _catalog
    _catalog = catalog


def catalog() -> Catalog:
    if _catalog is None:  # fail closed: nothing is stored unchecked
        raise RuntimeError("no compute catalog installed: the edge must call workers.providers.catalog.install()")
    return _catalog


@dataclass(frozen=True, slots=True)
class LogSource:
    """Where an instance's console output is: its runner (provider + stored settings) and its resource."""

    instance_id: str
    runner_id: str
    provider: str
    settings: dict[str, Any]  # as stored: secrets encrypted
    ref: str


def log_source(org_id: str, instance_id: str, *, session: Session) -> LogSource:
    """The runner whose adapter holds the instance's console output, and the provider's reference."""
    inst = session.exec(select(Instance).where(Instance.id == instance_id, Instance.organization_id == org_id)).first()
    if inst is None:
        raise NotFound(f"instance {instance_id} not found")
    if not inst.provider_ref:
        raise FailedPrecondition(f"instance {instance_id} has no provider resource yet (state {inst.state}); "
                                 "try again once it is provisioning")
    pool = session.get(Pool, inst.pool_id)
    runner = session.get(Runner, pool.runner_id) if pool is not None and pool.runner_id else None
    if runner is None:
        raise FailedPrecondition(f"the pool of instance {instance_id} has no runner any more")
    return LogSource(inst.id, runner.id, runner.provider, dict(runner.settings or {}), inst.provider_ref)


def read_logs(source: LogSource, lines: int) -> str:
    """A provider call: blocking, and outside any transaction (it may take seconds)."""
    return catalog().read_logs(source.provider, source.settings, source.runner_id, source.ref, lines)


def stored_settings(provider: str, settings: Any) -> dict[str, Any]:
    """The form a runner's settings are stored in: checked, secrets encrypted."""
    public, secrets = catalog().check_settings(provider, settings)
    if secrets:
        public[SECRETS_KEY] = {name: crypto.encrypt(value) for name, value in secrets.items()}
    return public


def check_template(provider: str, template: Any) -> None:
    catalog().check_template(provider, template)


def public_settings(stored: dict[str, Any]) -> dict[str, Any]:
    """Stored settings as responses show them: each secret field reads '***'."""
    out = {k: v for k, v in (stored or {}).items() if k != SECRETS_KEY}
    out.update({name: MASK for name in (stored or {}).get(SECRETS_KEY) or {}})
    return out


def plain_settings(stored: dict[str, Any]) -> dict[str, Any]:
    """Stored settings with their secrets decrypted: for building an adapter, never for a response or a log."""
    out = {k: v for k, v in (stored or {}).items() if k != SECRETS_KEY}
    out.update({name: crypto.decrypt(token) for name, token in ((stored or {}).get(SECRETS_KEY) or {}).items()})
    return out


def rotate_secrets(*, session: Session) -> tuple[int, int]:
    """Re-encrypt every runner's secrets with the newest key; (runners changed, secrets re-encrypted).
    Rows are locked so a concurrent rotation cannot write back an older ciphertext."""
    runners = session.exec(select(Runner).order_by(Runner.id).with_for_update()).all()
    changed = rotated = 0
    for runner in runners:
        secrets = (runner.settings or {}).get(SECRETS_KEY) or {}
        if not secrets:
            continue
        fresh = {name: crypto.rotate(token) for name, token in secrets.items()}
        runner.settings = {**runner.settings, SECRETS_KEY: fresh}  # a new dict: the JSON column sees the change
        session.add(runner)
        changed, rotated = changed + 1, rotated + len(fresh)
    session.flush()
    return changed, rotated
