"""Members on /api/orgs/<org>/members/: roles, teams, removal and leaving, and the last owner."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
from django.db import connections
from django.urls import reverse
from rest_framework.test import APIClient

from accounts import services
from accounts.models import APIKey, Membership, Organization, Role, User
from accounts.permissions import Perm, assignable_roles, role_can
from audit.models import AuditEvent
from muxer_project.errors import APIError
from tests.factories import MembershipFactory, OrganizationFactory, TeamFactory, UserFactory, issue_key

from .helpers import as_key, as_user, assert_openai_error, audit_text, key_with_scopes, user_with_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def membership_of(user: User, organization: Organization) -> Membership:
    return Membership.objects.get(user=user, organization=organization)


def list_url(organization: Organization) -> str:
    return reverse("member-list", args=[organization.slug])


def detail_url(organization: Organization, membership: Membership) -> str:
    return reverse("member-detail", args=[organization.slug, membership.pk])


# --- listing ------------------------------------------------------------------------------------


def test_a_viewer_lists_the_members(client: APIClient, organization: Organization, owner: User, member: User) -> None:
    viewer = user_with_role(organization, Role.VIEWER)
    team = TeamFactory.create(organization=organization)
    Membership.objects.filter(user=member).update(team=team)

    response = as_user(client, viewer).get(list_url(organization))

    assert response.status_code == 200
    rows = {row["user"]: row for row in response.json()["data"]}
    assert set(rows) == {owner.pk, member.pk, viewer.pk}
    row = rows[member.pk]
    assert set(row) == {"id", "user", "email", "name", "role", "team", "created_at"}
    assert (row["id"], row["email"], row["name"], row["role"], row["team"]) == (
        membership_of(member, organization).pk,
        member.email,
        member.name,
        "member",
        team.pk,
    )


def test_the_list_holds_no_one_from_another_organization(
    client: APIClient, organization: Organization, owner: User, outsider: User
) -> None:
    response = as_user(client, owner).get(list_url(organization))

    assert outsider.pk not in [row["user"] for row in response.json()["data"]]
    assert outsider.email not in response.content.decode()


# --- changing roles -----------------------------------------------------------------------------


def test_the_owner_makes_a_member_an_admin(
    client: APIClient, organization: Organization, owner: User, member: User
) -> None:
    target = membership_of(member, organization)

    response = as_user(client, owner).patch(detail_url(organization, target), {"role": "admin"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["role"] == "admin"
    assert membership_of(member, organization).role == Role.ADMIN
    event = AuditEvent.objects.get(action="membership.updated")
    assert (event.actor_id, event.target_id) == (owner.pk, str(target.pk))
    assert (event.before, event.after) == ({"role": "member"}, {"role": "admin"})
    assert event.metadata == {"user_id": member.pk}
    assert member.email not in audit_text()


def test_the_owner_makes_another_owner(
    client: APIClient, organization: Organization, owner: User, member: User
) -> None:
    response = as_user(client, owner).patch(
        detail_url(organization, membership_of(member, organization)), {"role": "owner"}, format="json"
    )

    assert response.status_code == 200
    assert membership_of(member, organization).role == Role.OWNER


def test_an_admin_cannot_make_an_owner(client: APIClient, organization: Organization, member: User) -> None:
    admin = user_with_role(organization, Role.ADMIN)

    response = as_user(client, admin).patch(
        detail_url(organization, membership_of(member, organization)), {"role": "owner"}, format="json"
    )

    assert_openai_error(response, 403, code="permission_denied")
    assert "owner" in response.json()["error"]["message"]
    assert membership_of(member, organization).role == Role.MEMBER


@pytest.mark.parametrize("body", [{"role": "viewer"}, {"team": None}])
def test_an_admin_cannot_change_an_owner(
    body: dict[str, Any], client: APIClient, organization: Organization, owner: User
) -> None:
    admin = user_with_role(organization, Role.ADMIN)

    response = as_user(client, admin).patch(
        detail_url(organization, membership_of(owner, organization)), body, format="json"
    )

    assert_openai_error(response, 403, code="permission_denied")
    assert membership_of(owner, organization).role == Role.OWNER
    assert not AuditEvent.objects.filter(action="membership.updated").exists()


def test_an_admin_changes_another_admin_and_a_viewer(client: APIClient, organization: Organization) -> None:
    admin = user_with_role(organization, Role.ADMIN)
    other_admin = user_with_role(organization, Role.ADMIN)
    viewer = user_with_role(organization, Role.VIEWER)
    caller = as_user(client, admin)

    demoted = caller.patch(
        detail_url(organization, membership_of(other_admin, organization)), {"role": "member"}, format="json"
    )
    promoted = caller.patch(
        detail_url(organization, membership_of(viewer, organization)), {"role": "billing"}, format="json"
    )

    assert (demoted.status_code, promoted.status_code) == (200, 200)
    assert membership_of(other_admin, organization).role == Role.MEMBER
    assert membership_of(viewer, organization).role == Role.BILLING


@pytest.mark.parametrize("role", list(Role))
def test_changing_a_role_follows_the_matrix(role: str, client: APIClient, organization: Organization) -> None:
    target = MembershipFactory.create(organization=organization, role=Role.VIEWER)

    response = as_user(client, user_with_role(organization, role)).patch(
        detail_url(organization, target), {"role": "member"}, format="json"
    )

    if role_can(role, Perm.MEMBERS_MANAGE) and Role.VIEWER in assignable_roles(role):
        assert response.status_code == 200
        assert Membership.objects.get(pk=target.pk).role == Role.MEMBER
    else:
        assert_openai_error(response, 403, code="permission_denied")
        assert Membership.objects.get(pk=target.pk).role == Role.VIEWER


def test_the_last_owner_cannot_step_down(client: APIClient, organization: Organization, owner: User) -> None:
    response = as_user(client, owner).patch(
        detail_url(organization, membership_of(owner, organization)), {"role": "admin"}, format="json"
    )

    assert_openai_error(response, 409, code="last_owner")
    assert "at least one owner" in response.json()["error"]["message"]
    assert membership_of(owner, organization).role == Role.OWNER


def test_an_owner_steps_down_when_another_owner_remains(
    client: APIClient, organization: Organization, owner: User
) -> None:
    user_with_role(organization, Role.OWNER)

    response = as_user(client, owner).patch(
        detail_url(organization, membership_of(owner, organization)), {"role": "admin"}, format="json"
    )

    assert response.status_code == 200
    assert membership_of(owner, organization).role == Role.ADMIN


def test_the_last_owner_may_change_their_team(client: APIClient, organization: Organization, owner: User) -> None:
    team = TeamFactory.create(organization=organization)

    response = as_user(client, owner).patch(
        detail_url(organization, membership_of(owner, organization)), {"role": "owner", "team": team.pk}, format="json"
    )

    assert response.status_code == 200
    assert membership_of(owner, organization).team_id == team.pk


# --- teams --------------------------------------------------------------------------------------


def test_the_owner_moves_a_member_to_a_team_and_out(
    client: APIClient, organization: Organization, owner: User, member: User
) -> None:
    team = TeamFactory.create(organization=organization)
    url = detail_url(organization, membership_of(member, organization))

    into = as_user(client, owner).patch(url, {"team": team.pk}, format="json")
    assert into.status_code == 200
    assert membership_of(member, organization).team_id == team.pk
    out = client.patch(url, {"team": None}, format="json")

    assert out.status_code == 200
    assert membership_of(member, organization).team_id is None
    events = AuditEvent.objects.filter(action="membership.updated").order_by("id")
    assert [(e.before, e.after) for e in events] == [
        ({"team_id": None}, {"team_id": team.pk}),
        ({"team_id": team.pk}, {"team_id": None}),
    ]


BAD_PATCHES: dict[str, tuple[Any, str | None]] = {
    "unknown role": ({"role": "superuser"}, "role"),
    "role not a string": ({"role": 3}, "role"),
    "team of another organization": (lambda: {"team": TeamFactory.create().pk}, "team"),
    "team that does not exist": ({"team": 999_999}, "team"),
    "team not a number": ({"team": "ops"}, "team"),
    "unknown field": ({"email": "new@example.com"}, "email"),
}


@pytest.mark.parametrize("case", BAD_PATCHES)
def test_a_bad_member_patch_is_a_400(
    case: str, client: APIClient, organization: Organization, owner: User, member: User
) -> None:
    body, param = BAD_PATCHES[case]
    body = body() if callable(body) else body

    response = as_user(client, owner).patch(
        detail_url(organization, membership_of(member, organization)), body, format="json"
    )

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert (membership_of(member, organization).role, membership_of(member, organization).team_id) == (
        Role.MEMBER,
        None,
    )
    assert not AuditEvent.objects.filter(action="membership.updated").exists()


# --- removing and leaving -----------------------------------------------------------------------


def test_an_admin_removes_a_member_whose_keys_keep_working(
    client: APIClient, organization: Organization, owner: User, member: User
) -> None:
    admin = user_with_role(organization, Role.ADMIN)
    target = membership_of(member, organization)
    kept = issue_key(organization, created_by=member).api_key

    response = as_user(client, admin).delete(detail_url(organization, target))

    assert response.status_code == 204
    assert not Membership.objects.filter(pk=target.pk).exists()
    assert User.objects.filter(pk=member.pk).exists()
    assert APIKey.objects.get(pk=kept.pk).is_active
    event = AuditEvent.objects.get(action="membership.removed")
    assert event.actor_id == admin.pk
    assert event.before == {"id": target.pk, "user_id": member.pk, "role": "member", "team_id": None}
    assert event.after is None
    assert event.metadata == {
        "user_id": member.pk,
        "left": False,
        "kept_key_ids": [kept.pk],
    }


def test_removing_a_member_can_revoke_their_keys(
    client: APIClient, organization: Organization, owner: User, member: User
) -> None:
    theirs = issue_key(organization, created_by=member).api_key
    ours = issue_key(organization, created_by=owner).api_key
    elsewhere = OrganizationFactory.create()
    MembershipFactory.create(organization=elsewhere, user=member)
    their_other = issue_key(elsewhere, created_by=member).api_key

    response = as_user(client, owner).delete(
        detail_url(organization, membership_of(member, organization)) + "?revoke_keys=true"
    )

    assert response.status_code == 204
    assert APIKey.objects.get(pk=theirs.pk).revoked_at is not None
    assert APIKey.objects.get(pk=ours.pk).revoked_at is None
    assert APIKey.objects.get(pk=their_other.pk).revoked_at is None
    assert AuditEvent.objects.get(action="api_key.revoked").target_id == str(theirs.pk)
    assert AuditEvent.objects.get(action="membership.removed").metadata["revoked_key_ids"] == [theirs.pk]


def test_a_bad_revoke_keys_flag_is_a_400(
    client: APIClient, organization: Organization, owner: User, member: User
) -> None:
    response = as_user(client, owner).delete(
        detail_url(organization, membership_of(member, organization)) + "?revoke_keys=maybe"
    )

    assert_openai_error(response, 400, code="invalid_request_error", param="revoke_keys")
    assert Membership.objects.filter(user=member, organization=organization).exists()


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_anyone_but_the_last_owner_may_leave(role: str, client: APIClient, organization: Organization) -> None:
    user = user_with_role(organization, role)
    mine = membership_of(user, organization)

    response = as_user(client, user).delete(detail_url(organization, mine))

    assert response.status_code == 204
    assert not Membership.objects.filter(pk=mine.pk).exists()
    event = AuditEvent.objects.get(action="membership.removed")
    assert (event.actor_id, event.metadata["left"]) == (user.pk, True)
    assert_openai_error(client.get(list_url(organization)), 404, code="not_found")


def test_the_last_owner_cannot_leave(client: APIClient, organization: Organization, owner: User) -> None:
    response = as_user(client, owner).delete(detail_url(organization, membership_of(owner, organization)))

    assert_openai_error(response, 409, code="last_owner")
    assert membership_of(owner, organization).role == Role.OWNER
    assert not AuditEvent.objects.filter(action="membership.removed").exists()


def test_an_owner_leaves_when_another_owner_remains(client: APIClient, organization: Organization, owner: User) -> None:
    user_with_role(organization, Role.OWNER)

    response = as_user(client, owner).delete(detail_url(organization, membership_of(owner, organization)))

    assert response.status_code == 204


def test_an_admin_cannot_remove_an_owner(client: APIClient, organization: Organization, owner: User) -> None:
    user_with_role(organization, Role.OWNER)  # not the last one: the refusal is the admin's role
    admin = user_with_role(organization, Role.ADMIN)

    response = as_user(client, admin).delete(detail_url(organization, membership_of(owner, organization)))

    assert_openai_error(response, 403, code="permission_denied")
    assert Membership.objects.filter(user=owner, organization=organization).exists()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_a_member_below_admin_cannot_remove_someone_else(
    role: str, client: APIClient, organization: Organization, member: User
) -> None:
    target = MembershipFactory.create(organization=organization, role=Role.VIEWER)

    response = as_user(client, user_with_role(organization, role)).delete(detail_url(organization, target))

    assert_openai_error(response, 403, code="permission_denied")
    assert Membership.objects.filter(pk=target.pk).exists()


def test_an_admin_key_removes_a_member(client: APIClient, organization: Organization, member: User) -> None:
    response = as_key(client, key_with_scopes(organization, "admin")).delete(
        detail_url(organization, membership_of(member, organization))
    )

    assert response.status_code == 204
    event = AuditEvent.objects.get(action="membership.removed")
    assert (event.actor_id, event.metadata["left"]) == (None, False)


def test_a_read_key_lists_members_but_cannot_change_them(
    client: APIClient, organization: Organization, member: User
) -> None:
    caller = as_key(client, key_with_scopes(organization, "read"))
    target = membership_of(member, organization)

    assert caller.get(list_url(organization)).status_code == 200
    assert_openai_error(
        caller.patch(detail_url(organization, target), {"role": "admin"}, format="json"), 403, code="permission_denied"
    )
    assert_openai_error(caller.delete(detail_url(organization, target)), 403, code="permission_denied")
    assert membership_of(member, organization).role == Role.MEMBER


# --- tenancy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_the_outsider_gets_404_for_our_member(
    method: str, client: APIClient, organization: Organization, member: User, outsider: User
) -> None:
    target = membership_of(member, organization)

    response = getattr(as_user(client, outsider), method)(
        detail_url(organization, target), {"role": "viewer"}, format="json"
    )

    assert_openai_error(response, 404, code="not_found")
    assert Membership.objects.get(pk=target.pk).role == Role.MEMBER


def test_the_outsider_gets_404_for_our_member_list(
    client: APIClient, organization: Organization, outsider: User
) -> None:
    assert_openai_error(as_user(client, outsider).get(list_url(organization)), 404, code="not_found")


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_another_organizations_membership_id_is_404_under_ours(
    method: str, client: APIClient, organization: Organization, owner: User, outsider: User
) -> None:
    theirs = outsider.memberships.get()

    response = getattr(as_user(client, owner), method)(
        detail_url(organization, theirs), {"role": "viewer"}, format="json"
    )

    assert_openai_error(response, 404, code="not_found")
    assert outsider.email not in response.content.decode()
    assert Membership.objects.get(pk=theirs.pk).role == Role.OWNER


# --- two owners demoting each other at once (PostgreSQL row locks) -----------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    organization = OrganizationFactory.create()
    first = MembershipFactory.create(organization=organization, role=Role.OWNER, user=UserFactory.create())
    second = MembershipFactory.create(organization=organization, role=Role.OWNER, user=UserFactory.create())
    # Hold the window between "another owner remains" and the write open: each demotion waits (up to a
    # second) for the other to have checked too. Without the organization lock both pass the check.
    checked = threading.Barrier(2)
    real_check = services._refuse_losing_the_last_owner

    def check_then_wait(membership: Membership) -> None:
        real_check(membership)
        # A broken barrier: the other demotion is waiting for our lock, so it will see our write.
        with contextlib.suppress(threading.BrokenBarrierError):
            checked.wait(timeout=1)

    monkeypatch.setattr(services, "_refuse_losing_the_last_owner", check_then_wait)
    outcomes: list[str] = []

    def demote(target: Membership, actor: User) -> None:
        try:
            services.membership_update(membership=target, actor=actor, changes={"role": Role.ADMIN})
            outcomes.append("demoted")
        except APIError as exc:
            outcomes.append(exc.code or "")
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=demote, args=(first, second.user)),
        threading.Thread(target=demote, args=(second, first.user)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["demoted", "last_owner"]
    assert Membership.objects.filter(organization=organization, role=Role.OWNER).count() == 1
