"""Seed data for the ModelMuxer provider/model catalog.

Plain, typed data only: ``PROVIDERS`` and ``MODELS``. Prices are USD list prices
per one million tokens (standard/on-demand tier, no batch, flex, priority or
regional uplift), stored as exact ``Decimal`` values built from strings.

Checked on 2026-11-25 against stored copies of public pages (no live fetch):

* OpenAI: developers.openai.com model pages and deprecations page; GPT-6 launch
  pricing as reported by docs.litellm.ai and provider price trackers.
* Anthropic: platform.claude.com pricing page, per-model overview pages and
  model-deprecations page.
* Google: ai.google.dev Gemini pricing page (transcript read 2026-10-07),
  Gemini deprecations page, model pages.
* Mistral: docs.mistral.ai model cards, Mistral pricing as summarised by
  developer.puter.com (June 2026).
* Groq: console.groq.com models/deprecations pages and groq.com/pricing as
  cited by tokenmix.ai (2026-06-04) and braintrust-proxy catalog issues.
* Together AI: together.ai pricing as summarised by api-evangelist (2026-05-08)
  and models.dev-derived tables.
* Cohere: cohere.com/pricing (capture dated 2026-11-11), docs.cohere.com
  changelog and deprecations.

Each row carries ``price_source`` (the page the figure was checked against)
and ``price_as_of`` (the date of that page version, or, for undated pages, the
date the price is believed to have taken effect; such rows say so in a
comment). Figures that could not be confirmed from a stored page keep the
best-known public list price and are marked ``# unverified``.

Selection rule: every model below is one the provider's API still accepts on
2026-11-25. Models with an announced shutdown are kept (traffic and billing
still need them until then) and carry a ``# DEPRECATED`` comment with the
date. Already shut-down models are left out; see the list at the end of this
module. Model ids are globally unique in the catalog, so a model served by
several providers (``openai/gpt-oss-120b``) is seeded once, under Groq.

Tiered prices: only the base tier is seeded; the higher tier is noted in a
comment (Gemini Pro > 200k-token prompts, OpenAI GPT-6 > 272k-token prompts,
Claude Haiku 5.5 > 100k-token prompts).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal, TypedDict

ProviderSlug = Literal["openai", "anthropic", "mistral", "gemini", "groq", "together", "cohere"]
WireFormatName = Literal["openai", "anthropic", "gemini", "cohere"]
ModelKindName = Literal["chat", "embedding"]


class ProviderSeed(TypedDict):
    slug: ProviderSlug
    name: str
    wire_format: WireFormatName
    base_url: str
    api_key_env: str
    pricing_url: str


class ModelSeed(TypedDict):
    provider: ProviderSlug
    name: str
    kind: ModelKindName
    input_price_per_mtok_usd: Decimal
    output_price_per_mtok_usd: Decimal
    cached_input_price_per_mtok_usd: Decimal | None
    context_window: int
    max_output_tokens: int
    supports_streaming: bool
    supports_tools: bool
    supports_vision: bool
    supports_json_mode: bool
    price_source: str
    price_as_of: date


PROVIDERS: list[ProviderSeed] = [
    {
        "slug": "openai",
        "name": "OpenAI",
        "wire_format": "openai",
        "base_url": "https://api.openai.com/v1",
        "api_key_env": "OPENAI_API_KEY",
        "pricing_url": "https://developers.openai.com/api/docs/pricing",
    },
    {
        "slug": "anthropic",
        "name": "Anthropic",
        "wire_format": "anthropic",
        "base_url": "https://api.anthropic.com/v1",
        "api_key_env": "ANTHROPIC_API_KEY",
        "pricing_url": "https://platform.claude.com/docs/en/about-claude/pricing",
    },
    {
        "slug": "mistral",
        "name": "Mistral AI",
        "wire_format": "openai",
        "base_url": "https://api.mistral.ai/v1",
        "api_key_env": "MISTRAL_API_KEY",
        "pricing_url": "https://mistral.ai/pricing#api-pricing",
    },
    {
        "slug": "gemini",
        "name": "Google Gemini",
        "wire_format": "gemini",
        "base_url": "https://generativelanguage.googleapis.com/v1beta",
        "api_key_env": "GEMINI_API_KEY",
        "pricing_url": "https://ai.google.dev/gemini-api/docs/pricing",
    },
    {
        "slug": "groq",
        "name": "Groq",
        "wire_format": "openai",
        "base_url": "https://api.groq.com/openai/v1",
        "api_key_env": "GROQ_API_KEY",
        "pricing_url": "https://groq.com/pricing",
    },
    {
        "slug": "together",
        "name": "Together AI",
        "wire_format": "openai",
        "base_url": "https://api.together.xyz/v1",
        "api_key_env": "TOGETHER_API_KEY",
        "pricing_url": "https://www.together.ai/pricing",
    },
    {
        "slug": "cohere",
        "name": "Cohere",
        "wire_format": "cohere",
        "base_url": "https://api.cohere.com/v2",
        "api_key_env": "COHERE_API_KEY",
        "pricing_url": "https://cohere.com/pricing",
    },
]


MODELS: list[ModelSeed] = [
    # ------------------------------------------------------------------ OpenAI
    # GPT-6 family. Above 272k input tokens per request OpenAI bills 2x input
    # and cached input and 1.5x output for the whole request; base tier seeded.
    {
        "provider": "openai",
        "name": "gpt-6-astra",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("10.00"),
        "output_price_per_mtok_usd": Decimal("50.00"),
        "cached_input_price_per_mtok_usd": Decimal("1.00"),
        "context_window": 1_050_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://developers.openai.com/api/docs/models/gpt-6-astra",
        # Model page is undated; date is the launch/effective date (2026-09-03).
        "price_as_of": date(2026, 9, 3),
    },
    {
        "provider": "openai",
        "name": "gpt-6-sol",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("2.00"),
        "output_price_per_mtok_usd": Decimal("10.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.20"),
        "context_window": 1_050_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://docs.litellm.ai/blog/gpt_6_sol_luna",
        "price_as_of": date(2026, 9, 22),
    },
    {
        "provider": "openai",
        "name": "gpt-6-luna",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.10"),
        "output_price_per_mtok_usd": Decimal("0.50"),
        "cached_input_price_per_mtok_usd": Decimal("0.01"),
        "context_window": 1_050_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://docs.litellm.ai/blog/gpt_6_sol_luna",
        "price_as_of": date(2026, 9, 22),
    },
    # DEPRECATED: gpt-5 shuts down 2026-12-11 (replacement gpt-6.1-sol).
    {
        "provider": "openai",
        "name": "gpt-5",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("1.25"),
        "output_price_per_mtok_usd": Decimal("10.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.125"),
        "context_window": 400_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://developers.openai.com/api/docs/models/gpt-5.1",
        # Undated model page (GPT-5 row of its comparison table); date is the
        # GPT-5 launch, when this price took effect.
        "price_as_of": date(2025, 8, 7),
    },
    # DEPRECATED: gpt-5-mini shuts down 2026-12-11 (replacement gpt-6.1-terra).
    {
        "provider": "openai",
        "name": "gpt-5-mini",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.25"),
        "output_price_per_mtok_usd": Decimal("2.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.025"),
        "context_window": 400_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://developers.openai.com/api/docs/models/gpt-5-mini",
        # Undated model page; date is the launch, when this price took effect.
        "price_as_of": date(2025, 8, 7),
    },
    # DEPRECATED: gpt-5-nano shuts down 2026-12-11.
    {
        "provider": "openai",
        "name": "gpt-5-nano",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.05"),
        "output_price_per_mtok_usd": Decimal("0.40"),
        "cached_input_price_per_mtok_usd": Decimal("0.005"),
        "context_window": 400_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://developers.openai.com/api/docs/models/gpt-5-nano",
        # Undated model page; date is the launch, when this price took effect.
        "price_as_of": date(2025, 8, 7),
    },
    # DEPRECATED: o3 shuts down 2026-12-11 (replacement gpt-5.6-sol / gpt-6.x).
    {
        "provider": "openai",
        "name": "o3",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("2.00"),
        "output_price_per_mtok_usd": Decimal("8.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.50"),  # unverified
        "context_window": 200_000,
        "max_output_tokens": 100_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://deploybase.ai/articles/openai-pricing",
        # Page dated March 2026; $2/$8 took effect with the 2025-06-10 cut.
        "price_as_of": date(2026, 3, 21),
    },
    # DEPRECATED: gpt-4.1 shuts down 2027-01-14 (replacement gpt-6-luna).
    {
        "provider": "openai",
        "name": "gpt-4.1",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("2.00"),
        "output_price_per_mtok_usd": Decimal("8.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.50"),
        "context_window": 1_047_576,
        "max_output_tokens": 32_768,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://vercel.com/ai-gateway/models/gpt-4.1/providers",
        # Undated gateway page; date is the GPT-4.1 launch, when it took effect.
        "price_as_of": date(2025, 4, 14),
    },
    # DEPRECATED: gpt-4.1-mini shuts down 2027-01-14 (replacement gpt-6-luna).
    {
        "provider": "openai",
        "name": "gpt-4.1-mini",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.40"),
        "output_price_per_mtok_usd": Decimal("1.60"),
        "cached_input_price_per_mtok_usd": Decimal("0.10"),
        "context_window": 1_047_576,
        "max_output_tokens": 32_768,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://vercel.com/ai-gateway/models/gpt-4.1-mini/api",
        # Undated gateway page; date is the GPT-4.1 launch, when it took effect.
        "price_as_of": date(2025, 4, 14),
    },
    # DEPRECATED: gpt-4o shuts down 2027-01-14 (replacement gpt-6-luna).
    {
        "provider": "openai",
        "name": "gpt-4o",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("2.50"),
        "output_price_per_mtok_usd": Decimal("10.00"),
        "cached_input_price_per_mtok_usd": Decimal("1.25"),
        "context_window": 128_000,
        "max_output_tokens": 16_384,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://github.com/CommitBrief/commitbrief/wiki/Provider-OpenAI",
        "price_as_of": date(2026, 5, 27),
    },
    # DEPRECATED: gpt-4o-mini shuts down 2027-01-14 (replacement gpt-6-luna).
    {
        "provider": "openai",
        "name": "gpt-4o-mini",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.15"),
        "output_price_per_mtok_usd": Decimal("0.60"),
        "cached_input_price_per_mtok_usd": Decimal("0.075"),
        "context_window": 128_000,
        "max_output_tokens": 16_384,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://github.com/CommitBrief/commitbrief/wiki/Provider-OpenAI",
        "price_as_of": date(2026, 5, 27),
    },
    {
        "provider": "openai",
        "name": "text-embedding-3-small",
        "kind": "embedding",
        "input_price_per_mtok_usd": Decimal("0.02"),
        "output_price_per_mtok_usd": Decimal(0),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 8_191,
        "max_output_tokens": 0,
        "supports_streaming": False,
        "supports_tools": False,
        "supports_vision": False,
        "supports_json_mode": False,
        "price_source": "https://tokenmath.io/openai-api-pricing-explained",
        "price_as_of": date(2026, 6, 21),
    },
    {
        "provider": "openai",
        "name": "text-embedding-3-large",
        "kind": "embedding",
        "input_price_per_mtok_usd": Decimal("0.13"),
        "output_price_per_mtok_usd": Decimal(0),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 8_191,
        "max_output_tokens": 0,
        "supports_streaming": False,
        "supports_tools": False,
        "supports_vision": False,
        "supports_json_mode": False,
        "price_source": "https://chatgptpricing-akr.pages.dev/api-pricing",
        # Undated page; date is the text-embedding-3 launch, when it took effect.
        "price_as_of": date(2024, 1, 25),
    },
    # --------------------------------------------------------------- Anthropic
    # cached_input = "cache hits and refreshes" (cache read). 5m/1h cache
    # writes are billed at 1.25x/2x base input and are not modelled here.
    {
        "provider": "anthropic",
        "name": "claude-fable-5-1",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("10.00"),
        "output_price_per_mtok_usd": Decimal("50.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.25"),
        "context_window": 1_000_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://platform.claude.com/docs/en/about-claude/pricing",
        # Pricing page is undated; date of the claudit re-check of that page.
        "price_as_of": date(2026, 10, 24),
    },
    {
        "provider": "anthropic",
        "name": "claude-opus-5-5",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("4.00"),
        "output_price_per_mtok_usd": Decimal("20.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.20"),
        "context_window": 1_000_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://platform.claude.com/docs/en/models/opus-5-5/overview",
        # Overview page is undated; date is the release, when it took effect.
        "price_as_of": date(2026, 9, 22),
    },
    {
        "provider": "anthropic",
        "name": "claude-sonnet-5-5",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("2.00"),
        "output_price_per_mtok_usd": Decimal("10.00"),
        # Cache reads cut from $0.20 to $0.10 on 2026-10-07; the stored model
        # overview page still shows $0.20 (pre-cut snapshot).
        "cached_input_price_per_mtok_usd": Decimal("0.10"),
        "context_window": 1_000_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://platform.claude.com/docs/en/about-claude/pricing",
        "price_as_of": date(2026, 10, 7),
    },
    {
        "provider": "anthropic",
        "name": "claude-haiku-5-5",
        "kind": "chat",
        # Base tier: prompts <= 100k tokens (input + cache reads + writes).
        # Prompts > 100k: $0.50 in / $2.50 out / $0.05 cache read, whole request.
        "input_price_per_mtok_usd": Decimal("0.10"),
        "output_price_per_mtok_usd": Decimal("0.50"),
        "cached_input_price_per_mtok_usd": Decimal("0.01"),
        "context_window": 1_000_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://platform.claude.com/docs/en/models/haiku-5-5/overview",
        "price_as_of": date(2026, 10, 7),
    },
    # Legacy (no retirement date announced).
    {
        "provider": "anthropic",
        "name": "claude-opus-4-8",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("5.00"),
        "output_price_per_mtok_usd": Decimal("25.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.50"),
        "context_window": 1_000_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://platform.claude.com/docs/en/models/opus-4-8/overview",
        # Overview page is undated; date is the release, when it took effect.
        "price_as_of": date(2026, 5, 28),
    },
    # Legacy (no retirement date announced).
    {
        "provider": "anthropic",
        "name": "claude-sonnet-4-6",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("3.00"),
        "output_price_per_mtok_usd": Decimal("15.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.30"),
        "context_window": 1_000_000,
        "max_output_tokens": 128_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://platform.claude.com/docs/en/models/sonnet-4-6/overview",
        # Overview page is undated; date is the release, when it took effect.
        "price_as_of": date(2026, 2, 17),
    },
    # DEPRECATED: claude-sonnet-4-5 retires 2026-11-30 (replacement
    # claude-sonnet-5-5). Alias of claude-sonnet-4-5-20250929.
    {
        "provider": "anthropic",
        "name": "claude-sonnet-4-5",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("3.00"),
        "output_price_per_mtok_usd": Decimal("15.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.30"),
        "context_window": 200_000,
        "max_output_tokens": 64_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://platform.claude.com/docs/en/models/sonnet-4-5/overview",
        # Overview page is undated; date is the release, when it took effect.
        "price_as_of": date(2025, 9, 29),
    },
    # Legacy (no retirement date announced). Alias of claude-haiku-4-5-20251001.
    {
        "provider": "anthropic",
        "name": "claude-haiku-4-5",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("1.00"),
        "output_price_per_mtok_usd": Decimal("5.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.10"),
        "context_window": 200_000,
        "max_output_tokens": 64_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://platform.claude.com/docs/en/models/haiku-4-5/overview",
        # Overview page is undated; date is the release, when it took effect.
        "price_as_of": date(2025, 10, 15),
    },
    # ------------------------------------------------------------------ Gemini
    # Prices from the Gemini API pricing page as transcribed on 2026-10-07
    # (raw.githubusercontent.com/api-evangelist/deepmind/.../plans/
    # deepmind-plans-pricing.yml); paid tier. cached_input = context-cache read.
    {
        "provider": "gemini",
        "name": "gemini-3.8-flash",
        "kind": "chat",
        # PROMOTIONAL: $0.75 / $3.75 through 2026-12-31; the page lists
        # $1.50 / $7.50 starting 2027-01-01. Update this row then.
        "input_price_per_mtok_usd": Decimal("0.75"),
        "output_price_per_mtok_usd": Decimal("3.75"),
        "cached_input_price_per_mtok_usd": Decimal("0.075"),
        "context_window": 1_048_576,
        "max_output_tokens": 65_536,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://ai.google.dev/gemini-api/docs/pricing",
        "price_as_of": date(2026, 10, 7),
    },
    {
        "provider": "gemini",
        "name": "gemini-3.5-flash",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("1.50"),
        "output_price_per_mtok_usd": Decimal("9.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.15"),  # unverified
        "context_window": 1_048_576,  # unverified
        "max_output_tokens": 65_536,  # unverified
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://ai.google.dev/gemini-api/docs/pricing",
        "price_as_of": date(2026, 10, 7),
    },
    {
        "provider": "gemini",
        "name": "gemini-3.5-flash-lite",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.30"),
        "output_price_per_mtok_usd": Decimal("2.50"),
        "cached_input_price_per_mtok_usd": Decimal("0.03"),  # unverified
        "context_window": 1_048_576,
        "max_output_tokens": 65_536,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://ai.google.dev/gemini-api/docs/pricing",
        "price_as_of": date(2026, 10, 7),
    },
    # Preview model (no shutdown date announced). Base tier: prompts <= 200k
    # tokens; prompts > 200k are $4.00 in / $18.00 out.
    {
        "provider": "gemini",
        "name": "gemini-3.1-pro-preview",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("2.00"),
        "output_price_per_mtok_usd": Decimal("12.00"),
        "cached_input_price_per_mtok_usd": Decimal("0.20"),  # unverified
        "context_window": 1_048_576,  # unverified
        "max_output_tokens": 65_536,  # unverified
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://ai.google.dev/gemini-api/docs/pricing",
        "price_as_of": date(2026, 10, 7),
    },
    # Not deprecated ("remains available until further notice" per the
    # deprecations page as read 2026-11-10).
    {
        "provider": "gemini",
        "name": "gemini-2.5-flash-lite",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.10"),  # unverified (output only)
        "output_price_per_mtok_usd": Decimal("0.40"),
        "cached_input_price_per_mtok_usd": Decimal("0.01"),  # unverified
        "context_window": 1_048_576,
        "max_output_tokens": 65_536,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://ai.google.dev/gemini-api/docs/pricing",
        "price_as_of": date(2026, 10, 7),
    },
    # DEPRECATED: gemini-2.5-pro shuts down 2026-12-01 (requests then route to
    # gemini-3.8-flash); already limited to existing users. Base tier: prompts
    # <= 200k tokens; prompts > 200k are $2.50 in / $15.00 out.
    {
        "provider": "gemini",
        "name": "gemini-2.5-pro",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("1.25"),
        "output_price_per_mtok_usd": Decimal("10.00"),  # unverified
        "cached_input_price_per_mtok_usd": Decimal("0.125"),  # unverified
        "context_window": 1_048_576,
        "max_output_tokens": 65_536,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://ai.google.dev/gemini-api/docs/pricing",
        "price_as_of": date(2026, 10, 7),
    },
    # DEPRECATED: gemini-2.5-flash shuts down 2026-12-01 (requests then route
    # to gemini-3.5-flash-lite).
    {
        "provider": "gemini",
        "name": "gemini-2.5-flash",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.30"),  # text/image/video; audio $1.00
        "output_price_per_mtok_usd": Decimal("2.50"),  # unverified
        "cached_input_price_per_mtok_usd": Decimal("0.03"),  # unverified
        "context_window": 1_048_576,
        "max_output_tokens": 65_536,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://ai.google.dev/gemini-api/docs/pricing",
        "price_as_of": date(2026, 10, 7),
    },
    {
        "provider": "gemini",
        "name": "gemini-embedding-001",
        "kind": "embedding",
        "input_price_per_mtok_usd": Decimal("0.15"),
        "output_price_per_mtok_usd": Decimal(0),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 2_048,
        "max_output_tokens": 0,
        "supports_streaming": False,
        "supports_tools": False,
        "supports_vision": False,
        "supports_json_mode": False,
        "price_source": "https://developers.googleblog.com/en/gemini-embedding-available-gemini-api/",
        # GA announcement is the price's effective date (believed 2025-07-14).
        "price_as_of": date(2025, 7, 14),
    },
    # ----------------------------------------------------------------- Mistral
    # Mistral publishes no cached-input price and no output cap separate from
    # the context window, so max_output_tokens = context_window (unverified).
    {
        "provider": "mistral",
        "name": "mistral-medium-3.5",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("1.50"),
        "output_price_per_mtok_usd": Decimal("7.50"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 262_144,
        "max_output_tokens": 262_144,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://developer.puter.com/tutorials/mistral-api-pricing/",
        # Article dated June 2026 (no day given); 1st of the month used.
        "price_as_of": date(2026, 6, 1),
    },
    {
        "provider": "mistral",
        "name": "mistral-large-2512",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.50"),
        "output_price_per_mtok_usd": Decimal("1.50"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 262_144,
        "max_output_tokens": 262_144,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://developer.puter.com/tutorials/mistral-api-pricing/",
        # Article dated June 2026 (no day given); 1st of the month used.
        "price_as_of": date(2026, 6, 1),
    },
    {
        "provider": "mistral",
        "name": "mistral-small-2603",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.10"),
        "output_price_per_mtok_usd": Decimal("0.30"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 262_144,  # unverified
        "max_output_tokens": 262_144,  # unverified
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://developer.puter.com/tutorials/mistral-api-pricing/",
        # Article dated June 2026 (no day given); 1st of the month used.
        "price_as_of": date(2026, 6, 1),
    },
    {
        "provider": "mistral",
        "name": "codestral-2508",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.30"),
        "output_price_per_mtok_usd": Decimal("0.90"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 256_000,
        "max_output_tokens": 256_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://developer.puter.com/tutorials/mistral-api-pricing/",
        # Article dated June 2026 (no day given); 1st of the month used.
        "price_as_of": date(2026, 6, 1),
    },
    {
        "provider": "mistral",
        "name": "ministral-8b-2512",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.15"),
        "output_price_per_mtok_usd": Decimal("0.15"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 262_144,
        "max_output_tokens": 262_144,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,  # unverified
        "supports_json_mode": True,
        "price_source": "https://developer.puter.com/tutorials/mistral-api-pricing/",
        # Article dated June 2026 (no day given); 1st of the month used.
        "price_as_of": date(2026, 6, 1),
    },
    {
        "provider": "mistral",
        "name": "mistral-embed",
        "kind": "embedding",
        "input_price_per_mtok_usd": Decimal("0.10"),  # unverified
        "output_price_per_mtok_usd": Decimal(0),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 8_192,
        "max_output_tokens": 0,
        "supports_streaming": False,
        "supports_tools": False,
        "supports_vision": False,
        "supports_json_mode": False,
        "price_source": "https://mistral.ai/pricing#api-pricing",
        # Not confirmed on a stored 2026 page; date the price is believed to
        # have taken effect (mistral-embed launch, v23.12).
        "price_as_of": date(2023, 12, 11),
    },
    # -------------------------------------------------------------------- Groq
    {
        "provider": "groq",
        "name": "openai/gpt-oss-120b",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.15"),
        "output_price_per_mtok_usd": Decimal("0.60"),
        "cached_input_price_per_mtok_usd": Decimal("0.075"),
        "context_window": 131_072,
        "max_output_tokens": 65_536,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://tokenmix.ai/blog/groq-api-access-2026-free-tier-rate-limits",
        "price_as_of": date(2026, 6, 4),
    },
    {
        "provider": "groq",
        "name": "openai/gpt-oss-20b",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.075"),
        "output_price_per_mtok_usd": Decimal("0.30"),
        "cached_input_price_per_mtok_usd": Decimal("0.0375"),  # unverified
        "context_window": 131_072,
        "max_output_tokens": 65_536,  # unverified
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://docs.rs/crate/aicost/latest/source/src/data/data_groq.rs",
        # Undated source; date is the model's launch on Groq, believed to be
        # when this price took effect.
        "price_as_of": date(2025, 8, 5),
    },
    # Preview/experimental on Groq; a recommended replacement for the
    # decommissioned llama-3.3-70b-versatile.
    {
        "provider": "groq",
        "name": "qwen/qwen3.6-27b",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.60"),
        "output_price_per_mtok_usd": Decimal("3.00"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 131_072,
        "max_output_tokens": 16_384,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://github.com/braintrustdata/braintrust-proxy/issues/1073",
        # Issue undated in the stored copy; the model was added to Groq around
        # 2026-06-22, believed to be when this price took effect.
        "price_as_of": date(2026, 6, 22),
    },
    # Availability in November 2026 not confirmed on a stored page.
    {
        "provider": "groq",
        "name": "llama-3.1-8b-instant",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.05"),
        "output_price_per_mtok_usd": Decimal("0.08"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 131_072,
        "max_output_tokens": 131_072,  # unverified
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://docs.rs/crate/aicost/latest/source/src/data/data_groq.rs",
        # Undated source; date is the Llama 3.1 launch on Groq, believed to be
        # when this price took effect.
        "price_as_of": date(2024, 7, 23),
    },
    # Availability in November 2026 not confirmed on a stored page.
    {
        "provider": "groq",
        "name": "meta-llama/llama-4-scout-17b-16e-instruct",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.11"),
        "output_price_per_mtok_usd": Decimal("0.34"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 131_072,
        "max_output_tokens": 8_192,  # unverified
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "price_source": "https://docs.rs/crate/aicost/latest/source/src/data/data_groq.rs",
        # Undated source; date is the Llama 4 launch on Groq, believed to be
        # when this price took effect.
        "price_as_of": date(2025, 4, 5),
    },
    # ---------------------------------------------------------------- Together
    # Together publishes no cached-input price and no output cap separate from
    # the context window, so max_output_tokens = context_window (unverified).
    # openai/gpt-oss-120b ($0.15 / $0.60 on Together too) is seeded under Groq
    # only, because model names are unique in the catalog.
    {
        "provider": "together",
        "name": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.88"),
        "output_price_per_mtok_usd": Decimal("0.88"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 131_072,
        "max_output_tokens": 131_072,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://raw.githubusercontent.com/api-evangelist/together-ai/main/plans/together-ai-plans-pricing.yml",
        "price_as_of": date(2026, 5, 8),
    },
    {
        "provider": "together",
        "name": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.18"),  # unverified
        "output_price_per_mtok_usd": Decimal("0.18"),  # unverified
        "cached_input_price_per_mtok_usd": None,
        "context_window": 131_072,
        "max_output_tokens": 131_072,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://www.together.ai/pricing",
        # Not confirmed on a stored page; date the price is believed to have
        # taken effect (Llama 3.1 launch on Together).
        "price_as_of": date(2024, 7, 23),
    },
    {
        "provider": "together",
        "name": "deepseek-ai/DeepSeek-V3.1",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.60"),
        # Stored table rounds output to "$2"; exact $1.70 unverified.
        "output_price_per_mtok_usd": Decimal("1.70"),  # unverified
        "cached_input_price_per_mtok_usd": None,
        "context_window": 131_072,
        "max_output_tokens": 131_072,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://mastra.ai/models/providers/togetherai",
        # Undated page; date is the model's launch, believed to be when this
        # price took effect.
        "price_as_of": date(2025, 8, 21),
    },
    {
        "provider": "together",
        "name": "deepseek-ai/DeepSeek-R1",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("3.00"),
        "output_price_per_mtok_usd": Decimal("7.00"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 163_840,
        "max_output_tokens": 163_840,
        "supports_streaming": True,
        "supports_tools": False,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://mastra.ai/models/providers/togetherai",
        # Undated page; api-evangelist's 2026-05-08 Together summary agrees
        # ("$1.40-$7.00 ... DeepSeek-R1"), so that date is used.
        "price_as_of": date(2026, 5, 8),
    },
    {
        "provider": "together",
        "name": "Qwen/Qwen3-235B-A22B-Instruct-2507-tput",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.20"),  # unverified
        "output_price_per_mtok_usd": Decimal("0.60"),  # unverified
        "cached_input_price_per_mtok_usd": None,
        "context_window": 262_144,  # unverified
        "max_output_tokens": 262_144,  # unverified
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://www.together.ai/pricing",
        # Not confirmed on a stored page; date the price is believed to have
        # taken effect (model launch on Together).
        "price_as_of": date(2025, 7, 22),
    },
    # ------------------------------------------------------------------ Cohere
    # Cohere publishes no cached-input price.
    # Still a recommended active model in Cohere's 2026-04-04 retirement notice.
    {
        "provider": "cohere",
        "name": "command-a-03-2025",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("2.50"),
        "output_price_per_mtok_usd": Decimal("10.00"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 256_000,
        "max_output_tokens": 8_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://www.lava.so/docs/gateway/providers/cohere",
        # Undated page; date is the model launch, when this price took effect.
        "price_as_of": date(2025, 3, 13),
    },
    # Legacy: Cohere lists Command R+ at existing-customer pricing only.
    {
        "provider": "cohere",
        "name": "command-r-plus-08-2024",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("2.50"),
        "output_price_per_mtok_usd": Decimal("10.00"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 128_000,
        "max_output_tokens": 4_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://www.lava.so/docs/gateway/providers/cohere",
        # Undated page; date is the model launch, when this price took effect.
        "price_as_of": date(2024, 8, 30),
    },
    {
        "provider": "cohere",
        "name": "command-r-08-2024",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.15"),
        "output_price_per_mtok_usd": Decimal("0.60"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 128_000,
        "max_output_tokens": 4_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://docs.flexprice.io/cookbooks/pricing-teardowns/cohere-pricing",
        # Capture of cohere.com/pricing dated 2026-11-11.
        "price_as_of": date(2026, 11, 11),
    },
    {
        "provider": "cohere",
        "name": "command-r7b-12-2024",
        "kind": "chat",
        "input_price_per_mtok_usd": Decimal("0.0375"),
        "output_price_per_mtok_usd": Decimal("0.15"),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 128_000,
        "max_output_tokens": 4_000,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": False,
        "supports_json_mode": True,
        "price_source": "https://developer.puter.com/tutorials/cohere-api-pricing/",
        # Article dated June 2026 (no day given); 1st of the month used.
        "price_as_of": date(2026, 6, 1),
    },
    {
        "provider": "cohere",
        "name": "embed-v4.0",
        "kind": "embedding",
        # Text inputs; image inputs are $0.47 per 1M tokens.
        "input_price_per_mtok_usd": Decimal("0.12"),
        "output_price_per_mtok_usd": Decimal(0),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 128_000,
        "max_output_tokens": 0,
        "supports_streaming": False,
        "supports_tools": False,
        "supports_vision": True,
        "supports_json_mode": False,
        "price_source": "https://developer.puter.com/tutorials/cohere-api-pricing/",
        # Article dated June 2026 (no day given); 1st of the month used.
        "price_as_of": date(2026, 6, 1),
    },
    {
        "provider": "cohere",
        "name": "embed-english-v3.0",
        "kind": "embedding",
        "input_price_per_mtok_usd": Decimal("0.10"),
        "output_price_per_mtok_usd": Decimal(0),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 512,
        "max_output_tokens": 0,
        "supports_streaming": False,
        "supports_tools": False,
        "supports_vision": False,
        "supports_json_mode": False,
        "price_source": "https://www.getmaxim.ai/bifrost/llm-cost-calculator/provider/cohere",
        # Undated page; date is the model launch, when this price took effect.
        "price_as_of": date(2023, 11, 2),
    },
]

# Quality tiers for the routers (1 economy, 2 standard, 3 premium): a judgement
# from each provider's own positioning of the model in its family, editable in
# the admin. Embedding models are not routed and keep the default.
QUALITY_TIERS: dict[str, int] = {
    "gpt-6-astra": 3,
    "gpt-6-sol": 2,
    "gpt-6-luna": 1,
    "gpt-5": 3,
    "gpt-5-mini": 2,
    "gpt-5-nano": 1,
    "o3": 3,
    "gpt-4.1": 2,
    "gpt-4.1-mini": 1,
    "gpt-4o": 2,
    "gpt-4o-mini": 1,
    "claude-fable-5-1": 3,
    "claude-opus-5-5": 3,
    "claude-sonnet-5-5": 2,
    "claude-haiku-5-5": 1,
    "claude-opus-4-8": 3,
    "claude-sonnet-4-6": 2,
    "claude-sonnet-4-5": 2,
    "claude-haiku-4-5": 1,
    "gemini-3.8-flash": 2,
    "gemini-3.5-flash": 2,
    "gemini-3.5-flash-lite": 1,
    "gemini-3.1-pro-preview": 3,
    "gemini-2.5-flash-lite": 1,
    "gemini-2.5-pro": 3,
    "gemini-2.5-flash": 2,
    "mistral-medium-3.5": 2,
    "mistral-large-2512": 3,
    "mistral-small-2603": 1,
    "codestral-2508": 2,
    "ministral-8b-2512": 1,
    "openai/gpt-oss-120b": 2,
    "openai/gpt-oss-20b": 1,
    "qwen/qwen3.6-27b": 1,
    "llama-3.1-8b-instant": 1,
    "meta-llama/llama-4-scout-17b-16e-instruct": 1,
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": 2,
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo": 1,
    "deepseek-ai/DeepSeek-V3.1": 2,
    "deepseek-ai/DeepSeek-R1": 3,
    "Qwen/Qwen3-235B-A22B-Instruct-2507-tput": 2,
    "command-a-03-2025": 3,
    "command-r-plus-08-2024": 2,
    "command-r-08-2024": 1,
    "command-r7b-12-2024": 1,
}

# Requested but not seeded, because the provider's API no longer serves them
# on 2026-11-25:
#   openai     gpt-4.1-nano, o4-mini        shut down 2026-10-23
#   anthropic  claude-3-5-haiku-20241022    retired 2026-02-19 (-> haiku-4-5)
#   gemini     gemini-2.0-flash             shut down 2026-06-01
#   groq       llama-3.3-70b-versatile      decommissioned 2026-08-16
#                                           (-> openai/gpt-oss-120b,
#                                           qwen/qwen3.6-27b)
