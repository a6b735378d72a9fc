"""An in-process snapshot of the model catalog for the hot path.

The proxy must not query the database per request, so each process holds the
catalog for ``MUXER_CATALOG_CACHE_SECONDS`` and reloads it in a worker thread
when it goes stale. Base URLs and credentials come from the environment at
load time: ``MUXER_<SLUG>_BASE_URL`` overrides a provider's base URL, and the
provider's ``api_key_env`` names the variable that holds its key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db.models import Prefetch
from django.utils import timezone

from muxer_project.cached_loader import CachedLoader

from .models import Model, ModelKind, ModelPrice


@dataclass(frozen=True, slots=True)
class CallTimeouts:
    """Seconds allowed to connect, to the first byte of the answer, and for all of it."""

    connect: float
    first_byte: float
    total: float

    @classmethod
    def defaults(
        cls, *, connect: float | None = None, first_byte: float | None = None, total: float | None = None
    ) -> CallTimeouts:
        return cls(
            connect=connect or settings.MUXER_UPSTREAM_CONNECT_TIMEOUT_SECONDS,
            first_byte=first_byte or settings.MUXER_UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS,
            total=total or settings.MUXER_UPSTREAM_TIMEOUT_SECONDS,
        )


@dataclass(frozen=True, slots=True)
class CatalogModel:
    name: str
    kind: str
    provider: str
    wire_format: str
    base_url: str
    credential: str | None
    input_price_per_mtok_usd: Decimal
    output_price_per_mtok_usd: Decimal
    cached_input_price_per_mtok_usd: Decimal | None
    context_window: int
    max_output_tokens: int
    supports_streaming: bool
    supports_tools: bool
    supports_vision: bool
    supports_json_mode: bool
    created: int
    quality_tier: int = 2
    fallbacks: tuple[str, ...] = ()
    timeouts: CallTimeouts | None = None

    @property
    def call_timeouts(self) -> CallTimeouts:
        return self.timeouts or CallTimeouts.defaults()

    @property
    def configured(self) -> bool:
        """Whether a call can be made: the provider needs no key or has one."""
        return self.credential is not None


@dataclass(frozen=True, slots=True)
class Catalog:
    models: dict[str, CatalogModel]

    def get(self, name: str) -> CatalogModel | None:
        return self.models.get(name)

    def chat_models(self) -> list[CatalogModel]:
        return [m for m in self.models.values() if m.kind == ModelKind.CHAT]


def _load() -> Catalog:
    # Two queries: the models with their providers, and every price already in
    # effect, newest first. A price dated later is picked up by the first reload
    # after it arrives (within MUXER_CATALOG_CACHE_SECONDS).
    in_effect = ModelPrice.objects.filter(effective_from__lte=timezone.now()).order_by("model_id", "-effective_from")
    rows = (
        Model.objects.filter(enabled=True, provider__enabled=True)
        .select_related("provider")
        .prefetch_related(Prefetch("prices", queryset=in_effect, to_attr="prices_in_effect"))
        .order_by("name")
    )
    entries: dict[str, CatalogModel] = {}
    for row in rows:
        provider = row.provider
        price: Model | ModelPrice = row.prices_in_effect[0] if row.prices_in_effect else row
        base_url = os.environ.get(f"MUXER_{provider.slug.upper()}_BASE_URL") or provider.base_url
        credential = os.environ.get(provider.api_key_env) if provider.api_key_env else ""
        entries[row.name] = CatalogModel(
            name=row.name,
            kind=row.kind,
            provider=provider.slug,
            wire_format=provider.wire_format,
            base_url=base_url.rstrip("/"),
            credential=credential,
            input_price_per_mtok_usd=price.input_price_per_mtok_usd,
            output_price_per_mtok_usd=price.output_price_per_mtok_usd,
            cached_input_price_per_mtok_usd=price.cached_input_price_per_mtok_usd,
            context_window=row.context_window,
            max_output_tokens=row.max_output_tokens,
            supports_streaming=row.supports_streaming,
            supports_tools=row.supports_tools,
            supports_vision=row.supports_vision,
            supports_json_mode=row.supports_json_mode,
            created=int(row.created_at.timestamp()),
            quality_tier=row.quality_tier,
            fallbacks=tuple(row.fallbacks or ()),
            timeouts=CallTimeouts.defaults(
                connect=provider.connect_timeout_seconds,
                first_byte=provider.first_byte_timeout_seconds,
                total=provider.total_timeout_seconds,
            ),
        )
    return Catalog(models=entries)


_catalog: CachedLoader[str, Catalog] = CachedLoader(
    "catalog", lambda _key: _load(), lambda: settings.MUXER_CATALOG_CACHE_SECONDS
)


async def get_catalog() -> Catalog:
    return await _catalog.get("catalog")


def get_catalog_sync() -> Catalog:
    return _catalog.get_sync("catalog")


def forget_catalog() -> None:
    _catalog.forget()
