"""The budget API: owner, admin and billing write; other members read; outsiders get 404."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey, Organization, Role, Team, User
from audit.models import AuditEvent
from billing.budgets import period_bounds
from billing.models import Budget, UsageRecord, UsageStatus
from tests.factories import MembershipFactory, TeamFactory, UserFactory, issue_key

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db

ORG_BUDGET = {"name": "All spend", "scope": "organization", "period": "monthly", "limit_usd": "25.50"}


@pytest.fixture
def client() -> APIClient:
    return APIClient()


@pytest.fixture
def their_org(outsider: User) -> Organization:
    return outsider.memberships.get().organization


def as_user(client: APIClient, user: User) -> APIClient:
    client.force_authenticate(user)
    return client


def user_with_role(organization: Organization, role: str) -> User:
    return MembershipFactory.create(organization=organization, role=role, user=UserFactory.create()).user


def budget_for(organization: Organization, **fields: Any) -> Budget:
    values: dict[str, Any] = {"scope": "organization", "period": "monthly", "limit_usd": Decimal("10"), **fields}
    return Budget.objects.create(organization=organization, **values)


def create(client: APIClient, organization: Organization, body: dict[str, Any]) -> Response:
    return client.post(reverse("budget-list", args=[organization.slug]), body, format="json")


def assert_bad_request(response: Response, param: str | None, message: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_request_error"
    assert error["param"] == param
    assert message in error["message"]


def usage_row(organization: Organization, key: APIKey, cost: str, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req_{UsageRecord.objects.count() + 1}",
        "organization": organization,
        "api_key": key,
        "model": "fake-small",
        "provider": "fake",
        "cost_usd": Decimal(cost),
        "status": UsageStatus.OK,
        "http_status": 200,
        "created_at": timezone.now(),
        **fields,
    }
    return UsageRecord.objects.create(**values)


# --- create and read -------------------------------------------------------------------------


def test_an_owner_creates_an_organization_budget(client: APIClient, organization: Organization, owner: User) -> None:
    response = create(as_user(client, owner), organization, ORG_BUDGET)

    assert response.status_code == 201, response.content
    body = response.json()
    budget = Budget.objects.get(pk=body["id"])
    assert budget.organization == organization
    assert (budget.limit_usd, budget.hard_limit, budget.alert_thresholds) == (Decimal("25.5"), True, [50, 80, 95, 100])
    assert body["limit_usd"] == "25.5000000000"
    assert body["scope"] == "organization"
    assert (body["team"], body["api_key"], body["user"], body["model"]) == (None, None, None, "")
    start, end = period_bounds("monthly", organization.timezone, timezone.now())
    assert body["usage"] == {
        "period_start": start.isoformat().replace("+00:00", "Z"),
        "period_end": end.isoformat().replace("+00:00", "Z") if end else None,
        "spent_usd": "0.0000000000",
        "reserved_usd": "0.0000000000",
        "remaining_usd": "25.5000000000",
    }
    event = AuditEvent.objects.get(action="budget.created")
    assert (event.organization, event.actor, event.target_id) == (organization, owner, str(budget.pk))
    assert event.metadata["limit_usd"] == "25.5000000000"


@pytest.mark.parametrize("role", [Role.ADMIN, Role.BILLING])
def test_admins_and_billing_create_budgets(client: APIClient, organization: Organization, role: str) -> None:
    response = create(as_user(client, user_with_role(organization, role)), organization, ORG_BUDGET)

    assert response.status_code == 201, response.content


def test_a_limit_may_be_a_number(client: APIClient, organization: Organization, owner: User) -> None:
    response = create(as_user(client, owner), organization, {**ORG_BUDGET, "limit_usd": 12.25})

    assert response.status_code == 201
    assert Budget.objects.get().limit_usd == Decimal("12.25")


def test_usage_shows_the_current_periods_spend(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    key = issue_key(organization, created_by=owner).api_key
    budget = budget_for(organization, limit_usd=Decimal("2"))
    usage_row(organization, key, "0.75")
    usage_row(organization, key, "0.05")
    usage_row(organization, key, "9", created_at=datetime(2020, 1, 1, tzinfo=UTC))  # an earlier period

    body = as_user(client, owner).get(reverse("budget-detail", args=[organization.slug, budget.pk])).json()

    assert body["usage"]["spent_usd"] == "0.8000000000"
    assert body["usage"]["remaining_usd"] == "1.2000000000"


def test_a_lifetime_budget_has_no_period_end(client: APIClient, organization: Organization, owner: User) -> None:
    budget = budget_for(organization, period="lifetime")

    body = as_user(client, owner).get(reverse("budget-detail", args=[organization.slug, budget.pk])).json()

    assert body["usage"]["period_start"] == "1970-01-01T00:00:00Z"
    assert body["usage"]["period_end"] is None


def test_members_list_their_organizations_budgets(
    client: APIClient, organization: Organization, member: User, their_org: Organization
) -> None:
    ours = budget_for(organization, name="ours")
    budget_for(their_org, name="theirs")

    body = as_user(client, member).get(reverse("budget-list", args=[organization.slug])).json()

    assert body["object"] == "list"
    assert [b["id"] for b in body["data"]] == [ours.pk]
    assert body["data"][0]["usage"]["remaining_usd"] == "10.0000000000"


@pytest.mark.parametrize(
    ("scope", "target"),
    [("team", "team"), ("api_key", "api_key"), ("user", "user")],
)
def test_budgets_target_a_team_a_key_or_a_member(
    client: APIClient, organization: Organization, owner: User, member: User, scope: str, target: str
) -> None:
    ids = {
        "team": TeamFactory.create(organization=organization).pk,
        "api_key": issue_key(organization, created_by=owner).api_key.pk,
        "user": member.pk,
    }

    response = create(as_user(client, owner), organization, {**ORG_BUDGET, "scope": scope, target: ids[target]})

    assert response.status_code == 201, response.content
    assert response.json()[target] == ids[target]
    assert getattr(Budget.objects.get(), f"{target}_id") == ids[target]


def test_a_budget_may_cover_one_model_with_its_own_thresholds(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    body = {**ORG_BUDGET, "model": "fake-large", "alert_thresholds": [90, 25, 90, 60], "hard_limit": False}

    response = create(as_user(client, owner), organization, body)

    assert response.status_code == 201, response.content
    assert response.json()["alert_thresholds"] == [25, 60, 90]
    budget = Budget.objects.get()
    assert (budget.model, budget.hard_limit, budget.alert_thresholds) == ("fake-large", False, [25, 60, 90])


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({**ORG_BUDGET, "scope": "galaxy"}, "scope", "not a valid choice"),
        ({**ORG_BUDGET, "period": "fortnightly"}, "period", "not a valid choice"),
        ({**ORG_BUDGET, "limit_usd": "-1"}, "limit_usd", "greater than or equal to 0"),
        ({**ORG_BUDGET, "limit_usd": "ten"}, "limit_usd", "valid number"),
        ({**ORG_BUDGET, "limit_usd": "0.00000000001"}, "limit_usd", "decimal places"),
        ({k: v for k, v in ORG_BUDGET.items() if k != "limit_usd"}, "limit_usd", "required"),
        ({**ORG_BUDGET, "limit": "10"}, "limit", "is not a budget field"),
        ({**ORG_BUDGET, "alert_thresholds": [50, 101]}, "alert_thresholds.1", "less than or equal to 100"),
        ({**ORG_BUDGET, "alert_thresholds": [0]}, "alert_thresholds.0", "greater than or equal to 1"),
        ({**ORG_BUDGET, "alert_thresholds": "50"}, "alert_thresholds", "list"),
        ({**ORG_BUDGET, "model": "gpt-imaginary"}, "model", "unknown model: gpt-imaginary"),
        ({**ORG_BUDGET, "scope": "team"}, "team", "is required for a budget of scope team"),
        ({**ORG_BUDGET, "scope": "api_key"}, "api_key", "is required for a budget of scope api_key"),
        ({**ORG_BUDGET, "team": 1}, "team", "must be empty for a budget of scope organization"),
    ],
)
def test_invalid_budgets_are_refused_naming_the_field(
    client: APIClient, organization: Organization, owner: User, body: dict[str, Any], param: str, message: str
) -> None:
    response = create(as_user(client, owner), organization, body)

    assert_bad_request(response, param, message)
    assert not Budget.objects.exists()


def test_a_user_budget_cannot_name_another_target_too(
    client: APIClient, organization: Organization, owner: User, member: User
) -> None:
    team = TeamFactory.create(organization=organization)
    body = {**ORG_BUDGET, "scope": "user", "user": member.pk, "team": team.pk}

    assert_bad_request(create(as_user(client, owner), organization, body), "team", "must be empty")


@pytest.mark.parametrize("target", ["team", "api_key", "user"])
def test_another_organizations_target_is_refused_like_an_unknown_one(
    client: APIClient, organization: Organization, owner: User, their_org: Organization, outsider: User, target: str
) -> None:
    foreign = {
        "team": TeamFactory.create(organization=their_org).pk,
        "api_key": issue_key(their_org, created_by=outsider).api_key.pk,
        "user": outsider.pk,
    }
    messages = {
        "team": "No such team in this organization.",
        "api_key": "No such API key in this organization.",
        "user": "No such member of this organization.",
    }
    body = {**ORG_BUDGET, "scope": target, target: foreign[target]}

    response = create(as_user(client, owner), organization, body)

    assert_bad_request(response, target, messages[target])
    unknown = create(client, organization, {**body, target: 987654})
    assert unknown.json()["error"]["message"] == response.json()["error"]["message"]
    assert not Budget.objects.exists()


def test_a_second_budget_for_the_same_scope_model_and_period_is_refused(
    client: APIClient, organization: Organization, owner: User
) -> None:
    team = TeamFactory.create(organization=organization)
    body = {**ORG_BUDGET, "scope": "team", "team": team.pk}
    first = create(as_user(client, owner), organization, body)

    again = create(client, organization, {**body, "name": "another", "limit_usd": "99"})

    assert first.status_code == 201
    assert_bad_request(again, None, f"Budget {first.json()['id']} already has this scope, target, model and period")
    assert Budget.objects.count() == 1
    # Another period, another team or the whole organization are different budgets.
    assert create(client, organization, {**body, "period": "daily"}).status_code == 201
    other_team = TeamFactory.create(organization=organization)
    assert create(client, organization, {**body, "team": other_team.pk}).status_code == 201
    assert create(client, organization, ORG_BUDGET).status_code == 201


# --- update and delete ------------------------------------------------------------------------------


def test_an_owner_changes_the_limit_and_thresholds(client: APIClient, organization: Organization, owner: User) -> None:
    budget = budget_for(organization)
    url = reverse("budget-detail", args=[organization.slug, budget.pk])

    response = as_user(client, owner).patch(
        url, {"limit_usd": "40", "alert_thresholds": [100, 75], "enabled": False}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["limit_usd"], body["alert_thresholds"], body["enabled"]) == ("40.0000000000", [75, 100], False)
    budget.refresh_from_db()
    assert (budget.limit_usd, budget.alert_thresholds, budget.enabled) == (Decimal(40), [75, 100], False)
    event = AuditEvent.objects.get(action="budget.updated")
    assert event.actor == owner
    assert event.metadata["changes"]["limit_usd"] == {"old": "10.0000000000", "new": "40.0000000000"}
    assert event.metadata["changes"]["enabled"] == {"old": True, "new": False}


def test_a_patch_that_changes_nothing_records_nothing(
    client: APIClient, organization: Organization, owner: User
) -> None:
    budget = budget_for(organization, name="same")

    response = as_user(client, owner).patch(
        reverse("budget-detail", args=[organization.slug, budget.pk]), {"name": "same"}, format="json"
    )

    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="budget.updated").exists()


@pytest.mark.parametrize("field", ["scope", "period", "model", "team"])
def test_what_a_budget_counts_cannot_be_changed(
    client: APIClient, organization: Organization, owner: User, field: str
) -> None:
    budget = budget_for(organization)
    values = {"scope": "team", "period": "daily", "model": "fake-small", "team": 1}

    response = as_user(client, owner).patch(
        reverse("budget-detail", args=[organization.slug, budget.pk]), {field: values[field]}, format="json"
    )

    assert_bad_request(response, field, "cannot be changed; create a budget with the new value")
    budget.refresh_from_db()
    assert (budget.scope, budget.period, budget.model) == ("organization", "monthly", "")


def test_a_patch_is_validated_like_a_create(client: APIClient, organization: Organization, owner: User) -> None:
    budget = budget_for(organization)
    url = reverse("budget-detail", args=[organization.slug, budget.pk])

    assert_bad_request(
        as_user(client, owner).patch(url, {"limit_usd": "-5"}, format="json"), "limit_usd", "greater than or equal"
    )
    assert_bad_request(client.patch(url, {"colour": "red"}, format="json"), "colour", "is not a budget field")
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal(10)


def test_an_owner_deletes_a_budget(client: APIClient, organization: Organization, owner: User) -> None:
    budget = budget_for(organization, name="old")

    response = as_user(client, owner).delete(reverse("budget-detail", args=[organization.slug, budget.pk]))

    assert response.status_code == 204
    assert not Budget.objects.filter(pk=budget.pk).exists()
    event = AuditEvent.objects.get(action="budget.deleted")
    assert (event.actor, event.target_id, event.metadata["name"]) == (owner, str(budget.pk), "old")


# --- the standard cast ------------------------------------------------------------------------------


def endpoints(org: str, budget_id: int) -> dict[str, tuple[str, str]]:
    return {
        "list": ("get", reverse("budget-list", args=[org])),
        "create": ("post", reverse("budget-list", args=[org])),
        "retrieve": ("get", reverse("budget-detail", args=[org, budget_id])),
        "update": ("patch", reverse("budget-detail", args=[org, budget_id])),
        "delete": ("delete", reverse("budget-detail", args=[org, budget_id])),
    }


def call(client: APIClient, method: str, url: str) -> Response:
    if method == "post":
        return client.post(url, ORG_BUDGET, format="json")
    if method == "patch":
        return client.patch(url, {"limit_usd": "1"}, format="json")
    response: Response = getattr(client, method)(url)
    return response


@pytest.mark.parametrize("endpoint", ["list", "create", "retrieve", "update", "delete"])
def test_an_outsider_gets_404_from_every_budget_endpoint(
    client: APIClient, organization: Organization, outsider: User, endpoint: str
) -> None:
    budget = budget_for(organization)
    method, url = endpoints(organization.slug, budget.pk)[endpoint]

    response = call(as_user(client, outsider), method, url)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal(10)
    assert Budget.objects.count() == 1


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
@pytest.mark.parametrize("endpoint", ["create", "update", "delete"])
def test_members_below_billing_cannot_change_budgets(
    client: APIClient, organization: Organization, role: str, endpoint: str
) -> None:
    budget = budget_for(organization)
    method, url = endpoints(organization.slug, budget.pk)[endpoint]

    response = call(as_user(client, user_with_role(organization, role)), method, url)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal(10)
    assert Budget.objects.count() == 1


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
@pytest.mark.parametrize("endpoint", ["list", "retrieve"])
def test_every_member_reads_budgets(client: APIClient, organization: Organization, role: str, endpoint: str) -> None:
    budget = budget_for(organization)
    method, url = endpoints(organization.slug, budget.pk)[endpoint]

    response = call(as_user(client, user_with_role(organization, role)), method, url)

    assert response.status_code == 200


@pytest.mark.parametrize("endpoint", ["retrieve", "update", "delete"])
def test_another_organizations_budget_is_404_even_for_an_owner(
    client: APIClient, organization: Organization, owner: User, their_org: Organization, endpoint: str
) -> None:
    theirs = budget_for(their_org)
    method, url = endpoints(organization.slug, theirs.pk)[endpoint]

    response = call(as_user(client, owner), method, url)

    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.limit_usd == Decimal(10)


def test_anonymous_callers_are_refused(client: APIClient, organization: Organization) -> None:
    assert client.get(reverse("budget-list", args=[organization.slug])).status_code == 401


# --- admin and schema ----------------------------------------------------------------------------------


def test_the_admin_creates_budgets_through_the_service(organization: Organization) -> None:
    staff = UserFactory.create(is_staff=True, is_superuser=True)
    team = TeamFactory.create(organization=organization)
    client = APIClient()
    client.force_login(staff)
    form = {
        "organization": organization.pk,
        "name": "from the admin",
        "scope": "team",
        "team": team.pk,
        "model": "",
        "period": "weekly",
        "limit_usd": "3",
        "hard_limit": "on",
        "alert_thresholds": "[80, 50]",
        "enabled": "on",
    }

    response = client.post(reverse("admin:billing_budget_add"), form)

    assert response.status_code == 302, response.content.decode()[:2000]
    budget = Budget.objects.get()
    assert (budget.team, budget.alert_thresholds) == (team, [50, 80])
    assert AuditEvent.objects.get(action="budget.created").actor == staff
    again = client.post(reverse("admin:billing_budget_add"), form)
    assert again.status_code == 200
    assert b"already has this scope, target, model and period" in again.content


def test_the_admin_refuses_another_organizations_team(organization: Organization, their_org: Organization) -> None:
    staff = UserFactory.create(is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_login(staff)
    foreign: Team = TeamFactory.create(organization=their_org)
    form = {"organization": organization.pk, "scope": "team", "team": foreign.pk, "period": "weekly",
            "limit_usd": "3", "alert_thresholds": "[]"}  # fmt: skip

    response = client.post(reverse("admin:billing_budget_add"), form)

    assert response.status_code == 200
    assert b"This team belongs to another organization." in response.content
    assert not Budget.objects.exists()


def test_the_openapi_schema_documents_the_billing_endpoints(client: APIClient) -> None:
    response = client.get(reverse("schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths["/api/orgs/{org}/budgets/"]) >= {"get", "post"}
    assert set(paths["/api/orgs/{org}/budgets/{budget_id}/"]) >= {"get", "patch", "delete"}
    assert "/api/orgs/{org}/notifications/{notification_id}/read/" in paths
    assert "days" in {p["name"] for p in paths["/api/orgs/{org}/recommendations/"]["get"]["parameters"]}
