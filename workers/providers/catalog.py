"""The operator's compute catalog: which providers are offered, the typed check of runner settings and
templates, and the settings an adapter actually runs with (checked tenant settings + decrypted secrets +
the operator's own settings for that provider). Installed into the domain by every edge (`install`)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from app.domain import compute
from app.domain.errors import InvalidArgument, ProviderFailed
from workers.providers.base import ProviderError, ProviderPermanent
from workers.providers.registry import known_providers, provider_class, provider_for


def _offered() -> list[str]:
    from config.settings import get_settings

    return [p for p in get_settings().offered_providers if p in known_providers()]


def _adapter(provider: str) -> type:
    offered = _offered()
    if provider not in offered:
        why = " (local exists only when WARMPOOL_ENV=dev)" if provider == "local" else ""
        raise InvalidArgument(f"provider {provider!r} is not offered by this deployment{why}: offered are "
                              f"{', '.join(offered) or 'none'} (WARMPOOL_PROVIDERS__ENABLED)")
    adapter = provider_class(provider)
    if adapter.settings_model is None or adapter.template_model is None:
        raise InvalidArgument(f"provider {provider!r} declares no typed settings or template model, so it cannot be "
                              "offered to tenants")
    return adapter


def explain(exc: ValidationError, what: str, model: type[BaseModel]) -> str:
    """A validation error as one line saying what was wrong and what is allowed; never echoes a value."""
    operator_only: dict[str, str] = getattr(model, "operator_only", {})
    parts, unknown = [], []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(x) for x in err["loc"])
        key = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden" and key in operator_only:
            parts.append(f"{loc}: {operator_only[key]}")
        elif err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            unknown.append(key)
        else:
            reason = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{loc}: {reason}" if loc else reason)
    if unknown:
        parts.append(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                     f"(allowed: {', '.join(model.model_fields) or 'none'})")
    return f"{what}: " + "; ".join(parts)


def secret_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items()
            if f.annotation is SecretStr or SecretStr in getattr(f.annotation, "__args__", ())]


def _parse(model: type[BaseModel], data: Any, what: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(explain(exc, what, model)) from None


class ProviderCatalog:
    """compute.Catalog over the installed adapters' `settings_model` / `template_model`."""

    def check_settings(self, provider: str, settings: Any) -> tuple[dict[str, Any], dict[str, str]]:
        model = _adapter(provider).settings_model
        parsed = _parse(model, settings, f"runner settings for provider {provider!r}")
        hidden = secret_fields(model)
        public = parsed.model_dump(mode="json", exclude_unset=True, exclude=set(hidden))
        secrets = {name: getattr(parsed, name).get_secret_value() for name in hidden if getattr(parsed, name) is not None}
        return public, secrets

    def check_template(self, provider: str, template: Any) -> None:
        model = _adapter(provider).template_model
        _parse(model, template, f"template for provider {provider!r}")

    def read_logs(self, provider: str, settings: dict[str, Any], runner_id: str, ref: str, lines: int) -> str:
        try:
            return provider_for(provider, settings, key=runner_id).logs(ref, lines)
        except (ProviderError, LookupError) as exc:
            raise ProviderFailed(f"provider {provider!r} could not read the logs of {ref}: {exc}") from None


def operator_settings(provider: str) -> dict[str, Any]:
    """What the operator configured for `provider` (cluster connection, local command, root)."""
    from config.settings import get_settings

    s = get_settings()
    if provider == "local":
        return {"root": str(s.data_dir / "local"), **s.providers.local.model_dump(exclude_defaults=True)}
    if provider == "kubernetes":
        k = s.providers.kubernetes
        return {key: value for key, value in (("kubeconfig", k.kubeconfig), ("context", k.context),
                                              ("in_cluster", k.in_cluster), ("service_account", k.service_account)) if value}
    return {}


def runtime_settings(provider: str, stored: dict[str, Any]) -> dict[str, Any]:
    """The settings an adapter for a stored runner runs with. They are checked again, so a runner whose
    provider, host or namespace the operator has since withdrawn stops working (ProviderPermanent)."""
    from app.crypto import SecretKeyError

    try:
        plain = compute.plain_settings(stored)
        ProviderCatalog().check_settings(provider, plain)
    except InvalidArgument as exc:
        raise ProviderPermanent(exc.message) from None
    except SecretKeyError as exc:
        raise ProviderPermanent(f"runner secrets: {exc}") from None
    return {**plain, **operator_settings(provider)}


def install() -> None:
    compute.install(ProviderCatalog())
