"""The response cache's lifetime and the request log, as organization settings on PATCH /api/orgs/<org>/."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.auth import authenticate_sync, forget_cached_keys
from accounts.models import Organization, Role, User
from audit.models import AuditEvent
from tests.factories import issue_key

from .helpers import as_user, assert_openai_error, user_with_role

pytestmark = pytest.mark.django_db

FIELDS = ("response_cache_ttl_seconds", "request_log_enabled", "request_log_retention_days")


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def url(organization: Organization) -> str:
    return reverse("org-detail", args=[organization.slug])


def stored(organization: Organization) -> tuple[Any, ...]:
    row = Organization.objects.get(pk=organization.pk)
    return tuple(getattr(row, field) for field in FIELDS)


def test_every_member_reads_the_defaults(client: APIClient, organization: Organization) -> None:
    viewer = user_with_role(organization, Role.VIEWER)

    body = as_user(client, viewer).get(url(organization)).json()

    assert {field: body[field] for field in FIELDS} == {
        "response_cache_ttl_seconds": 3600,
        "request_log_enabled": False,
        "request_log_retention_days": 30,
    }


def test_the_owner_changes_them_and_it_is_audited(client: APIClient, organization: Organization, owner: User) -> None:
    response = as_user(client, owner).patch(
        url(organization),
        {"response_cache_ttl_seconds": 0, "request_log_enabled": True, "request_log_retention_days": 7},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert stored(organization) == (0, True, 7)
    assert {field: response.json()[field] for field in FIELDS} == {
        "response_cache_ttl_seconds": 0,
        "request_log_enabled": True,
        "request_log_retention_days": 7,
    }
    event = AuditEvent.objects.get(action="organization.updated")
    assert event.metadata == {"fields": sorted(FIELDS)}
    assert event.before == {
        "response_cache_ttl_seconds": 3600,
        "request_log_enabled": False,
        "request_log_retention_days": 30,
    }
    assert event.after == {
        "response_cache_ttl_seconds": 0,
        "request_log_enabled": True,
        "request_log_retention_days": 7,
    }


@pytest.mark.parametrize(("ttl", "days"), [(0, 1), (30 * 24 * 3600, 3650)])
def test_the_bounds_themselves_are_accepted(
    ttl: int, days: int, client: APIClient, organization: Organization, owner: User
) -> None:
    response = as_user(client, owner).patch(
        url(organization), {"response_cache_ttl_seconds": ttl, "request_log_retention_days": days}, format="json"
    )

    assert response.status_code == 200, response.content
    assert stored(organization) == (ttl, False, days)


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "a negative lifetime": ({"response_cache_ttl_seconds": -1}, "response_cache_ttl_seconds"),
    "a lifetime over 30 days": ({"response_cache_ttl_seconds": 30 * 24 * 3600 + 1}, "response_cache_ttl_seconds"),
    "a lifetime as text": ({"response_cache_ttl_seconds": "an hour"}, "response_cache_ttl_seconds"),
    "zero retention": ({"request_log_retention_days": 0}, "request_log_retention_days"),
    "retention over ten years": ({"request_log_retention_days": 3651}, "request_log_retention_days"),
    "a null retention": ({"request_log_retention_days": None}, "request_log_retention_days"),
    "a log switch that is no boolean": ({"request_log_enabled": "maybe"}, "request_log_enabled"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_value_out_of_bounds_is_a_400_and_changes_nothing(
    case: str, client: APIClient, organization: Organization, owner: User
) -> None:
    body, param = BAD[case]
    before = stored(organization)

    # With a valid change beside it, which must not be applied either.
    valid = {"request_log_retention_days": 5} if param == "request_log_enabled" else {"request_log_enabled": True}

    response = as_user(client, owner).patch(url(organization), {**body, **valid}, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert stored(organization) == before
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_roles_below_admin_may_not_turn_the_log_on(role: Role, client: APIClient, organization: Organization) -> None:
    response = as_user(client, user_with_role(organization, role)).patch(
        url(organization), {"request_log_enabled": True}, format="json"
    )

    assert response.status_code == 403
    assert stored(organization) == (3600, False, 30)


def test_the_keys_pick_up_the_new_cache_and_log_settings(
    client: APIClient, organization: Organization, owner: User
) -> None:
    secret = issue_key(organization, created_by=owner).secret

    as_user(client, owner).patch(
        url(organization), {"response_cache_ttl_seconds": 120, "request_log_enabled": True}, format="json"
    )
    forget_cached_keys()
    found = authenticate_sync(f"Bearer {secret}")

    assert (found.response_cache_ttl, found.request_log) == (120, True)
