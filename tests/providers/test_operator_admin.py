"""The operators' catalog in the admin: bulk actions that audit each row, the dated price history, provider health."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries, DjangoCaptureOnCommitCallbacks
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import APIKey, Organization, User
from audit.models import AuditEvent
from billing.models import UsageRecord, UsageStatus
from providers.catalog import get_catalog_sync
from providers.health import provider_health, traffic_by
from providers.models import Model, ModelPrice, Provider, QualityTier
from providers.resilience import breaker
from tests.audit.test_admin import admin_form_data
from tests.factories import issue_key

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:providers_model_changelist"


def cell(html: str, column: str) -> list[str]:
    """The texts of a changelist column, in row order."""
    return [re.sub(r"<[^>]+>", "", text) for text in re.findall(rf'<td class="field-{column}[^"]*">(.*?)</td>', html)]


@pytest.fixture
def fake_models(catalog: None) -> dict[str, Model]:
    return {m.name: m for m in Model.objects.filter(provider__slug="fake")}


@pytest.fixture
def key(organization: Organization, owner: User, catalog: None) -> APIKey:
    return issue_key(organization, created_by=owner).api_key


@pytest.fixture
def seed_usage(organization: Organization, key: APIKey) -> Callable[..., UsageRecord]:
    counter = iter(range(1_000_000))

    def seed(*, model: str = "fake-small", provider: str = "fake", ok: bool = True, latency_ms: int = 100,
             error_code: str = "", ago: timedelta = timedelta(minutes=5)) -> UsageRecord:  # fmt: skip
        return UsageRecord.objects.create(
            request_id=f"req_seed_{next(counter)}", organization=organization, api_key=key, model=model,
            provider=provider, status=UsageStatus.OK if ok else UsageStatus.ERROR, http_status=200 if ok else 502,
            error_code=error_code, latency_ms=latency_ms, created_at=timezone.now() - ago,
        )  # fmt: skip

    return seed


# --- access -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [CHANGELIST, "admin:providers_provider_changelist"])
def test_a_tenant_user_is_sent_to_the_admin_login(client: Client, owner: User, name: str) -> None:
    client.force_login(owner)

    response = client.get(reverse(name))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


# --- the catalog --------------------------------------------------------------------------------------


def test_the_catalog_lists_prices_in_effect_and_capabilities(
    admin_client: Client, fake_models: dict[str, Model]
) -> None:
    small = fake_models["fake-small"]
    ModelPrice.objects.create(
        model=small, effective_from=timezone.now() - timedelta(days=1),
        input_price_per_mtok_usd=Decimal("0.5"), output_price_per_mtok_usd=Decimal("0.75"),
    )  # fmt: skip
    ModelPrice.objects.create(
        model=small, effective_from=timezone.now() + timedelta(days=3),
        input_price_per_mtok_usd=Decimal("9"), output_price_per_mtok_usd=Decimal("9"),
    )  # fmt: skip

    html = admin_client.get(reverse(CHANGELIST), {"q": "fake-small"}).content.decode()

    assert cell(html, "price_in") == ["0.500000"]
    assert cell(html, "price_out") == ["0.750000"]
    assert cell(html, "next_price_from") != ["—"]
    for column in ("context_window", "supports_tools", "supports_vision", "supports_json_mode", "supports_streaming"):
        assert f'class="field-{column}' in html, column


def test_the_catalog_filters_by_context_window(admin_client: Client, fake_models: dict[str, Model]) -> None:
    Model.objects.filter(name="fake-large").update(context_window=2_000_000)

    html = admin_client.get(reverse(CHANGELIST), {"q": "fake", "context": "ge1m"}).content.decode()

    assert "fake-large" in html
    assert "fake-small" not in html


def test_disabling_models_by_bulk_action_audits_each_changed_row(
    admin_client: Client, admin_user: User, fake_models: dict[str, Model],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:  # fmt: skip
    small, medium, large = fake_models["fake-small"], fake_models["fake-medium"], fake_models["fake-large"]
    Model.objects.filter(pk=large.pk).update(enabled=False)
    assert get_catalog_sync().get("fake-small") is not None  # the process holds the catalog

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse(CHANGELIST),
            {"action": "disable_models", "_selected_action": [small.pk, medium.pk, large.pk]},
        )

    assert response.status_code == 302
    assert set(Model.objects.filter(provider__slug="fake", enabled=True)) == set()
    events = AuditEvent.objects.filter(action="admin.changed").order_by("id")
    assert [(e.target_type, e.target_id, e.before, e.after, e.actor_id) for e in events] == [
        ("providers.model", str(m.pk), {"enabled": True}, {"enabled": False}, admin_user.pk) for m in (small, medium)
    ]  # the already disabled one is not an event
    assert get_catalog_sync().get("fake-small") is None  # forgotten, so this process reloads it


def test_enabling_models_by_bulk_action(admin_client: Client, fake_models: dict[str, Model]) -> None:
    Model.objects.filter(provider__slug="fake").update(enabled=False)

    admin_client.post(
        reverse(CHANGELIST), {"action": "enable_models", "_selected_action": [fake_models["fake-small"].pk]}
    )

    assert list(Model.objects.filter(provider__slug="fake", enabled=True).values_list("name", flat=True)) == [
        "fake-small"
    ]
    assert AuditEvent.objects.get(action="admin.changed").after == {"enabled": True}


def test_setting_the_quality_tier_by_bulk_action(admin_client: Client, fake_models: dict[str, Model]) -> None:
    small = fake_models["fake-small"]

    response = admin_client.post(
        reverse(CHANGELIST), {"action": "set_tier_premium", "_selected_action": [small.pk]}, follow=True
    )

    small.refresh_from_db()
    assert small.quality_tier == QualityTier.PREMIUM
    event = AuditEvent.objects.get(action="admin.changed", target_id=str(small.pk))
    assert (event.before, event.after) == ({"quality_tier": 1}, {"quality_tier": 3})
    assert "Set to premium: 1 model." in response.content.decode()


def price_row(data: dict[str, Any], index: int, *, starts: str, price_in: str, price_out: str) -> None:
    date, time = starts.split(" ")
    data.update({
        f"prices-{index}-effective_from_0": date, f"prices-{index}-effective_from_1": time,
        f"prices-{index}-input_price_per_mtok_usd": price_in, f"prices-{index}-output_price_per_mtok_usd": price_out,
    })  # fmt: skip


def test_a_new_price_is_a_new_dated_row_and_is_audited(
    admin_client: Client, admin_user: User, fake_models: dict[str, Model]
) -> None:
    small = fake_models["fake-small"]
    later = timezone.localtime(timezone.now() + timedelta(days=7))
    data = admin_form_data(small, admin_user, _save="Save")
    price_row(data, 0, starts=f"{later:%Y-%m-%d %H:%M:%S}", price_in="0.02", price_out="0.04")

    response = admin_client.post(reverse("admin:providers_model_change", args=[small.pk]), data)

    assert response.status_code == 302, response.content.decode()[:3000]
    [price] = ModelPrice.objects.filter(model=small)
    assert (price.input_price_per_mtok_usd, price.output_price_per_mtok_usd) == (Decimal("0.02"), Decimal("0.04"))
    assert price.effective_from.replace(microsecond=0) == later.replace(microsecond=0)
    event = AuditEvent.objects.get(action="admin.changed", target_id=str(small.pk))
    added = [entry["added"] for entry in event.metadata["change"] if "added" in entry]
    assert added == [{"name": "model price", "object": str(price)}]


def test_existing_prices_cannot_be_changed_in_the_admin(
    admin_client: Client, admin_user: User, fake_models: dict[str, Model]
) -> None:
    small = fake_models["fake-small"]
    charged = ModelPrice.objects.create(
        model=small, effective_from=timezone.now() - timedelta(days=30),
        input_price_per_mtok_usd=Decimal("0.01"), output_price_per_mtok_usd=Decimal("0.02"),
    )  # fmt: skip
    page = admin_client.get(reverse("admin:providers_model_change", args=[small.pk])).content.decode()
    data = admin_form_data(small, admin_user, _save="Save")
    data.update({"prices-0-input_price_per_mtok_usd": "99", "prices-0-DELETE": "on"})

    admin_client.post(reverse("admin:providers_model_change", args=[small.pk]), data)

    charged.refresh_from_db()
    assert charged.input_price_per_mtok_usd == Decimal("0.01")
    assert 'name="prices-0-input_price_per_mtok_usd"' not in page  # shown, not editable


@pytest.mark.parametrize(
    ("starts", "error"),
    [
        (timedelta(days=-2), "A new price cannot start in the past"),
        (timedelta(days=1), "Prices are added after the latest one"),
    ],
)
def test_a_price_dated_into_the_history_is_refused(
    admin_client: Client, admin_user: User, fake_models: dict[str, Model], starts: timedelta, error: str
) -> None:
    small = fake_models["fake-small"]
    ModelPrice.objects.create(
        model=small, effective_from=timezone.now() + timedelta(days=10),
        input_price_per_mtok_usd=Decimal("0.01"), output_price_per_mtok_usd=Decimal("0.02"),
    )  # fmt: skip
    data = admin_form_data(small, admin_user, _save="Save")
    at = timezone.localtime(timezone.now() + starts)
    price_row(data, 1, starts=f"{at:%Y-%m-%d %H:%M:%S}", price_in="0.5", price_out="0.5")
    data["prices-TOTAL_FORMS"] = "2"

    response = admin_client.post(reverse("admin:providers_model_change", args=[small.pk]), data)

    assert response.status_code == 200
    assert error in response.content.decode()
    assert ModelPrice.objects.filter(model=small).count() == 1


def test_a_negative_price_is_refused_not_a_crash(
    admin_client: Client, admin_user: User, fake_models: dict[str, Model]
) -> None:
    small = fake_models["fake-small"]
    data = admin_form_data(small, admin_user, _save="Save")
    later = timezone.localtime(timezone.now() + timedelta(days=1))
    price_row(data, 0, starts=f"{later:%Y-%m-%d %H:%M:%S}", price_in="-1", price_out="0.5")

    response = admin_client.post(reverse("admin:providers_model_change", args=[small.pk]), data)

    assert response.status_code == 200
    assert "A price cannot be negative." in response.content.decode()


# --- providers and their health ---------------------------------------------------------------------------


@pytest.fixture
def touchy_breaker(settings: SettingsWrapper) -> None:
    settings.MUXER_BREAKER_FAILURE_THRESHOLD = 2
    settings.MUXER_BREAKER_COOLDOWN_SECONDS = 60


def trip(model_name: str) -> None:
    model = get_catalog_sync().get(model_name)
    assert model is not None
    async_to_sync(breaker.record)(model, ok=False)
    async_to_sync(breaker.record)(model, ok=False)


def fake_row(html: str, column: str) -> str:
    """The ``fake`` provider's cell in a column (the changelist is ordered by slug; find its row)."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html, flags=re.S)
    [row] = [r for r in rows if ">fake</a>" in r]
    [value] = cell(row, column)
    return value


