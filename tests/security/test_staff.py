"""Platform operators (Django staff) and tenant roles are separate: neither grants the other."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import Membership, Role, User
from tests.conftest import Tenant
from tests.factories import MembershipFactory

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db: None) -> User:
    return User.objects.create_user("ops@example.com", PASSWORD, is_staff=True, is_superuser=True)


def test_the_admin_site_is_for_staff(staff: User) -> None:
    client = Client()

    assert client.get(reverse("admin:index")).status_code == 302
    client.post(reverse("admin:login"), {"username": staff.email, "password": PASSWORD})
    assert client.get(reverse("admin:index")).status_code == 200


@pytest.mark.parametrize("role", list(Role))
def test_no_tenant_role_opens_the_admin(tenant: Tenant, role: str) -> None:
    user = MembershipFactory.create(organization=tenant.organization, role=role).user
    user.save(update_fields=["password"])
    client = Client()

    response = client.post(reverse("admin:login"), {"username": user.email, "password": PASSWORD})

    assert response.status_code == 200
    assert b"staff account" in response.content
    assert client.get(reverse("admin:index")).status_code == 302
    client.force_login(user)  # even signed in (through the console)
    assert client.get(reverse("admin:index")).status_code == 302
    assert client.get(reverse("admin:accounts_user_changelist")).status_code == 302


def test_staff_get_no_tenant_rights_from_being_staff(tenant: Tenant, staff: User) -> None:
    client = APIClient()
    client.force_authenticate(staff)
    slug = tenant.organization.slug

    assert client.get(reverse("org-list")).json()["data"] == []
    for name in ("org-detail", "key-list", "org-export", "usage"):
        response = client.get(reverse(name, args=[slug]))
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == "not_found"
    assert client.post(reverse("key-list", args=[slug]), {"name": "ops key"}, format="json").status_code == 404


def test_staff_see_no_tenant_console_pages(tenant: Tenant, staff: User) -> None:
    client = Client()
    client.force_login(staff)

    assert client.get(reverse("console-recommendations", args=[tenant.organization.slug])).status_code == 404
    home = client.get(reverse("console-home"))
    assert tenant.organization.name.encode() not in home.content


def test_staff_who_are_also_members_act_with_their_role_only(tenant: Tenant, staff: User) -> None:
    Membership.objects.create(user=staff, organization=tenant.organization, role=Role.VIEWER)
    client = APIClient()
    client.force_authenticate(staff)
    slug = tenant.organization.slug

    assert client.get(reverse("org-detail", args=[slug])).json()["role"] == Role.VIEWER
    assert client.get(reverse("org-export", args=[slug])).status_code == 403
    assert client.post(reverse("key-list", args=[slug]), {"name": "ops key"}, format="json").status_code == 403


def test_the_admin_says_whose_it_is(admin_client: Client) -> None:
    page = admin_client.get("/admin/").content.decode()
    assert "ModelMuxer operator admin" in page
    assert "Django administration" not in page
