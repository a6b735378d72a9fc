"""Console: budgets, alert settings and notifications (console/views/budgets.py)."""

from __future__ import annotations

import html
import re
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Organization, Role, User
from billing.models import Budget, Notification, UsageRecord, UsageStatus
from tests.console.conftest import signed_in, user_with_role
from tests.factories import TeamFactory, issue_key

pytestmark = pytest.mark.django_db


def budgets_url(organization: Organization) -> str:
    return reverse("console-budgets", args=[organization.slug])


def detail_url(organization: Organization, budget: Budget) -> str:
    return reverse("console-budget-detail", args=[organization.slug, budget.pk])


def page(response: Any) -> str:
    return html.unescape(response.content.decode())


def budget_for(organization: Organization, **fields: Any) -> Budget:
    values: dict[str, Any] = {"scope": "organization", "period": "monthly", "limit_usd": Decimal("10"), **fields}
    return Budget.objects.create(organization=organization, **values)


def spend(organization: Organization, owner: User, cost: str) -> None:
    UsageRecord.objects.create(
        request_id=f"req_{UsageRecord.objects.count() + 1}",
        organization=organization,
        api_key=issue_key(organization, created_by=owner).api_key,
        model="fake-small",
        provider="fake",
        cost_usd=Decimal(cost),
        status=UsageStatus.OK,
        http_status=200,
        created_at=timezone.now(),
    )


def row_of(body: str, budget: Budget) -> str:
    return body.split(f'data-budget-id="{budget.pk}"', 1)[1].split("</tr>", 1)[0]


def create_body(**fields: str) -> dict[str, str]:
    return {
        "name": "monthly cap",
        "scope": "organization",
        "period": "monthly",
        "limit_usd": "25.50",
        "hard_limit": "on",
        "alert_thresholds": "50, 80, 100",
        "enabled": "on",
        **fields,
    }


def test_it_lists_budgets_with_spend_and_a_usage_bar(
    owner_client: Client, organization: Organization, owner: User
) -> None:
    budget = budget_for(organization, name="org cap", limit_usd=Decimal("10"))
    spend(organization, owner, "2.5")
    response = owner_client.get(budgets_url(organization))
    assert response.status_code == 200
    row = row_of(page(response), budget)
    assert "org cap" in row
    assert "$2.50" in row
    assert "$10.00" in row
    assert 'style="width:25.0%"' in row
    assert 'class="over"' not in row


def test_a_spent_budget_shows_its_bar_over(owner_client: Client, organization: Organization, owner: User) -> None:
    budget = budget_for(organization, limit_usd=Decimal("1"))
    spend(organization, owner, "1.5")
    row = row_of(page(owner_client.get(budgets_url(organization))), budget)
    assert 'class="over"' in row
    assert 'style="width:100%"' in row or 'style="width:100.0%"' in row


