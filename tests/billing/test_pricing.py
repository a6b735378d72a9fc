"""``cost_usd``: list prices per 1M tokens applied to reported usage, in exact Decimal dollars."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from billing.pricing import cost_usd
from providers.adapters.base import Usage
from providers.catalog import CatalogModel, forget_catalog, get_catalog_sync
from providers.models import Model, ModelPrice
from tests.conftest import FakeUpstream
from tests.routing.conftest import _close_loop_clients, usage_stream  # noqa: F401 - the proxy harness's fixtures
from tests.routing.harness import chat, in_thread, post, usage_rows


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


# --- dated prices: the catalog charges the price in effect ---------------------


def add_price(
    name: str, effective_from: datetime, input_price: str, output_price: str, cached: str | None = None
) -> ModelPrice:
    return ModelPrice.objects.create(
        model=Model.objects.get(name=name),
        effective_from=effective_from,
        input_price_per_mtok_usd=Decimal(input_price),
        output_price_per_mtok_usd=Decimal(output_price),
        cached_input_price_per_mtok_usd=None if cached is None else Decimal(cached),
        source="https://example.com/pricing",
    )


def prices_of(name: str) -> tuple[Decimal, Decimal, Decimal | None]:
    forget_catalog()
    model = get_catalog_sync().models[name]
    return (model.input_price_per_mtok_usd, model.output_price_per_mtok_usd, model.cached_input_price_per_mtok_usd)


@pytest.mark.django_db
def test_without_dated_prices_the_catalog_charges_the_models_own_list_price(catalog: None) -> None:
    # gpt-4o-mini's seeded list price.
    assert prices_of("gpt-4o-mini") == (Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))


@pytest.mark.django_db
def test_the_newest_price_already_in_effect_is_charged(catalog: None) -> None:
    now = timezone.now()
    add_price("gpt-4o-mini", now - timedelta(days=30), "0.20", "0.80", "0.10")
    add_price("gpt-4o-mini", now - timedelta(days=1), "0.12", "0.48")
    add_price("gpt-4o-mini", now + timedelta(days=1), "9", "9", "9")

    # The one from yesterday: no cached price, so cached input costs the input price.
    assert prices_of("gpt-4o-mini") == (Decimal("0.12"), Decimal("0.48"), None)
    # Other models keep their own.
    assert prices_of("gpt-4o")[:2] == (Decimal("2.5"), Decimal("10"))


@pytest.mark.django_db
def test_a_price_dated_in_the_future_is_not_charged_yet(catalog: None) -> None:
    add_price("gpt-4o-mini", timezone.now() + timedelta(hours=1), "9", "9")

    assert prices_of("gpt-4o-mini") == (Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))


@pytest.mark.django_db
def test_a_scheduled_price_takes_effect_when_it_arrives(
    catalog: None, settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MUXER_CATALOG_CACHE_SECONDS = 60
    start = timezone.now()
    add_price("gpt-4o-mini", start + timedelta(hours=1), "0.30", "1.20", "0.15")
    assert get_catalog_sync().models["gpt-4o-mini"].input_price_per_mtok_usd == Decimal("0.15")

    monkeypatch.setattr(timezone, "now", lambda: start + timedelta(hours=1, seconds=1))
    # Within MUXER_CATALOG_CACHE_SECONDS the process keeps its snapshot...
    assert get_catalog_sync().models["gpt-4o-mini"].input_price_per_mtok_usd == Decimal("0.15")
    # ...and the next reload charges the new price.
    settings.MUXER_CATALOG_CACHE_SECONDS = 0
    assert get_catalog_sync().models["gpt-4o-mini"].input_price_per_mtok_usd == Decimal("0.30")


@pytest.mark.django_db
def test_loading_the_catalog_takes_two_queries_however_many_prices(
    catalog: None, django_assert_num_queries: Any
) -> None:
    now = timezone.now()
    for name in ("gpt-4o-mini", "gpt-4o", "fake-small", "fake-large"):
        for days in (1, 10, 100):
            add_price(name, now - timedelta(days=days), str(days), str(days))
    forget_catalog()

    with django_assert_num_queries(2):
        loaded = get_catalog_sync()

    assert loaded.models["fake-large"].input_price_per_mtok_usd == Decimal(1)
    assert len(loaded.models) > 4


@pytest.mark.django_db
def test_two_prices_for_one_model_cannot_share_a_start(catalog: None) -> None:
    when = timezone.now()
    add_price("fake-small", when, "1", "1")

    with pytest.raises(IntegrityError), transaction.atomic():
        add_price("fake-small", when, "2", "2")


@pytest.mark.django_db
def test_cost_at_the_price_in_effect_bills_cached_and_reasoning_tokens(catalog: None) -> None:
    add_price("gpt-4o-mini", timezone.now() - timedelta(minutes=1), "0.20", "0.80", "0.05")
    forget_catalog()
    model = get_catalog_sync().models["gpt-4o-mini"]
    usage = Usage(input_tokens=1_000, output_tokens=500, cached_input_tokens=400, reasoning_tokens=300)

    # 600 x 0.20 + 400 x 0.05 + 500 x 0.80 = 120 + 20 + 400 = 540 micro-dollars; reasoning is inside the 500.
    assert cost_usd(model, usage) == Decimal("0.000540")


# --- through the proxy: a served request keeps the price it was charged ------------


@pytest.mark.django_db(transaction=True)
async def test_a_past_record_keeps_its_cost_after_a_new_price_takes_effect(
    api_key: str, upstream: FakeUpstream
) -> None:
    first = await post(chat(model="fake-small"), key=api_key)
    assert first.status == 200
    # 4 prompt tokens at $0.01/M + 5 completion tokens at $0.02/M.
    assert first.headers["x-muxer-cost-usd"] == "0.0000001400"

    await in_thread(add_price, "fake-small", timezone.now() - timedelta(seconds=1), "1.00", "3.00")
    forget_catalog()
    second = await post(chat(model="fake-small"), key=api_key)

    # 4 x $1.00/M + 5 x $3.00/M = 19 micro-dollars.
    assert second.headers["x-muxer-cost-usd"] == "0.0000190000"
    old, new = await usage_rows()
    assert (old.request_id, old.cost_usd) == (first.headers["x-request-id"], Decimal("0.0000001400"))
    assert (new.request_id, new.cost_usd) == (second.headers["x-request-id"], Decimal("0.0000190000"))
