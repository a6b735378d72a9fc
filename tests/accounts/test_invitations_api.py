"""Invitations: owners and admins invite by email, the invitee accepts with the emailed token once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from accounts import keys
from accounts.models import Invitation, Membership, Organization, Role, User
from accounts.permissions import Perm, assignable_roles, role_can
from audit.models import AuditEvent
from tests.factories import MembershipFactory, TeamFactory, UserFactory

from .helpers import as_key, as_user, assert_openai_error, audit_text, key_with_scopes, user_with_role

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db

INVITEE = "new.person@example.com"
Capture = Callable[..., Any]  # django_capture_on_commit_callbacks


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def list_url(organization: Organization) -> str:
    return reverse("invitation-list", args=[organization.slug])


def detail_url(organization: Organization, invitation: Invitation | int) -> str:
    pk = invitation if isinstance(invitation, int) else invitation.pk
    return reverse("invitation-detail", args=[organization.slug, pk])


def invite(client: APIClient, organization: Organization, capture: Capture, **body: Any) -> Response:
    """POST an invitation and run what waits for the commit (the email), as a real request would."""
    with capture(execute=True):
        return client.post(list_url(organization), {"email": INVITEE, **body}, format="json")


def accept(client: APIClient, token: str) -> Response:
    return client.post(reverse("invitation-accept"), {"token": token}, format="json")


@pytest.fixture
def invited(
    client: APIClient, organization: Organization, owner: User, django_capture_on_commit_callbacks: Capture
) -> Response:
    team = TeamFactory.create(organization=organization, name="Research")
    response = invite(
        as_user(client, owner), organization, django_capture_on_commit_callbacks, role="admin", team=team.pk
    )
    client.force_authenticate(None)
    return response


@pytest.fixture
def invitee(db: None) -> User:
    return UserFactory.create(email=INVITEE)


# --- inviting -----------------------------------------------------------------------------------


def test_the_owner_invites_someone(invited: Response, organization: Organization, owner: User) -> None:
    assert invited.status_code == 201, invited.content
    body = invited.json()
    row = Invitation.objects.get(pk=body["id"])
    assert (row.organization_id, row.email, row.role, row.invited_by_id) == (
        organization.pk,
        INVITEE,
        "admin",
        owner.pk,
    )
    assert body["status"] == "pending"
    assert (body["email"], body["role"], body["team"]) == (INVITEE, "admin", row.team_id)
    assert row.expires_at - timezone.now() == pytest.approx(timedelta(days=7), abs=timedelta(minutes=1))


def test_the_token_is_shown_once_and_stored_only_as_a_digest(invited: Response) -> None:
    token = invited.json()["token"]
    row = Invitation.objects.get(pk=invited.json()["id"])

    assert token.startswith("mm_inv_")
    assert len(token) > 40
    assert row.digest == keys.invitation_digest(token)
    assert token not in str(Invitation.objects.filter(pk=row.pk).values().get())
    assert invited.content.decode().count(token) == 1


def test_the_invitee_gets_an_email_with_the_accept_link(invited: Response, organization: Organization) -> None:
    token = invited.json()["token"]

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [INVITEE]
    assert organization.name in message.subject
    link = next(word for word in message.body.split() if "/invitations/accept/" in word)
    assert urlsplit(link).path == "/invitations/accept/"
    assert parse_qs(urlsplit(link).query) == {"token": [token]}


def test_the_audit_row_holds_neither_the_email_nor_the_token(invited: Response, owner: User) -> None:
    event = AuditEvent.objects.get(action="invitation.created")

    assert (event.actor_id, event.target_type, event.target_id) == (owner.pk, "invitation", str(invited.json()["id"]))
    assert event.after is not None
    assert event.after["role"] == "admin"
    assert event.after["status"] == "pending"
    text = audit_text()
    assert INVITEE not in text
    assert "new.person" not in text
    assert invited.json()["token"] not in text


def test_the_expiry_comes_from_the_setting(
    client: APIClient,
    organization: Organization,
    owner: User,
    settings: SettingsWrapper,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    settings.MUXER_INVITATION_DAYS = 2

    response = invite(as_user(client, owner), organization, django_capture_on_commit_callbacks)

    expires_at = Invitation.objects.get(pk=response.json()["id"]).expires_at
    assert expires_at - timezone.now() == pytest.approx(timedelta(days=2), abs=timedelta(minutes=1))
    assert "2 days" in mail.outbox[0].body


@pytest.mark.parametrize("inviter_role", list(Role))
@pytest.mark.parametrize("invited_role", list(Role))
def test_who_may_invite_whom_follows_the_matrix(
    inviter_role: str,
    invited_role: str,
    client: APIClient,
    organization: Organization,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    inviter = user_with_role(organization, inviter_role)

    response = invite(as_user(client, inviter), organization, django_capture_on_commit_callbacks, role=invited_role)

    if role_can(inviter_role, Perm.MEMBERS_MANAGE) and invited_role in assignable_roles(inviter_role):
        assert response.status_code == 201
        assert Invitation.objects.get().role == invited_role
    else:
        assert_openai_error(response, 403, code="permission_denied")
        assert not Invitation.objects.exists()
        assert mail.outbox == []


def test_the_role_defaults_to_member(
    client: APIClient, organization: Organization, owner: User, django_capture_on_commit_callbacks: Capture
) -> None:
    response = invite(as_user(client, owner), organization, django_capture_on_commit_callbacks)

    assert response.json()["role"] == "member"


def test_a_second_pending_invitation_to_the_same_address_is_a_400(
    invited: Response,
    client: APIClient,
    organization: Organization,
    owner: User,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    response = invite(as_user(client, owner), organization, django_capture_on_commit_callbacks, email=INVITEE.upper())

    assert_openai_error(response, 400, code="invalid_request_error", param="email")
    assert Invitation.objects.count() == 1
    assert len(mail.outbox) == 1


def test_a_new_invitation_may_follow_a_revoked_one(
    invited: Response,
    client: APIClient,
    organization: Organization,
    owner: User,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    as_user(client, owner).delete(detail_url(organization, invited.json()["id"]))

    response = invite(client, organization, django_capture_on_commit_callbacks)

    assert response.status_code == 201
    assert Invitation.objects.count() == 2


def test_inviting_a_member_is_a_400(
    client: APIClient,
    organization: Organization,
    owner: User,
    member: User,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    response = invite(
        as_user(client, owner), organization, django_capture_on_commit_callbacks, email=member.email.upper()
    )

    assert_openai_error(response, 400, code="invalid_request_error", param="email")
    assert not Invitation.objects.exists()


BAD_INVITATIONS: dict[str, tuple[Any, str]] = {
    "no email": ({}, "email"),
    "not an email": ({"email": "someone"}, "email"),
    "unknown role": ({"email": INVITEE, "role": "root"}, "role"),
    "team of another organization": (lambda: {"email": INVITEE, "team": TeamFactory.create().pk}, "team"),
    "team not a number": ({"email": INVITEE, "team": "ops"}, "team"),
    "unknown field": ({"email": INVITEE, "message": "hi"}, "message"),
}


@pytest.mark.parametrize("case", BAD_INVITATIONS)
def test_bad_invitation_input_is_a_400(
    case: str, client: APIClient, organization: Organization, owner: User, django_capture_on_commit_callbacks: Capture
) -> None:
    body, param = BAD_INVITATIONS[case]
    body = body() if callable(body) else body

    with django_capture_on_commit_callbacks(execute=True):
        response = as_user(client, owner).post(list_url(organization), body, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert not Invitation.objects.exists()
    assert not AuditEvent.objects.filter(action="invitation.created").exists()
    assert mail.outbox == []


class BrokenMailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Any) -> int:
        raise OSError(f"550 mailbox unavailable: {email_messages[0].to[0]}")


def test_a_mail_failure_keeps_the_invitation_and_logs_no_address(
    client: APIClient,
    organization: Organization,
    owner: User,
    settings: SettingsWrapper,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    settings.EMAIL_BACKEND = f"{__name__}.BrokenMailBackend"

    with caplog.at_level(logging.WARNING, logger="accounts.services"):
        response = invite(as_user(client, owner), organization, django_capture_on_commit_callbacks)

    assert response.status_code == 201
    assert Invitation.objects.get().status == "pending"
    assert "could not be sent (OSError)" in caplog.text
    assert INVITEE not in caplog.text
    assert response.json()["token"] not in caplog.text


# --- listing and revoking -----------------------------------------------------------------------


def test_a_viewer_lists_invitations_without_tokens(
    invited: Response, client: APIClient, organization: Organization
) -> None:
    response = as_user(client, user_with_role(organization, Role.VIEWER)).get(list_url(organization))

    assert response.status_code == 200
    assert [row["id"] for row in response.json()["data"]] == [invited.json()["id"]]
    assert "token" not in response.json()["data"][0]
    assert "digest" not in response.json()["data"][0]
    assert invited.json()["token"] not in response.content.decode()


def test_the_owner_revokes_an_invitation(
    invited: Response, client: APIClient, organization: Organization, owner: User
) -> None:
    invitation_id = invited.json()["id"]

    response = as_user(client, owner).delete(detail_url(organization, invitation_id))

    assert response.status_code == 204
    assert Invitation.objects.get(pk=invitation_id).status == "revoked"
    event = AuditEvent.objects.get(action="invitation.revoked")
    assert (event.before["status"], event.after["status"]) == ("pending", "revoked")  # type: ignore[index]
    assert client.get(detail_url(organization, invitation_id)).json()["status"] == "revoked"


def test_revoking_twice_is_harmless(
    invited: Response, client: APIClient, organization: Organization, owner: User
) -> None:
    url = detail_url(organization, invited.json()["id"])

    as_user(client, owner).delete(url)
    again = client.delete(url)

    assert again.status_code == 204
    assert AuditEvent.objects.filter(action="invitation.revoked").count() == 1


def test_an_accepted_invitation_cannot_be_revoked(
    invited: Response, client: APIClient, organization: Organization, owner: User, invitee: User
) -> None:
    assert accept(as_user(client, invitee), invited.json()["token"]).status_code == 201

    response = as_user(client, owner).delete(detail_url(organization, invited.json()["id"]))

    assert_openai_error(response, 400, code="invalid_request_error")
    assert Invitation.objects.get(pk=invited.json()["id"]).status == "accepted"


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_a_member_below_admin_cannot_revoke(
    role: str, invited: Response, client: APIClient, organization: Organization
) -> None:
    response = as_user(client, user_with_role(organization, role)).delete(
        detail_url(organization, invited.json()["id"])
    )

    assert_openai_error(response, 403, code="permission_denied")
    assert Invitation.objects.get(pk=invited.json()["id"]).status == "pending"


def test_an_admin_cannot_revoke_an_owners_invitation(
    client: APIClient, organization: Organization, owner: User, django_capture_on_commit_callbacks: Capture
) -> None:
    made = invite(as_user(client, owner), organization, django_capture_on_commit_callbacks, role="owner")
    admin = user_with_role(organization, Role.ADMIN)

    response = as_user(client, admin).delete(detail_url(organization, made.json()["id"]))

    assert_openai_error(response, 403, code="permission_denied")
    assert Invitation.objects.get().status == "pending"


# --- tenancy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "delete"])
def test_the_outsider_gets_404_for_our_invitation(
    method: str, invited: Response, client: APIClient, organization: Organization, outsider: User
) -> None:
    response = getattr(as_user(client, outsider), method)(detail_url(organization, invited.json()["id"]))

    assert_openai_error(response, 404, code="not_found")
    assert Invitation.objects.get().status == "pending"


@pytest.mark.parametrize("method", ["get", "post"])
def test_the_outsider_gets_404_for_our_invitation_list(
    method: str, client: APIClient, organization: Organization, outsider: User
) -> None:
    response = getattr(as_user(client, outsider), method)(list_url(organization), {"email": INVITEE}, format="json")

    assert_openai_error(response, 404, code="not_found")
    assert not Invitation.objects.exists()


@pytest.mark.parametrize("method", ["get", "delete"])
def test_another_organizations_invitation_id_is_404_under_ours(
    method: str, invited: Response, client: APIClient, outsider: User
) -> None:
    their_org = outsider.memberships.get().organization

    response = getattr(as_user(client, outsider), method)(detail_url(their_org, invited.json()["id"]))

    assert_openai_error(response, 404, code="not_found")
    assert INVITEE not in response.content.decode()
    assert Invitation.objects.get().status == "pending"


def test_an_admin_key_invites_with_no_human_inviter(
    client: APIClient, organization: Organization, django_capture_on_commit_callbacks: Capture
) -> None:
    response = invite(
        as_key(client, key_with_scopes(organization, "admin")), organization, django_capture_on_commit_callbacks
    )

    assert response.status_code == 201
    assert Invitation.objects.get().invited_by_id is None
    assert "An administrator invited you" in mail.outbox[0].body


# --- accepting ----------------------------------------------------------------------------------


def test_the_invitee_accepts_and_joins_with_the_role_and_team(
    invited: Response, client: APIClient, organization: Organization, invitee: User
) -> None:
    response = accept(as_user(client, invitee), invited.json()["token"])

    assert response.status_code == 201, response.content
    membership = Membership.objects.get(user=invitee, organization=organization)
    assert (membership.role, membership.team_id) == (Role.ADMIN, invited.json()["team"])
    assert response.json()["organization"] == organization.slug
    assert response.json()["membership"]["id"] == membership.pk
    invitation = Invitation.objects.get(pk=invited.json()["id"])
    assert (invitation.status, invitation.accepted_by_id) == ("accepted", invitee.pk)
    event = AuditEvent.objects.get(action="invitation.accepted")
    assert (event.actor_id, event.metadata) == (invitee.pk, {"membership_id": membership.pk, "user_id": invitee.pk})
    assert AuditEvent.objects.get(action="membership.created").actor_id == invitee.pk
    assert client.get(reverse("org-detail", args=[organization.slug])).json()["role"] == "admin"


def test_an_owner_who_has_not_verified_their_email_cannot_invite(
    client: APIClient, organization: Organization, owner: User, django_capture_on_commit_callbacks: Capture
) -> None:
    owner.email_verified_at = None
    owner.save(update_fields=["email_verified_at"])

    response = invite(as_user(client, owner), organization, django_capture_on_commit_callbacks)

    assert_openai_error(response, 403, code="permission_denied")
    assert "Verify your email" in response.json()["error"]["message"]
    assert not Invitation.objects.exists()
    assert not mail.outbox


def test_accepting_an_invitation_verifies_the_invitees_address(
    invited: Response, client: APIClient, invitee: User
) -> None:
    invitee.email_verified_at = None
    invitee.save(update_fields=["email_verified_at"])

    assert accept(as_user(client, invitee), invited.json()["token"]).status_code == 201

    invitee.refresh_from_db()
    assert invitee.email_verified_at is not None


def test_the_email_matches_whatever_its_case(invited: Response, client: APIClient, organization: Organization) -> None:
    shouting = UserFactory.create(email=INVITEE.upper())

    response = accept(as_user(client, shouting), invited.json()["token"])

    assert response.status_code == 201
    assert Membership.objects.filter(user=shouting, organization=organization).exists()


def test_accepting_twice_is_a_400(invited: Response, client: APIClient, invitee: User) -> None:
    accept(as_user(client, invitee), invited.json()["token"])

    again = accept(client, invited.json()["token"])

    assert_openai_error(again, 400, code="invalid_request_error", param="token")
    assert "already been accepted" in again.json()["error"]["message"]
    assert Membership.objects.filter(user=invitee).count() == 1


def test_someone_else_cannot_use_the_token(invited: Response, client: APIClient) -> None:
    stranger = UserFactory.create(email="stranger@example.com")

    response = accept(as_user(client, stranger), invited.json()["token"])

    assert_openai_error(response, 403, code="permission_denied")
    assert INVITEE not in response.content.decode()
    assert not Membership.objects.filter(user=stranger).exists()
    assert Invitation.objects.get().status == "pending"


def test_an_expired_invitation_is_a_400(invited: Response, client: APIClient, invitee: User) -> None:
    Invitation.objects.filter(pk=invited.json()["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = accept(as_user(client, invitee), invited.json()["token"])

    assert_openai_error(response, 400, code="invalid_request_error", param="token")
    assert "expired" in response.json()["error"]["message"]
    assert not Membership.objects.filter(user=invitee).exists()


def test_a_revoked_invitation_is_a_400(
    invited: Response, client: APIClient, organization: Organization, owner: User, invitee: User
) -> None:
    as_user(client, owner).delete(detail_url(organization, invited.json()["id"]))

    response = accept(as_user(client, invitee), invited.json()["token"])

    assert_openai_error(response, 400, code="invalid_request_error", param="token")
    assert "revoked" in response.json()["error"]["message"]
    assert not Membership.objects.filter(user=invitee).exists()


@pytest.mark.parametrize("token", ["mm_inv_" + "A" * 40, "not-a-token", "mm_live_" + "A" * 38])
def test_an_unknown_token_is_a_404(token: str, invited: Response, client: APIClient, invitee: User) -> None:
    response = accept(as_user(client, invitee), token)

    assert_openai_error(response, 404, code="not_found")
    assert not Membership.objects.filter(user=invitee).exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "token"), ({"token": ""}, "token"), ({"token": ["x"]}, "token"), ({"token": "x", "role": "owner"}, "role")],
)
def test_a_bad_accept_body_is_a_400(body: dict[str, Any], param: str, client: APIClient, invitee: User) -> None:
    response = as_user(client, invitee).post(reverse("invitation-accept"), body, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert not Membership.objects.filter(user=invitee).exists()


def test_an_existing_member_cannot_accept(
    invited: Response, client: APIClient, organization: Organization, invitee: User
) -> None:
    MembershipFactory.create(organization=organization, user=invitee, role=Role.VIEWER)

    response = accept(as_user(client, invitee), invited.json()["token"])

    assert_openai_error(response, 400, code="invalid_request_error", param="token")
    assert Membership.objects.get(user=invitee, organization=organization).role == Role.VIEWER
    assert Invitation.objects.get().status == "pending"


def test_accepting_needs_a_signed_in_user(invited: Response, client: APIClient, organization: Organization) -> None:
    response = accept(client, invited.json()["token"])

    assert_openai_error(response, 401, code="invalid_api_key")
    assert Invitation.objects.get().status == "pending"


def test_an_api_key_cannot_accept(invited: Response, client: APIClient, organization: Organization) -> None:
    response = accept(as_key(client, key_with_scopes(organization, "admin")), invited.json()["token"])

    assert response.status_code == 401
    assert Invitation.objects.get().status == "pending"


def test_a_deleted_team_leaves_the_invitee_teamless(
    invited: Response, client: APIClient, organization: Organization, invitee: User
) -> None:
    Invitation.objects.get().team.delete()  # type: ignore[union-attr]

    response = accept(as_user(client, invitee), invited.json()["token"])

    assert response.status_code == 201
    assert Membership.objects.get(user=invitee, organization=organization).team_id is None


# --- the admin site ---------------------------------------------------------------------------------


def test_staff_see_invitations_read_only_and_never_the_digest(invited: Response) -> None:
    from django.test import Client

    staff = Client()
    staff.force_login(User.objects.create_superuser("staff@example.com", "pw"))
    invitation = Invitation.objects.get()

    listing = staff.get(reverse("admin:accounts_invitation_changelist"))
    detail = staff.get(reverse("admin:accounts_invitation_change", args=[invitation.pk]))

    assert listing.status_code == 200
    assert detail.status_code == 200
    assert invitation.digest not in detail.content.decode()
    assert staff.get(reverse("admin:accounts_invitation_add")).status_code == 403
    assert staff.get(reverse("admin:accounts_invitation_delete", args=[invitation.pk])).status_code == 403
    staff.post(reverse("admin:accounts_invitation_change", args=[invitation.pk]), {"role": "owner"})
    assert Invitation.objects.get().role == "admin"
