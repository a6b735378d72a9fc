"""The page the emailed invitation link opens: sign in, see the invitation, join with a CSRF-protected POST."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import services
from accounts.models import Invitation, Membership, Organization, Role, User
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PAGE = reverse("invitation-accept-page")


@pytest.fixture
def invitee() -> User:
    return UserFactory.create(email="new.person@example.com")


def invite(organization: Organization, owner: User, email: str = "new.person@example.com") -> str:
    issued = services.invitation_create(
        organization=organization, email=email, role=Role.VIEWER, team=None, invited_by=owner,
        accept_url=f"http://testserver{PAGE}",
    )  # fmt: skip
    return issued.token


def signed_in(user: User, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def test_the_emailed_link_sends_a_stranger_to_sign_in_first(organization: Organization, owner: User) -> None:
    token = invite(organization, owner)

    response = Client().get(PAGE, {"token": token})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console-login"))


def test_the_invitee_sees_the_invitation_and_joins(organization: Organization, owner: User, invitee: User) -> None:
    token = invite(organization, owner)
    client = signed_in(invitee, csrf=True)

    page = client.get(PAGE, {"token": token})
    assert page.status_code == 200
    assert organization.name in page.content.decode()
    assert not Membership.objects.filter(user=invitee).exists()  # looking is not joining

    csrf = page.cookies["csrftoken"].value
    joined = client.post(PAGE, {"token": token, "csrfmiddlewaretoken": csrf})

    assert joined.status_code == 302
    assert joined["Location"] == reverse("console-home")
    assert Membership.objects.get(user=invitee, organization=organization).role == Role.VIEWER
    assert Invitation.objects.get(organization=organization).status == "accepted"


def test_joining_without_the_csrf_token_is_refused(organization: Organization, owner: User, invitee: User) -> None:
    token = invite(organization, owner)

    response = signed_in(invitee, csrf=True).post(PAGE, {"token": token})

    assert response.status_code == 403
    assert not Membership.objects.filter(user=invitee).exists()


def test_someone_else_cannot_use_the_link(organization: Organization, owner: User) -> None:
    token = invite(organization, owner)
    other = UserFactory.create(email="someone.else@example.com")

    response = signed_in(other).post(PAGE, {"token": token})

    assert response.status_code == 403
    assert "different email address" in response.content.decode()
    assert not Membership.objects.filter(user=other, organization=organization).exists()


@pytest.mark.parametrize("token", ["", "not-a-real-token"])
def test_an_unknown_token_is_a_404(invitee: User, token: str) -> None:
    response = signed_in(invitee).get(PAGE, {"token": token})

    assert response.status_code == 404
    assert "No such invitation" in response.content.decode()


def test_an_expired_invitation_says_so(organization: Organization, owner: User, invitee: User) -> None:
    token = invite(organization, owner)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = signed_in(invitee).post(PAGE, {"token": token})

    assert response.status_code == 400
    assert "expired" in response.content.decode()
    assert not Membership.objects.filter(user=invitee).exists()