def test_provider_health_shows_traffic_of_the_last_hour(
    admin_client: Client, catalog: None, seed_usage: Callable[..., UsageRecord]
) -> None:
    for latency in (100, 200, 300):
        seed_usage(latency_ms=latency)
    seed_usage(ok=False, latency_ms=900, error_code="upstream_error")
    seed_usage(ok=False, error_code="too_old", ago=timedelta(hours=2))

    html = admin_client.get(reverse("admin:providers_provider_changelist")).content.decode()

    assert fake_row(html, "requests_last_hour") == "4"
    assert fake_row(html, "error_rate") == "25.0%"
    assert fake_row(html, "p50_latency") == "250 ms"
    assert fake_row(html, "last_error").startswith("upstream_error at ")
    assert fake_row(html, "enabled_models") == "3"
    assert fake_row(html, "circuits") == "closed"
    assert fake_row(html, "health") == "ok"


def test_provider_health_shows_an_open_circuit(admin_client: Client, catalog: None, touchy_breaker: None) -> None:
    trip("fake-small")

    html = admin_client.get(reverse("admin:providers_provider_changelist")).content.decode()
    detail = admin_client.get(
        reverse("admin:providers_provider_change", args=[Provider.objects.get(slug="fake").pk])
    ).content.decode()

    assert fake_row(html, "circuits") == "1 open"
    assert fake_row(html, "health") == "degraded"
    assert '<span class="provider-health" data-status="degraded">' in html
    assert "<tr><td>fake-small</td><td>yes</td><td>open</td>" in detail
    assert "<tr><td>fake-large</td><td>yes</td><td>closed</td>" in detail


