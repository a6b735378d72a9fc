"""``cost_usd``: list prices per 1M tokens applied to reported usage, in exact Decimal dollars."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billing.pricing import cost_usd
from providers.adapters.base import Usage
from providers.catalog import CatalogModel


def priced(input_price: str, output_price: str, cached_price: str | None = None) -> CatalogModel:
    fields: dict[str, Any] = {
        "name": "priced",
        "kind": "chat",
        "provider": "fake",
        "wire_format": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "credential": "",
        "input_price_per_mtok_usd": Decimal(input_price),
        "output_price_per_mtok_usd": Decimal(output_price),
        "cached_input_price_per_mtok_usd": None if cached_price is None else Decimal(cached_price),
        "context_window": 128_000,
        "max_output_tokens": 16_384,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "created": 0,
    }
    return CatalogModel(**fields)


# gpt-4o-mini's list prices: $0.15 in, $0.60 out, $0.075 cached in, per 1M tokens.
MINI = priced("0.15", "0.60", "0.075")


def test_plain_input_and_output_tokens() -> None:
    # 1,000 x 0.15 + 500 x 0.60 = 450 micro-dollars
    assert cost_usd(MINI, Usage(input_tokens=1_000, output_tokens=500)) == Decimal("0.000450")


def test_a_million_tokens_each_way_costs_the_list_prices() -> None:
    assert cost_usd(MINI, Usage(input_tokens=1_000_000, output_tokens=1_000_000)) == Decimal("0.75")


def test_cached_input_tokens_are_billed_at_the_cached_price() -> None:
    # 600 uncached x 0.15 + 400 cached x 0.075 + 500 x 0.60 = 90 + 30 + 300 = 420 micro-dollars
    usage = Usage(input_tokens=1_000, output_tokens=500, cached_input_tokens=400)

    assert cost_usd(MINI, usage) == Decimal("0.000420")


def test_cached_input_tokens_cost_full_price_when_the_model_has_no_cached_price() -> None:
    model = priced("0.15", "0.60")
    usage = Usage(input_tokens=1_000, output_tokens=500, cached_input_tokens=400)

    assert cost_usd(model, usage) == Decimal("0.000450")


def test_cached_tokens_never_exceed_the_input_tokens() -> None:
    # A provider reporting more cached than input tokens: all 100 are cached, none negative.
    usage = Usage(input_tokens=100, output_tokens=0, cached_input_tokens=250)

    assert cost_usd(MINI, usage) == Decimal("0.0000075")


def test_reasoning_tokens_are_part_of_the_output_and_not_billed_twice() -> None:
    # 2,000 output tokens of which 1,500 reasoning: 2,000 x 0.60 = 1,200 micro-dollars.
    with_reasoning = Usage(input_tokens=0, output_tokens=2_000, reasoning_tokens=1_500)

    assert cost_usd(MINI, with_reasoning) == Decimal("0.0012")
    assert cost_usd(MINI, with_reasoning) == cost_usd(MINI, Usage(output_tokens=2_000))


def test_the_cost_is_quantized_to_ten_decimal_places() -> None:
    cost = cost_usd(MINI, Usage(input_tokens=1, output_tokens=1))

    assert cost == Decimal("0.00000075")
    assert str(cost) == "7.500E-7"
    assert format(cost, "f") == "0.0000007500"
    assert cost.as_tuple().exponent == -10


def test_sub_quantum_costs_round_half_even() -> None:
    # $1.23456789/M for one token is $0.00000123456789: rounded to 0.0000012346.
    assert cost_usd(priced("1.23456789", "0"), Usage(input_tokens=1)) == Decimal("0.0000012346")
    # 5e-11 is exactly half a quantum: half-even rounds it down to zero, 1.5e-10 up to 2e-10.
    assert cost_usd(priced("0.00005", "0"), Usage(input_tokens=1)) == Decimal("0E-10")
    assert cost_usd(priced("0.00015", "0"), Usage(input_tokens=1)) == Decimal("2E-10")


def test_no_usage_costs_exactly_zero() -> None:
    cost = cost_usd(MINI, Usage())

    assert cost == 0
    assert cost.as_tuple().exponent == -10


def test_the_result_is_an_exact_decimal_not_a_float() -> None:
    # 0.1 + 0.2 in float is 0.30000000000000004; Decimal keeps it exact.
    cost = cost_usd(priced("0.1", "0.2"), Usage(input_tokens=1_000_000, output_tokens=1_000_000))

    assert type(cost) is Decimal
    assert cost == Decimal("0.3")
    assert format(cost, "f") == "0.3000000000"


def test_large_volumes_stay_exact() -> None:
    model = priced("15", "75", "1.50")
    usage = Usage(input_tokens=123_456_789, output_tokens=98_765_432, cached_input_tokens=23_456_789)

    # 100,000,000 x 15 + 23,456,789 x 1.5 + 98,765,432 x 75 = 8,942,592,583.5 micro-dollars
    assert cost_usd(model, usage) == Decimal("8942592583.5") / Decimal(1_000_000)
    assert format(cost_usd(model, usage), "f") == "8942.5925835000"
