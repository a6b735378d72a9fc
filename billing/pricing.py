from __future__ import annotations

from decimal import Decimal

from providers.adapters.base import Usage
from providers.catalog import CatalogModel

ONE_MILLION = Decimal(1_000_000)
# UsageRecord.cost_usd keeps ten decimal places of a dollar.
COST_QUANTUM = Decimal("0.0000000001")


def cost_usd(model: CatalogModel, usage: Usage) -> Decimal:
    """USD charged for ``usage`` at the model's list prices (per 1M tokens).

    Cached input tokens are part of the input count and billed at the cached
    price where the provider has one. Reasoning tokens are part of the output
    count and billed as output.
    """
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = model.cached_input_price_per_mtok_usd
    if cached_price is None:
        cached_price = model.input_price_per_mtok_usd
    micro_total = (
        (usage.input_tokens - cached) * model.input_price_per_mtok_usd
        + cached * cached_price
        + usage.output_tokens * model.output_price_per_mtok_usd
    )
    return (micro_total / ONE_MILLION).quantize(COST_QUANTUM)
