from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from django.db import transaction

from accounts.models import Organization, User
from audit.services import audit_event_record

from . import crypto
from .models import Model, Provider, ProviderCredential, QualityTier

# The built-in fake provider: the fake upstream server, for development, tests
# and benchmarks. MUXER_FAKE_BASE_URL points it elsewhere. Priced so that
# `auto` prefers it whenever it is enabled.
FAKE_PROVIDER: dict[str, Any] = {
    "slug": "fake",
    "name": "Fake upstream (development)",
    "wire_format": "openai",
    "base_url": "http://127.0.0.1:9100/v1",
    "api_key_env": "",
    "pricing_url": "",
}
FAKE_MODELS: list[dict[str, Any]] = [
    {
        "provider": "fake",
        "name": name,
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal(price_in),
        "output_price_per_mtok_usd": Decimal(price_out),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 128_000,
        "max_output_tokens": 16_384,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "",
        "price_as_of": None,
    }
    for name, price_in, price_out in (
        ("fake-small", "0.01", "0.02"),
        ("fake-medium", "0.10", "0.20"),
        ("fake-large", "1.00", "2.00"),
    )
]
FAKE_QUALITY_TIERS = {"fake-small": 1, "fake-medium": 2, "fake-large": 3}

_PROVIDER_FIELDS = ("name", "wire_format", "base_url", "api_key_env", "pricing_url")
_MODEL_FIELDS = (
    "kind",
    "input_price_per_mtok_usd",
    "output_price_per_mtok_usd",
    "cached_input_price_per_mtok_usd",
    "context_window",
    "max_output_tokens",
    "supports_streaming",
    "supports_tools",
    "supports_vision",
    "supports_json_mode",
    "price_source",
    "price_as_of",
)


@transaction.atomic
def catalog_sync(*, providers: Iterable[Mapping[str, Any]], models: Iterable[Mapping[str, Any]]) -> int:
    """Upsert providers and models from seed data; keeps operators' ``enabled`` choices. Returns models touched."""
    by_slug: dict[str, Provider] = {}
    for seed in providers:
        provider, _ = Provider.objects.update_or_create(
            slug=seed["slug"], defaults={f: seed[f] for f in _PROVIDER_FIELDS}
        )
        by_slug[provider.slug] = provider
    count = 0
    for seed in models:
        provider = by_slug.get(seed["provider"]) or Provider.objects.get(slug=seed["provider"])
        tier = seed.get("quality_tier") or quality_tier_default(seed["name"])
        Model.objects.update_or_create(
            name=seed["name"],
            defaults={"provider": provider, "quality_tier": tier, **{f: seed.get(f) for f in _MODEL_FIELDS}},
        )
        count += 1
    return count


def quality_tier_default(name: str) -> int:
    from .catalog_seed import QUALITY_TIERS

    return QUALITY_TIERS.get(name) or FAKE_QUALITY_TIERS.get(name) or QualityTier.STANDARD


def catalog_sync_defaults() -> int:
    from .catalog_seed import MODELS, PROVIDERS

    return catalog_sync(providers=[*PROVIDERS, FAKE_PROVIDER], models=[*MODELS, *FAKE_MODELS])


@transaction.atomic
def provider_credential_set(
    *, organization: Organization, provider: Provider, api_key: str, actor: User | None
) -> ProviderCredential:
    """Store (or replace) an organization's own key for a provider, encrypted."""
    credential, created = ProviderCredential.objects.update_or_create(
        organization=organization,
        provider=provider,
        defaults={"encrypted_key": crypto.encrypt(api_key), "last_four": api_key[-4:], "created_by": actor},
    )
    audit_event_record(
        action="provider_credential.set" if created else "provider_credential.replaced",
        organization=organization,
        actor=actor,
        target_type="provider_credential",
        target_id=credential.pk,
        metadata={"provider": provider.slug, "key": credential.masked},
    )
    return credential


@transaction.atomic
def provider_credential_delete(*, credential: ProviderCredential, actor: User | None) -> None:
    audit_event_record(
        action="provider_credential.deleted",
        organization=credential.organization,
        actor=actor,
        target_type="provider_credential",
        target_id=credential.pk,
        metadata={"provider": credential.provider.slug, "key": credential.masked},
    )
    credential.delete()


@transaction.atomic
def provider_credentials_rotate() -> int:
    """Re-encrypt every stored provider key with the newest Fernet key. Returns rows rotated."""
    count = 0
    for credential in ProviderCredential.objects.select_for_update().iterator():
        credential.encrypted_key = crypto.rotate(credential.encrypted_key)
        credential.save(update_fields=["encrypted_key"])
        count += 1
    return count
