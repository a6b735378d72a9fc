"""Creating an organization through the API: the signed-in user becomes its owner."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import Membership, Organization, Role, User
from audit.models import AuditEvent
from tests.factories import OrganizationFactory

from .helpers import as_key, as_user, assert_openai_error, key_with_scopes

pytestmark = pytest.mark.django_db

URL = reverse("org-list")


def test_a_signed_in_user_creates_an_organization_and_owns_it(outsider: User) -> None:
    response = as_user(APIClient(), outsider).post(
        URL, {"name": "Acme Labs", "timezone": "Europe/Paris"}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["slug"], body["timezone"], body["role"]) == (
        "Acme Labs",
        "acme-labs",
        "Europe/Paris",
        "owner",
    )
    organization = Organization.objects.get(pk=body["id"])
    assert Membership.objects.get(organization=organization).role == Role.OWNER
    assert Membership.objects.get(organization=organization).user == outsider
    event = AuditEvent.objects.get(action="organization.created", organization=organization)
    assert event.actor_id == outsider.pk
    assert "acme-labs" in [o["slug"] for o in as_user(APIClient(), outsider).get(URL).json()["data"]]


def test_a_taken_slug_gets_a_number(outsider: User) -> None:
    OrganizationFactory.create(slug="acme")

    response = as_user(APIClient(), outsider).post(URL, {"name": "Other", "slug": "acme"}, format="json")

    assert response.status_code == 201
    assert response.json()["slug"] == "acme-2"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "A", "slug": "not a slug!"}, "slug"),
        ({"name": "A", "timezone": "Mars/Olympus"}, "timezone"),
        ({"name": "A", "owner": 7}, "owner"),
        ({"name": ["A"]}, "name"),
    ],
)
def test_bad_input_is_a_400_and_creates_nothing(outsider: User, body: dict[str, object], param: str) -> None:
    before = Organization.objects.count()

    response = as_user(APIClient(), outsider).post(URL, body, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert Organization.objects.count() == before


def test_an_api_key_cannot_create_an_organization(organization: Organization) -> None:
    before = Organization.objects.count()

    response = as_key(APIClient(), key_with_scopes(organization, "admin")).post(URL, {"name": "By key"}, format="json")

    assert response.status_code in (401, 403)
    assert "error" in response.json()
    assert Organization.objects.count() == before


def test_anonymous_is_a_401() -> None:
    response = APIClient().post(URL, {"name": "Nobody"}, format="json")

    assert response.status_code == 401
    assert not Organization.objects.filter(name="Nobody").exists()
