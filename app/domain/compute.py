"""Runner settings and templates as the domain stores them: checked by the providers' typed models (a
`Catalog` the edges install, since the domain never imports a provider), secret fields encrypted at rest.

A stored runner's `settings` holds the public fields as given, plus `SECRETS_KEY` mapping each secret
field (a `SecretStr` of the provider's model) to its Fernet token. Responses show those fields as '***'.
"""
from __future__ import annotations

from typing import Any, Protocol

from sqlmodel import Session, select

from app import crypto
from app.models import Runner

SECRETS_KEY = "$secrets"
MASK = "***"


class Catalog(Protocol):
    def check_settings(self, provider: str, settings: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """(public settings, secret fields in plain text) of a provider's runner settings, checked by its model
        and the operator's configuration; raises InvalidArgument saying what is wrong and what is allowed."""

    def check_template(self, provider: str, template: Any) -> None:
        """Raise InvalidArgument unless `template` passes the provider's template model."""


_catalog: Catalog | None = None


def install(catalog: Catalog) -> None:
    global _catalog
    _catalog = catalog


def catalog() -> Catalog:
    if _catalog is None:  # fail closed: nothing is stored unchecked
        raise RuntimeError("no compute catalog installed: the edge must call workers.providers.catalog.install()")
    return _catalog


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
