"""Console: members, invitations and teams (console/views/members.py)."""

from __future__ import annotations

import html
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Invitation, Membership, Organization, Role, Team, User
from accounts.services import invitation_create
from tests.console.conftest import signed_in, user_with_role
from tests.factories import TeamFactory, issue_key

pytestmark = pytest.mark.django_db


def members_url(organization: Organization) -> str:
    return reverse("console-members", args=[organization.slug])


def update_url(organization: Organization, membership: Membership) -> str:
    return reverse("console-member-update", args=[organization.slug, membership.pk])


def remove_url(organization: Organization, membership: Membership) -> str:
    return reverse("console-member-remove", args=[organization.slug, membership.pk])


def page(response: Any) -> str:
    return html.unescape(response.content.decode())


def membership_of(user: User, organization: Organization) -> Membership:
    return Membership.objects.get(user=user, organization=organization)


def row_of(body: str, membership: Membership) -> str:
    return body.split(f'data-member-id="{membership.pk}"', 1)[1].split("</tr>", 1)[0]


def invite(
    organization: Organization, owner: User, email: str = "new@example.com", role: str = Role.MEMBER
) -> Invitation:
    return invitation_create(
        organization=organization, email=email, role=role, team=None, invited_by=owner, accept_url="http://x/"
    ).invitation


def test_it_lists_members_with_their_roles(
    owner_client: Client, organization: Organization, owner: User, member: User
) -> None:
    response = owner_client.get(members_url(organization))
    assert response.status_code == 200
    body = page(response)
    row = row_of(body, membership_of(member, organization))
    assert member.email in row
    assert 'data-role="member"' in row
    assert 'id="invite-form"' in body
    assert 'id="team-create-form"' in body


def test_an_owner_changes_a_members_role(owner_client: Client, organization: Organization, member: User) -> None:
    membership = membership_of(member, organization)
    prefix = f"m{membership.pk}"
    response = owner_client.post(
        update_url(organization, membership), {f"{prefix}-role": "admin", f"{prefix}-team": ""}
    )
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN


def test_an_admin_is_not_offered_the_owner_role(organization: Organization, owner: User, member: User) -> None:
    admin = user_with_role(organization, Role.ADMIN)
    body = page(signed_in(admin).get(members_url(organization)))
    member_row = row_of(body, membership_of(member, organization))
    assert 'value="owner"' not in member_row
    owner_row = row_of(body, membership_of(owner, organization))
    assert "disabled" in owner_row
    assert "remove-" not in owner_row


def test_an_admin_changing_an_owner_gets_403(organization: Organization, owner: User) -> None:
    admin = user_with_role(organization, Role.ADMIN)
    membership = membership_of(owner, organization)
    prefix = f"m{membership.pk}"
    response = signed_in(admin).post(update_url(organization, membership), {f"{prefix}-role": "member"})
    assert response.status_code == 403
    membership.refresh_from_db()
    assert membership.role == Role.OWNER


def test_the_last_owner_cannot_step_down(owner_client: Client, organization: Organization, owner: User) -> None:
    membership = membership_of(owner, organization)
    prefix = f"m{membership.pk}"
    response = owner_client.post(update_url(organization, membership), {f"{prefix}-role": "admin"})
    assert response.status_code == 409
    assert "An organization needs at least one owner" in page(response)
    membership.refresh_from_db()
    assert membership.role == Role.OWNER


def test_an_invalid_role_rerenders_with_400(owner_client: Client, organization: Organization, member: User) -> None:
    membership = membership_of(member, organization)
    response = owner_client.post(update_url(organization, membership), {f"m{membership.pk}-role": "emperor"})
    assert response.status_code == 400
    assert "Select a valid choice." in page(response)


def test_removing_a_member_and_their_keys(
    owner_client: Client, organization: Organization, owner: User, member: User
) -> None:
    key = issue_key(organization, created_by=member).api_key
    response = owner_client.post(remove_url(organization, membership_of(member, organization)), {"revoke_keys": "on"})
    assert response.status_code == 302
    assert not Membership.objects.filter(user=member, organization=organization).exists()
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_a_member_leaves(member_client: Client, organization: Organization, member: User) -> None:
    body = page(member_client.get(members_url(organization)))
    assert 'id="leave-form"' in row_of(body, membership_of(member, organization))
    response = member_client.post(remove_url(organization, membership_of(member, organization)))
    assert response.status_code == 302
    assert response["Location"] == reverse("console-home")
    assert not Membership.objects.filter(user=member, organization=organization).exists()


