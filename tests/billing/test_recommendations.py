"""Savings recommendations: hand-computed figures, the API, and the demo data they are shown on."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import keys
from accounts.auth import authenticate_sync
from accounts.models import APIKey, Organization, User
from billing.models import UsageRecord, UsageStatus
from billing.recommendations import Recommendation, recommendations_for
from providers.models import Model, Provider
from tests.factories import issue_key

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
SIMPLE, HARD = 0.1, 0.7  # the economy threshold is 0.3


def acme_model(provider: Provider, name: str, tier: int, price_in: str, price_out: str, **fields: Any) -> Model:
    values: dict[str, Any] = {
        "context_window": 128_000,
        "max_output_tokens": 8_000,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        **fields,
    }
    return Model.objects.create(
        provider=provider,
        name=name,
        quality_tier=tier,
        input_price_per_mtok_usd=Decimal(price_in),
        output_price_per_mtok_usd=Decimal(price_out),
        **values,
    )


@pytest.fixture
def acme(catalog: None) -> None:
    """A catalog of our own: every seeded model is switched off, so the figures depend on these alone."""
    Model.objects.update(enabled=False)
    provider = Provider.objects.create(
        slug="acme", name="Acme", wire_format="openai", base_url="https://acme.example/v1"
    )
    acme_model(provider, "acme-premium", 3, "10", "30", context_window=200_000)
    acme_model(provider, "acme-standard", 2, "2", "8", cached_input_price_per_mtok_usd=Decimal("0.5"))
    acme_model(provider, "acme-standard-lite", 2, "1", "4")
    acme_model(provider, "acme-standard-blind", 2, "0.5", "1", supports_vision=False)
    acme_model(provider, "acme-standard-short", 2, "0.4", "1", context_window=32_000)
    acme_model(provider, "acme-economy", 1, "0.2", "0.8")
    acme_model(provider, "acme-economy-tiny", 1, "0.1", "0.4", context_window=4_000, max_output_tokens=1_000)


@pytest.fixture
def key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner).api_key


class Ledger:
    def __init__(self, key: APIKey) -> None:
        self.key = key
        self.count = 0

    def add(
        self,
        model: str,
        cost: str,
        *,
        input_tokens: int,
        output_tokens: int,
        complexity: float | None,
        cached: int = 0,
        fingerprint: str = "",
        ago: timedelta = timedelta(days=2),
        status: str = UsageStatus.OK,
        key: APIKey | None = None,
        cache_hit: bool = False,
    ) -> UsageRecord:
        self.count += 1
        owner = key or self.key
        return UsageRecord.objects.create(
            request_id=f"req_{self.count}",
            organization_id=owner.organization_id,
            api_key=owner,
            model=model,
            provider=model.split("-")[0],
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output_tokens,
            cost_usd=Decimal(cost),
            status=status,
            http_status=200 if status == UsageStatus.OK else 502,
            complexity=complexity,
            request_fingerprint=fingerprint,
            cache_hit=cache_hit,
            created_at=NOW - ago - timedelta(minutes=self.count),
        )


@pytest.fixture
def ledger(acme: None, key: APIKey, outsider: User) -> Ledger:
    """Usage whose savings are worked out by hand in the tests below (prices are per million tokens)."""
    book = Ledger(key)
    # Two simple requests on acme-standard: 50k in and 5k out each at $2/$8 -> $0.14 each.
    book.add("acme-standard", "0.14", input_tokens=50_000, output_tokens=5_000, complexity=SIMPLE)
    book.add("acme-standard", "0.14", input_tokens=50_000, output_tokens=5_000, complexity=0.29)
    # The same hard request three times: 10k in, 2k out -> $0.036 each; the last two are duplicates.
    for _ in range(3):
        book.add("acme-standard", "0.036", input_tokens=10_000, output_tokens=2_000, complexity=HARD,
                 fingerprint="a" * 64)  # fmt: skip
    # A hard request with 40k of its 100k input cached: 60k x $2 + 40k x $0.5 + 20k x $8 -> $0.30.
    book.add("acme-standard", "0.30", input_tokens=100_000, cached=40_000, output_tokens=20_000, complexity=0.5)
    # On acme-premium ($10/$30): a simple one (1k in, 1k out: $0.04) and a hard one (10k, 10k: $0.40).
    book.add("acme-premium", "0.04", input_tokens=1_000, output_tokens=1_000, complexity=0.2)
    book.add("acme-premium", "0.40", input_tokens=10_000, output_tokens=10_000, complexity=0.9)
    # Left out: answers from the response cache ($0, however often repeated), failures, usage before the
    # window, and another organization's usage.
    for _ in range(2):
        book.add("acme-standard", "0", input_tokens=10_000, output_tokens=2_000, complexity=HARD,
                 fingerprint="a" * 64, cache_hit=True)  # fmt: skip
    book.add("acme-standard", "5", input_tokens=50_000, output_tokens=0, complexity=SIMPLE, status=UsageStatus.ERROR)
    book.add("acme-standard", "5", input_tokens=50_000, output_tokens=5_000, complexity=SIMPLE, ago=timedelta(days=31))
    theirs = issue_key(outsider.memberships.get().organization, created_by=outsider).api_key
    book.add("acme-standard", "5", input_tokens=50_000, output_tokens=5_000, complexity=SIMPLE, key=theirs)
    return book


def summary(found: list[Recommendation]) -> list[tuple[str, str, str, Decimal]]:
    return [(r.kind, r.model, r.suggested_model, r.monthly_saving_usd) for r in found]


def test_savings_from_30_days_of_usage(organization: Organization, ledger: Ledger) -> None:
    found = recommendations_for(organization=organization, days=30, now=NOW)

    assert summary(found) == [
        # $0.28 charged; acme-economy: 100k x $0.2 + 10k x $0.8 = $0.028 (acme-economy-tiny's 4k context is too small).
        ("simple_on_expensive", "acme-standard", "acme-economy", Decimal("0.25")),
        # The rest of acme-standard: the first of the repeated requests and the cached one, $0.336 charged;
        # acme-standard-lite (no cached price): 110k x $1 + 22k x $4 = $0.198. The blind and short ones lack
        # vision or context.
        ("cheaper_equivalent", "acme-standard", "acme-standard-lite", Decimal("0.14")),
        # Two repeats at $0.036.
        ("duplicate_requests", "", "", Decimal("0.07")),
        # $0.04 charged; acme-economy-tiny: 1k x $0.1 + 1k x $0.4 = $0.0005; saving $0.0395, rounded half up.
        ("simple_on_expensive", "acme-premium", "acme-economy-tiny", Decimal("0.04")),
    ]


def test_a_shorter_window_is_scaled_to_30_days(organization: Organization, ledger: Ledger) -> None:
    found = recommendations_for(organization=organization, days=10, now=NOW)

    assert [r.monthly_saving_usd for r in found] == [Decimal("0.76"), Decimal("0.41"), Decimal("0.22"), Decimal("0.12")]
    assert "That is $0.25 in 10 days; scaled by 30/10, $0.76 a month." in found[0].detail


def test_recommendations_say_how_they_were_estimated(organization: Organization, ledger: Ledger) -> None:
    simple, cheaper, duplicates, _ = recommendations_for(organization=organization, days=30, now=NOW)

    assert simple.title == "Send simple requests on acme-standard to acme-economy"
    assert simple.evidence == {
        "window_days": 30,
        "requests": 2,
        "input_tokens": 100_000,
        "output_tokens": 10_000,
        "window_cost_usd": "0.2800000000",
        "alternative_cost_usd": "0.0280000000",
    }
    assert "complexity below 0.3" in simple.detail
    assert "would have charged $0.03 for the same tokens" in simple.detail
    assert cheaper.title == "Switch acme-standard to acme-standard-lite"
    assert (cheaper.evidence["requests"], cheaper.evidence["window_cost_usd"]) == (2, "0.3360000000")
    assert duplicates.title == "Cache repeated requests"
    assert duplicates.evidence == {
        "window_days": 30,
        "duplicate_requests": 2,
        "distinct_requests_repeated": 1,
        "window_cost_usd": "0.0720000000",
    }
    assert "1 distinct requests were sent again 2 times" in duplicates.detail


def test_alternatives_respect_the_organizations_policy(organization: Organization, ledger: Ledger) -> None:
    organization.allowed_models = ["acme-standard", "acme-premium", "acme-standard-lite", "acme-economy-tiny"]
    organization.save(update_fields=["allowed_models"])

    found = recommendations_for(organization=organization, days=30, now=NOW)

    # No economy model fits the simple requests on acme-standard, so they join the rest of its traffic:
    # $0.28 + $0.036 + $0.30 = $0.616; on acme-standard-lite 210k x $1 + 32k x $4 = $0.338.
    assert summary(found) == [
        ("cheaper_equivalent", "acme-standard", "acme-standard-lite", Decimal("0.28")),
        ("duplicate_requests", "", "", Decimal("0.07")),
        ("simple_on_expensive", "acme-premium", "acme-economy-tiny", Decimal("0.04")),
    ]


def test_the_development_fake_is_only_compared_with_itself(
    organization: Organization, ledger: Ledger, key: APIKey
) -> None:
    Model.objects.filter(provider__slug="fake").update(enabled=True)
    # fake-medium is tier 2; fake-small, tier 1 at $0.01/$0.02, charges 100k x $0.01 + 10k x $0.02 = $0.0012.
    ledger.add("fake-medium", "0.3", input_tokens=100_000, output_tokens=10_000, complexity=SIMPLE)

    found = recommendations_for(organization=organization, days=30, now=NOW)

    assert ("simple_on_expensive", "fake-medium", "fake-small", Decimal("0.30")) in summary(found)
    assert all(r.suggested_model != "fake-small" for r in found if r.model.startswith("acme"))


def test_nothing_to_recommend_without_usage(organization: Organization, acme: None) -> None:
    assert recommendations_for(organization=organization, days=30, now=NOW) == []


def test_a_saving_that_rounds_to_nothing_is_not_shown(organization: Organization, acme: None, key: APIKey) -> None:
    # 1k in on acme-standard-lite ($0.001) against acme-standard-blind ($0.0005): not a cent a month.
    Ledger(key).add("acme-standard-lite", "0.001", input_tokens=1_000, output_tokens=0, complexity=HARD)
    Model.objects.filter(name="acme-standard-lite").update(supports_vision=False)

    assert recommendations_for(organization=organization, days=30, now=NOW) == []


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def test_members_get_the_recommendations(
    client: APIClient, organization: Organization, member: User, acme: None, key: APIKey
) -> None:
    # Within the API's window, which ends now: the repeated request of the ledger above, three times.
    for n in range(3):
        UsageRecord.objects.create(
            request_id=f"api_{n}", organization=organization, api_key=key, model="acme-standard", provider="acme",
            input_tokens=10_000, output_tokens=2_000, cost_usd=Decimal("0.036"), status=UsageStatus.OK,
            http_status=200, complexity=HARD, request_fingerprint="b" * 64,
            created_at=timezone.now() - timedelta(hours=n + 1),
        )  # fmt: skip
    client.force_authenticate(member)

    response = client.get(reverse("recommendation-list", args=[organization.slug]), {"days": 7})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "list"
    assert body["days"] == 7
    duplicates = next(r for r in body["data"] if r["kind"] == "duplicate_requests")
    # $0.072 in 7 days, x 30/7 = $0.3086 -> $0.31.
    assert duplicates["monthly_saving_usd"] == "0.31"
    assert set(duplicates) == {"kind", "title", "detail", "model", "suggested_model", "evidence", "monthly_saving_usd"}
    total = sum(Decimal(r["monthly_saving_usd"]) for r in body["data"])
    assert body["total_monthly_saving_usd"] == f"{total:.2f}"


@pytest.mark.parametrize("days", ["0", "366", "-3", "ten", "1.5"])
def test_the_window_must_be_1_to_365_days(
    client: APIClient, organization: Organization, member: User, days: str
) -> None:
    client.force_authenticate(member)

    response = client.get(reverse("recommendation-list", args=[organization.slug]), {"days": days})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "days"


def test_the_window_defaults_to_30_days(client: APIClient, organization: Organization, member: User) -> None:
    client.force_authenticate(member)

    body = client.get(reverse("recommendation-list", args=[organization.slug])).json()

    assert (body["days"], body["data"], body["total_monthly_saving_usd"]) == (30, [], "0.00")


def test_an_outsider_gets_404_from_the_recommendations(
    client: APIClient, organization: Organization, outsider: User
) -> None:
    client.force_authenticate(outsider)

    response = client.get(reverse("recommendation-list", args=[organization.slug]))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- the demo data -----------------------------------------------------------------------------


def demo_setup() -> str:
    out = io.StringIO()
    call_command("demo_setup", stdout=out)
    return out.getvalue()


def test_the_demo_organization_shows_real_savings(catalog: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUXER_DEMO_API_KEY", raising=False)
    output = demo_setup()

    demo = Organization.objects.get(slug="demo")
    found = recommendations_for(organization=demo, days=30)
    assert {r.kind for r in found} == {"simple_on_expensive", "duplicate_requests", "cheaper_equivalent"}
    assert all(r.monthly_saving_usd > 0 for r in found)
    assert sum(r.monthly_saving_usd for r in found) > Decimal(5)
    rows = UsageRecord.objects.filter(organization=demo)
    assert rows.count() > 2_000
    assert rows.filter(complexity__isnull=True).count() == 0
    assert rows.exclude(request_fingerprint__regex=r"^[0-9a-f]{64}$").count() == 0
    # The demo key works as before: printed, and accepted.
    (key_line,) = [line for line in output.splitlines() if line.startswith("demo API key: ")]
    identity = authenticate_sync(f"Bearer {key_line.removeprefix('demo API key: ')}")
    assert identity.organization_id == demo.pk


def test_the_demo_data_is_written_once(catalog: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUXER_DEMO_API_KEY", raising=False)
    demo_setup()
    demo = Organization.objects.get(slug="demo")
    written = UsageRecord.objects.filter(organization=demo).count()

    demo_setup()

    assert UsageRecord.objects.filter(organization=demo).count() == written
    assert APIKey.objects.filter(organization=demo, name="sample traffic (demo data)").count() == 1
    assert APIKey.objects.filter(organization=demo, name="demo key", revoked_at__isnull=True).count() == 1


def test_the_demo_key_has_limits_that_the_flags_change_or_turn_off(
    catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUXER_DEMO_API_KEY", keys.generate_key())
    demo_setup()
    key = APIKey.objects.get(name="demo key", revoked_at__isnull=True)
    assert (key.rpm_limit, key.tpm_limit) == (600, 1_000_000)
    assert authenticate_sync(f"Bearer {os.environ['MUXER_DEMO_API_KEY']}").rpm_limits[0] == 600

    call_command("demo_setup", "--rpm", "0", "--tpm", "5000", stdout=io.StringIO())
    key.refresh_from_db()
    assert (key.rpm_limit, key.tpm_limit) == (None, 5000)

    with pytest.raises(CommandError):
        call_command("demo_setup", "--rpm", "-1", stdout=io.StringIO())
