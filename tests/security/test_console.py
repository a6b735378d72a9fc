"""The console's session sign-in and sign-out, its home page, and CSRF."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from tests.conftest import Tenant

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_the_login_page_has_a_csrf_protected_form(client: Client) -> None:
    response = client.get(reverse("console-login"))

    assert response.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in response.content
    assert b'type="password"' in response.content


def test_signing_in_leads_to_the_users_organizations(can_log_in: User, tenant: Tenant, outsider: User) -> None:
    client = Client()

    response = client.post(reverse("console-login"), {"username": can_log_in.email, "password": PASSWORD})

    assert response.status_code == 302
    assert response["Location"] == reverse("console-home")
    home = client.get(reverse("console-home"))
    assert home.status_code == 200
    assert tenant.organization.name.encode() in home.content
    assert reverse("console-recommendations", args=[tenant.organization.slug]).encode() in home.content
    other = outsider.memberships.get().organization
    assert other.slug.encode() not in home.content


def test_a_wrong_password_does_not_sign_in(can_log_in: User) -> None:
    client = Client()

    response = client.post(reverse("console-login"), {"username": can_log_in.email, "password": "wrong"})

    assert response.status_code == 200
    assert b"Please enter a correct" in response.content
    assert "_auth_user_id" not in client.session


def test_the_console_sends_strangers_to_the_login_page(client: Client) -> None:
    response = client.get(reverse("console-home"))

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('console-login')}?next={reverse('console-home')}"


def test_next_cannot_send_the_user_to_another_site(can_log_in: User) -> None:
    client = Client()

    response = client.post(
        reverse("console-login"),
        {"username": can_log_in.email, "password": PASSWORD, "next": "https://evil.example/"},
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("console-home")


def test_signing_out_takes_a_post(can_log_in: User) -> None:
    client = Client()
    client.post(reverse("console-login"), {"username": can_log_in.email, "password": PASSWORD})

    assert client.get(reverse("console-logout")).status_code == 405
    assert client.get(reverse("console-home")).status_code == 200

    response = client.post(reverse("console-logout"))

    assert response.status_code == 302
    assert response["Location"] == reverse("console-login")
    assert client.get(reverse("console-home")).status_code == 302


def test_login_without_the_csrf_token_is_refused(can_log_in: User) -> None:
    client = Client(enforce_csrf_checks=True)

    response = client.post(reverse("console-login"), {"username": can_log_in.email, "password": PASSWORD})

    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_login_with_the_csrf_token_works_under_csrf_checks(can_log_in: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.get(reverse("console-login"))
    token = client.cookies["csrftoken"].value

    response = client.post(
        reverse("console-login"), {"username": can_log_in.email, "password": PASSWORD, "csrfmiddlewaretoken": token}
    )

    assert response.status_code == 302


def test_logout_without_the_csrf_token_is_refused(can_log_in: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(can_log_in)

    assert client.post(reverse("console-logout")).status_code == 403
    assert client.get(reverse("console-home")).status_code == 200


def test_the_session_cookie_is_http_only_and_same_site(can_log_in: User) -> None:
    client = Client()

    client.post(reverse("console-login"), {"username": can_log_in.email, "password": PASSWORD})

    cookie = client.cookies["sessionid"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