def test_members_see_no_controls_and_get_403(member_client: Client, organization: Organization, owner: User) -> None:
    body = page(member_client.get(members_url(organization)))
    assert 'id="invite-form"' not in body
    assert 'id="team-create-form"' not in body
    assert "member-form-" not in body
    owner_membership = membership_of(owner, organization)
    assert "remove-" not in row_of(body, owner_membership)
    assert (
        member_client.post(members_url(organization), {"email": "x@example.com", "role": "member"}).status_code == 403
    )
    assert member_client.post(update_url(organization, owner_membership), {}).status_code == 403
    response = member_client.post(remove_url(organization, owner_membership))
    assert response.status_code == 403
    assert Membership.objects.filter(pk=owner_membership.pk).exists()
    assert (
        member_client.post(reverse("console-team-create", args=[organization.slug]), {"name": "x"}).status_code == 403
    )
    assert not Invitation.objects.exists()
    assert not Team.objects.filter(organization=organization).exists()


def test_outsiders_get_404(outsider_client: Client, organization: Organization, member: User) -> None:
    membership = membership_of(member, organization)
    assert outsider_client.get(members_url(organization)).status_code == 404
    assert outsider_client.post(members_url(organization), {"email": "x@example.com"}).status_code == 404
    assert outsider_client.post(remove_url(organization, membership)).status_code == 404
    assert (
        outsider_client.post(reverse("console-team-create", args=[organization.slug]), {"name": "x"}).status_code == 404
    )
    assert Membership.objects.filter(pk=membership.pk).exists()


def test_inviting_someone(
    owner_client: Client, organization: Organization, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    team = TeamFactory.create(organization=organization)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(
            members_url(organization), {"email": "new@example.com", "role": "viewer", "team": str(team.pk)}
        )
    assert response.status_code == 302
    invitation = Invitation.objects.get(organization=organization)
    assert (invitation.email, invitation.role, invitation.team) == ("new@example.com", "viewer", team)
    assert [m.to for m in mailoutbox] == [["new@example.com"]]
    body = page(owner_client.get(members_url(organization)))
    assert f'data-invitation-id="{invitation.pk}"' in body


def test_a_bad_invitation_rerenders_with_400(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(members_url(organization), {"email": "nobody", "role": "member"})
    assert response.status_code == 400
    assert "Enter a valid email address." in page(response)
    assert not Invitation.objects.exists()


def test_revoking_an_invitation(owner_client: Client, organization: Organization, owner: User) -> None:
    invitation = invite(organization, owner)
    assert f'data-testid="revoke-invitation-{invitation.pk}"' in page(owner_client.get(members_url(organization)))
    url = reverse("console-invitation-revoke", args=[organization.slug, invitation.pk])
    assert owner_client.post(url).status_code == 302
    invitation.refresh_from_db()
    assert invitation.status == "revoked"


def test_teams_are_created_renamed_and_deleted(owner_client: Client, organization: Organization) -> None:
    assert (
        owner_client.post(reverse("console-team-create", args=[organization.slug]), {"name": "Search"}).status_code
        == 302
    )
    team = Team.objects.get(organization=organization)
    assert team.name == "Search"
    rename = reverse("console-team-update", args=[organization.slug, team.pk])
    assert owner_client.post(rename, {f"t{team.pk}-name": "Discovery"}).status_code == 302
    team.refresh_from_db()
    assert team.name == "Discovery"
    assert owner_client.post(reverse("console-team-delete", args=[organization.slug, team.pk])).status_code == 302
    assert not Team.objects.filter(pk=team.pk).exists()


def test_a_blank_team_name_rerenders_with_400(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(reverse("console-team-create", args=[organization.slug]), {"name": ""})
    assert response.status_code == 400
    assert "This field is required." in page(response)
