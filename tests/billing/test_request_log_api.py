"""GET /api/orgs/<org>/usage/<id>/bodies/: one usage record's kept bodies, for owners and admins."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import APIKey, KeyScope, Organization, Role, User
from billing.models import UsageRecord
from billing.request_log import request_log_bodies
from billing.usage import usage_write_batch
from tests.accounts.helpers import as_key, as_user, assert_openai_error, key_with_scopes, user_with_role
from tests.factories import issue_key

from .test_usage import T0, event

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    return APIClient()


@pytest.fixture
def key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner).api_key


@pytest.fixture
def logged(key: APIKey) -> UsageRecord:
    bodies = request_log_bodies(
        request={"model": "auto", "messages": [{"role": "user", "content": "ping 10.0.0.7"}]},
        response={"choices": [{"message": {"role": "assistant", "content": "pong"}}]},
    )
    usage_write_batch([event(key, "req_logged", request_log=bodies), event(key, "req_plain")])
    return UsageRecord.objects.get(request_id="req_logged")


def url(organization: Organization, usage_id: int) -> str:
    return reverse("usage-bodies", args=[organization.slug, usage_id])


def test_the_owner_gets_the_bodies(
    client: APIClient, organization: Organization, owner: User, logged: UsageRecord
) -> None:
    response = as_user(client, owner).get(url(organization, logged.pk))

    assert response.status_code == 200
    assert response.json() == {
        "object": "usage.bodies",
        "usage_id": logged.pk,
        "request_id": "req_logged",
        "attempt": 1,
        "created_at": datetime.fromtimestamp(T0, tz=UTC).isoformat().replace("+00:00", "Z"),
        "request": {"model": "auto", "messages": [{"role": "user", "content": "ping [IP_1]"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "pong"}}]},
    }


def test_an_admin_scope_key_gets_them(client: APIClient, organization: Organization, logged: UsageRecord) -> None:
    response = as_key(client, key_with_scopes(organization, KeyScope.ADMIN)).get(url(organization, logged.pk))

    assert response.status_code == 200
    assert response.json()["request_id"] == "req_logged"


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_roles_below_admin_get_403(
    role: Role, client: APIClient, organization: Organization, logged: UsageRecord
) -> None:
    response = as_user(client, user_with_role(organization, role)).get(url(organization, logged.pk))

    assert_openai_error(response, 403, code="permission_denied")
    assert "IP_1" not in response.content.decode()


def test_a_read_scope_key_gets_403(client: APIClient, organization: Organization, logged: UsageRecord) -> None:
    response = as_key(client, key_with_scopes(organization, KeyScope.READ)).get(url(organization, logged.pk))

    assert_openai_error(response, 403, code="permission_denied")


def test_an_outsider_gets_404(
    client: APIClient, organization: Organization, outsider: User, logged: UsageRecord
) -> None:
    response = as_user(client, outsider).get(url(organization, logged.pk))

    assert_openai_error(response, 404, code="not_found")


def test_a_record_without_bodies_is_404(
    client: APIClient, organization: Organization, owner: User, logged: UsageRecord
) -> None:
    plain = UsageRecord.objects.get(request_id="req_plain")

    response = as_user(client, owner).get(url(organization, plain.pk))

    assert_openai_error(response, 404, code="not_found")


@pytest.mark.parametrize("usage_id", [0, 2**63, 48440833124657979065368576])
def test_an_id_no_row_can_have_is_404_not_500(
    usage_id: int, client: APIClient, organization: Organization, owner: User
) -> None:
    response = as_user(client, owner).get(url(organization, usage_id))

    assert_openai_error(response, 404, code="not_found")