def test_a_provider_whose_every_enabled_model_is_open_is_down(catalog: None, touchy_breaker: None) -> None:
    Model.objects.filter(name__in=["fake-medium", "fake-large"]).update(enabled=False)
    trip("fake-small")
    fake = Provider.objects.get(slug="fake")

    assert provider_health(providers=[fake])["fake"].status == "down"


def test_traffic_is_two_queries_whatever_the_number_of_groups(
    catalog: None, seed_usage: Callable[..., UsageRecord], django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    for provider in ("fake", "openai", "anthropic"):
        seed_usage(provider=provider, ok=False, error_code=f"{provider}_down")
        seed_usage(provider=provider, latency_ms=50)

    with django_assert_num_queries(2):
        traffic = traffic_by(group="provider", since=timezone.now() - timedelta(hours=1))

    assert {slug: (t.requests, t.errors, t.last_error_code) for slug, t in traffic.items()} == {
        slug: (2, 1, f"{slug}_down") for slug in ("fake", "openai", "anthropic")
    }


def test_the_provider_changelist_does_not_query_per_row(
    admin_client: Client, catalog: None, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    def queries() -> int:
        with django_assert_max_num_queries(1000) as captured:
            admin_client.get(reverse("admin:providers_provider_changelist"))
        return len(captured)

    one = queries()
    for n in range(5):
        Provider.objects.create(slug=f"extra{n}", name=f"Extra {n}", wire_format="openai", base_url="https://x.test")

    assert queries() == one


def test_disabling_a_provider_by_action_is_audited(admin_client: Client, catalog: None) -> None:
    fake = Provider.objects.get(slug="fake")

    admin_client.post(
        reverse("admin:providers_provider_changelist"), {"action": "disable_providers", "_selected_action": [fake.pk]}
    )

    fake.refresh_from_db()
    assert fake.enabled is False
    event = AuditEvent.objects.get(action="admin.changed")
    assert (event.target_type, event.before, event.after) == (
        "providers.provider",
        {"enabled": True},
        {"enabled": False},
    )
