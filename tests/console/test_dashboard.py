"""The dashboard: its figures (console/selectors.py) from known usage rows, and the page that shows them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import APIKey, Organization, Role, User
from billing.models import Budget, BudgetPeriod, BudgetScope, Notification, UsageRecord, UsageStatus
from console import selectors
from tests.factories import OrganizationFactory, issue_key

from .conftest import signed_in, user_with_role

pytestmark = pytest.mark.django_db

# 11:00 in New York (EDT): its day began at 04:00 UTC.
NOW = datetime(2026, 3, 15, 15, 0, tzinfo=UTC)


def record(
    key: APIKey,
    *,
    at: datetime,
    cost: str,
    model: str = "fake-small",
    status: str = UsageStatus.OK,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=f"r{UsageRecord.objects.count()}",
        organization_id=key.organization_id,
        api_key=key,
        model=model,
        provider="fake",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=Decimal(cost),
        status=status,
        http_status=200 if status == UsageStatus.OK else 502,
        created_at=at,
    )


@pytest.fixture
def key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner).api_key


@pytest.fixture
def usage(organization: Organization, key: APIKey) -> None:
    """Today (New York) $0.50 on fake-medium; yesterday evening a $0.25 error; last month $0.10."""
    organization.timezone = "America/New_York"
    organization.save()
    record(key, at=NOW - timedelta(hours=1), cost="0.5000000000", model="fake-medium")
    record(key, at=datetime(2026, 3, 15, 2, 0, tzinfo=UTC), cost="0.25", status=UsageStatus.ERROR)
    record(key, at=datetime(2026, 2, 28, 12, 0, tzinfo=UTC), cost="0.10")
    other = issue_key(OrganizationFactory.create()).api_key
    record(other, at=NOW - timedelta(hours=1), cost="9.00")


def test_today_and_this_month_follow_the_organizations_calendar(organization: Organization, usage: None) -> None:
    figures = selectors.dashboard(organization=organization, now=NOW)

    assert figures.today == selectors.PeriodTotals(requests=1, errors=0, cost_usd=Decimal("0.5"))
    assert figures.month == selectors.PeriodTotals(requests=2, errors=1, cost_usd=Decimal("0.75"))
    assert figures.last_30_days == selectors.PeriodTotals(requests=3, errors=1, cost_usd=Decimal("0.85"))
    assert figures.last_30_days.error_rate == Decimal("33.3")
    assert figures.today.error_rate == Decimal("0.0")


def test_spend_is_measured_against_the_organizations_budgets(organization: Organization, usage: None) -> None:
    Budget.objects.create(
        organization=organization, scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.DAILY, limit_usd=Decimal(2)
    )
    Budget.objects.create(
        organization=organization, scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.MONTHLY, limit_usd=Decimal("0.5")
    )

    figures = selectors.dashboard(organization=organization, now=NOW)

    assert figures.spend_today.limit_usd == Decimal(2)
    assert figures.spend_today.percent == Decimal("25.0")
    assert figures.spend_month.percent == Decimal(100)
    assert figures.spend_month.over


def test_top_models_by_spend_and_by_requests(organization: Organization, usage: None) -> None:
    figures = selectors.dashboard(organization=organization, now=NOW)

    assert figures.top_by_cost == [
        selectors.ModelShare("fake-medium", 1, Decimal("0.5")),
        selectors.ModelShare("fake-small", 2, Decimal("0.35")),
    ]
    assert [share.model for share in figures.top_by_requests] == ["fake-small", "fake-medium"]


def test_daily_usage_has_thirty_days_ending_today(organization: Organization, usage: None) -> None:
    days = selectors.daily_usage(organization=organization, now=NOW)

    assert len(days) == 30
    assert days[-1] == selectors.DayUsage(date(2026, 3, 15), 1, Decimal("0.5"))
    assert days[-2] == selectors.DayUsage(date(2026, 3, 14), 1, Decimal("0.25"))
    assert days[0].day == date(2026, 2, 14)
    assert sum(day.cost_usd for day in days) == Decimal("0.85")


def test_savings_price_successful_tokens_on_the_reference_strong_model(
    organization: Organization, key: APIKey, catalog: None
) -> None:
    # fake-large, the fake provider's premium model: $1 in and $2 out per million tokens.
    record(key, at=NOW - timedelta(days=1), cost="0.02", input_tokens=1_000_000, output_tokens=500_000)
    record(key, at=NOW - timedelta(days=1), cost="0.01", status=UsageStatus.ERROR, input_tokens=1_000_000)

    savings = selectors.routing_savings(organization=organization, since=NOW - timedelta(days=30), until=NOW)

    assert savings is not None
    assert savings.reference_models == ["fake-large"]
    assert savings.reference_cost_usd == Decimal("2.0000000000")
    assert savings.actual_cost_usd == Decimal("0.03")
    assert savings.saving_usd == Decimal("1.97")
    assert savings.saving_percent == Decimal("98.5")


def test_the_reference_strong_model_is_the_most_capable_then_the_most_expensive(
    organization: Organization, catalog: None
) -> None:
    assert selectors.reference_model(organization=organization, fake=True).name == "fake-large"  # type: ignore[union-attr]
    organization.allowed_models = ["fake-small", "fake-medium"]
    assert selectors.reference_model(organization=organization, fake=True).name == "fake-medium"  # type: ignore[union-attr]


def test_no_usage_means_no_savings(organization: Organization) -> None:
    assert selectors.routing_savings(organization=organization, since=NOW - timedelta(days=30), until=NOW) is None


# --- the page -------------------------------------------------------------------------------------


def page(organization: Organization) -> str:
    return reverse("console-dashboard", args=[organization.slug])


@pytest.fixture
def recent_usage(organization: Organization, key: APIKey, catalog: None) -> None:
    record(key, at=timezone.now() - timedelta(minutes=5), cost="0.5", model="fake-medium", input_tokens=1000)
    record(key, at=timezone.now() - timedelta(days=3), cost="0.25", status=UsageStatus.ERROR)


def test_the_owner_sees_the_figures(owner_client: Client, organization: Organization, recent_usage: None) -> None:
    Budget.objects.create(
        organization=organization, scope=BudgetScope.ORGANIZATION, period=BudgetPeriod.DAILY, limit_usd=Decimal(2)
    )

    response = owner_client.get(page(organization))

    assert response.status_code == 200
    html = response.content.decode()
    for element in ("spend-today", "spend-month", "requests-today", "error-rate", "top-models", "savings",
                    "spend-chart", "live-status", "alerts"):  # fmt: skip
        assert f'id="{element}"' in html
    assert "$0.50 USD" in html
    assert "of $2.00 USD daily budget" in html
    assert 'style="width:25.0%"' in html
    assert '<svg class="chart bar-chart" role="img"' in html
    assert "fake-large" in html  # the savings' reference model, named
    assert 'id="no-usage"' not in html
    assert 'data-socket="/ws/console/' in html


def test_without_usage_it_points_to_the_playground(owner_client: Client, organization: Organization) -> None:
    html = owner_client.get(page(organization)).content.decode()

    assert 'id="no-usage"' in html
    assert reverse("console-playground", args=[organization.slug]) in html


def test_a_viewer_sees_it_without_the_playground_link(organization: Organization) -> None:
    viewer = user_with_role(organization, Role.VIEWER)

    response = signed_in(viewer).get(page(organization))

    assert response.status_code == 200
    assert reverse("console-playground", args=[organization.slug]) not in response.content.decode()


def test_an_outsider_gets_404(outsider_client: Client, organization: Organization, recent_usage: None) -> None:
    response = outsider_client.get(page(organization))

    assert response.status_code == 404
    assert b"spend-today" not in response.content


def test_unread_budget_alerts_are_listed(owner_client: Client, organization: Organization) -> None:
    Notification.objects.create(
        organization=organization, kind="budget.threshold_crossed", title="Budget 'daily' reached 80% of $2.00"
    )

    html = owner_client.get(page(organization)).content.decode()

    assert "Budget &#x27;daily&#x27; reached 80% of $2.00" in html


def test_the_recommendations_and_audit_pages_show_the_console_menu(
    owner_client: Client, organization: Organization
) -> None:
    for name in ("console-recommendations", "console-audit"):
        html = owner_client.get(reverse(name, args=[organization.slug])).content.decode()

        assert 'class="sidenav"' in html
        assert f'href="{page(organization)}"' in html