def test_creating_a_budget(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(budgets_url(organization), create_body())
    assert response.status_code == 302
    budget = Budget.objects.get(organization=organization)
    assert budget.limit_usd == Decimal("25.50")
    assert budget.alert_thresholds == [50, 80, 100]
    assert budget.hard_limit is True
    assert budget.enabled is True
    assert budget.scope == "organization"
    assert budget.team is None


def test_creating_a_team_budget_ignores_the_other_targets(
    owner_client: Client, organization: Organization, owner: User
) -> None:
    team = TeamFactory.create(organization=organization)
    key = issue_key(organization, created_by=owner).api_key
    response = owner_client.post(
        budgets_url(organization), create_body(scope="team", team=str(team.pk), api_key=str(key.pk), hard_limit="")
    )
    assert response.status_code == 302
    budget = Budget.objects.get(organization=organization)
    assert budget.team == team
    assert budget.api_key is None
    assert budget.hard_limit is False


def test_a_scope_without_its_target_shows_the_apis_message(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(budgets_url(organization), create_body(scope="team"))
    assert response.status_code == 400
    body = page(response)
    assert "is required for a budget of scope team." in body
    assert not Budget.objects.exists()


def test_bad_budget_input_rerenders_with_400(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(budgets_url(organization), create_body(limit_usd="-3", alert_thresholds="50, lots"))
    assert response.status_code == 400
    body = page(response)
    assert "Ensure this value is greater than or equal to 0." in body
    assert "Give whole percents separated by commas" in body
    assert not Budget.objects.exists()


def test_a_duplicate_budget_is_refused_with_the_apis_message(owner_client: Client, organization: Organization) -> None:
    existing = budget_for(organization, period="monthly")
    response = owner_client.post(budgets_url(organization), create_body())
    assert response.status_code == 400
    assert f"Budget {existing.pk} already has this scope" in page(response)
    assert Budget.objects.count() == 1


def test_editing_a_budget_changes_its_limit(owner_client: Client, organization: Organization) -> None:
    budget = budget_for(organization, limit_usd=Decimal("10"))
    form = page(owner_client.get(detail_url(organization, budget)))
    assert 'id="budget-edit-form"' in form
    assert 'name="limit_usd" value="10"' in form
    response = owner_client.post(
        detail_url(organization, budget),
        {"name": "raised", "limit_usd": "42.75", "alert_thresholds": "90", "enabled": "on"},
    )
    assert response.status_code == 302
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal("42.75")
    assert budget.name == "raised"
    assert budget.alert_thresholds == [90]
    assert budget.hard_limit is False


def test_a_bad_edit_rerenders_with_400(owner_client: Client, organization: Organization) -> None:
    budget = budget_for(organization, limit_usd=Decimal("10"))
    response = owner_client.post(detail_url(organization, budget), {"limit_usd": "ten", "enabled": "on"})
    assert response.status_code == 400
    assert "Enter a number." in page(response)
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal("10")


def test_deleting_a_budget(owner_client: Client, organization: Organization) -> None:
    budget = budget_for(organization)
    response = owner_client.post(reverse("console-budget-delete", args=[organization.slug, budget.pk]))
    assert response.status_code == 302
    assert not Budget.objects.filter(pk=budget.pk).exists()


def test_members_see_budgets_without_controls_and_get_403(member_client: Client, organization: Organization) -> None:
    budget = budget_for(organization)
    body = page(member_client.get(budgets_url(organization)))
    assert f'data-budget-id="{budget.pk}"' in body
    assert 'id="budget-create-form"' not in body
    assert 'id="alert-settings-form"' not in body
    assert 'id="budget-edit-form"' not in page(member_client.get(detail_url(organization, budget)))
    assert member_client.post(budgets_url(organization), create_body()).status_code == 403
    assert member_client.post(detail_url(organization, budget), {"limit_usd": "99"}).status_code == 403
    delete = reverse("console-budget-delete", args=[organization.slug, budget.pk])
    assert member_client.post(delete).status_code == 403
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal("10")


def test_the_billing_role_manages_budgets_but_not_alert_settings(organization: Organization) -> None:
    client = signed_in(user_with_role(organization, Role.BILLING))
    body = page(client.get(budgets_url(organization)))
    assert 'id="budget-create-form"' in body
    assert 'id="alert-settings-form"' not in body
    alerts = reverse("console-budget-alerts", args=[organization.slug])
    assert client.post(alerts, {"alert_email": "x@example.com"}).status_code == 403
    assert client.post(budgets_url(organization), create_body()).status_code == 302


def test_outsiders_get_404(outsider_client: Client, organization: Organization) -> None:
    budget = budget_for(organization)
    assert outsider_client.get(budgets_url(organization)).status_code == 404
    assert outsider_client.post(budgets_url(organization), create_body()).status_code == 404
    assert outsider_client.get(detail_url(organization, budget)).status_code == 404
    assert outsider_client.post(detail_url(organization, budget), {"limit_usd": "99"}).status_code == 404
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal("10")


def test_another_organizations_budget_is_404(owner_client: Client, organization: Organization, outsider: User) -> None:
    foreign = budget_for(outsider.memberships.get().organization)
    assert owner_client.get(detail_url(organization, foreign)).status_code == 404
    assert owner_client.post(detail_url(organization, foreign), {"limit_usd": "1"}).status_code == 404


def test_saving_alert_settings(owner_client: Client, organization: Organization) -> None:
    alerts = reverse("console-budget-alerts", args=[organization.slug])
    response = owner_client.post(
        alerts, {"alert_email": "finance@example.com", "webhook_url": "https://hooks.example.com/t/abc"}
    )
    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.alert_email == "finance@example.com"
    assert organization.webhook_url == "https://hooks.example.com/t/abc"


def test_bad_alert_settings_rerender_with_400(owner_client: Client, organization: Organization) -> None:
    alerts = reverse("console-budget-alerts", args=[organization.slug])
    response = owner_client.post(alerts, {"alert_email": "not-an-email", "webhook_url": ""})
    assert response.status_code == 400
    assert "Enter a valid email address." in page(response)
    organization.refresh_from_db()
    assert organization.alert_email == ""


def test_the_webhook_secret_is_shown_once(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(reverse("console-webhook-secret", args=[organization.slug]))
    assert response.status_code == 201
    found = re.search(r'<code id="webhook-secret">([^<]+)</code>', response.content.decode())
    assert found is not None
    organization.refresh_from_db()
    assert organization.webhook_secret == found.group(1)
    assert found.group(1) not in page(owner_client.get(budgets_url(organization)))


def test_marking_a_notification_read(member_client: Client, organization: Organization) -> None:
    note = Notification.objects.create(organization=organization, kind="budget.threshold", title="80% spent")
    body = page(member_client.get(budgets_url(organization)))
    assert "80% spent" in body
    assert 'class="unread"' in body
    url = reverse("console-notification-read", args=[organization.slug, note.pk])
    assert member_client.post(url).status_code == 302
    note.refresh_from_db()
    assert note.read_at is not None
