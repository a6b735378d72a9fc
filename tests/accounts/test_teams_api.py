"""Teams on /api/orgs/<org>/teams/: every member reads them, owners and admins create, change and delete them."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.auth import authenticate_sync, forget_cached_keys
from accounts.models import APIKey, Membership, Organization, Role, Team, User
from accounts.permissions import Perm, role_can
from audit.models import AuditEvent
from billing.models import Budget
from tests.factories import TeamFactory, issue_key

from .helpers import as_key, as_user, assert_openai_error, key_with_scopes, user_with_role

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    return APIClient()


@pytest.fixture
def team(organization: Organization) -> Team:
    return TeamFactory.create(organization=organization, name="Platform", rpm_limit=100)


@pytest.fixture
def their_team(outsider: User) -> Team:
    return TeamFactory.create(organization=outsider.memberships.get().organization, name="Theirs")


def list_url(organization: Organization) -> str:
    return reverse("team-list", args=[organization.slug])


def detail_url(organization: Organization, team: Team) -> str:
    return reverse("team-detail", args=[organization.slug, team.pk])


def create(client: APIClient, organization: Organization, **body: Any) -> Response:
    return client.post(list_url(organization), body, format="json")


# --- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_every_role_lists_the_organizations_teams(
    role: str, client: APIClient, organization: Organization, team: Team, their_team: Team
) -> None:
    response = as_user(client, user_with_role(organization, role)).get(list_url(organization))

    assert response.status_code == 200
    assert response.json()["object"] == "list"
    assert response.json()["data"] == [
        {
            "id": team.pk,
            "name": "Platform",
            "rpm_limit": 100,
            "tpm_limit": None,
            "created_at": response.json()["data"][0]["created_at"],
        }
    ]


def test_a_member_reads_one_team(client: APIClient, organization: Organization, member: User, team: Team) -> None:
    response = as_user(client, member).get(detail_url(organization, team))

    assert response.status_code == 200
    assert (response.json()["id"], response.json()["name"]) == (team.pk, "Platform")


# --- creating -----------------------------------------------------------------------------------


def test_the_owner_creates_a_team_with_limits(client: APIClient, organization: Organization, owner: User) -> None:
    response = create(as_user(client, owner), organization, name="Research", rpm_limit=60, tpm_limit=90_000)

    assert response.status_code == 201, response.content
    row = Team.objects.get(pk=response.json()["id"])
    assert (row.organization_id, row.name, row.rpm_limit, row.tpm_limit) == (organization.pk, "Research", 60, 90_000)
    assert response.json()["rpm_limit"] == 60


def test_creating_a_team_is_audited_with_its_state(client: APIClient, organization: Organization, owner: User) -> None:
    response = create(as_user(client, owner), organization, name="Research", tpm_limit=5000)

    event = AuditEvent.objects.get(action="team.created")
    assert (event.organization_id, event.actor_id, event.target_id) == (
        organization.pk,
        owner.pk,
        str(response.json()["id"]),
    )
    assert event.before is None
    assert event.after == {"name": "Research", "rpm_limit": None, "tpm_limit": 5000}


@pytest.mark.parametrize("role", list(Role))
def test_creating_a_team_follows_the_matrix(role: str, client: APIClient, organization: Organization) -> None:
    response = create(as_user(client, user_with_role(organization, role)), organization, name="New")

    if role_can(role, Perm.TEAMS_MANAGE):
        assert response.status_code == 201
        assert Team.objects.filter(organization=organization, name="New").exists()
    else:
        assert_openai_error(response, 403, code="permission_denied")
        assert not Team.objects.filter(name="New").exists()
        assert not AuditEvent.objects.filter(action="team.created").exists()


@pytest.mark.parametrize("name", ["Platform", "platform", "PLATFORM"])
def test_a_duplicate_name_is_a_400_not_a_500(
    name: str, client: APIClient, organization: Organization, owner: User, team: Team
) -> None:
    response = create(as_user(client, owner), organization, name=name)

    assert_openai_error(response, 400, code="invalid_request_error", param="name")
    assert "already exists" in response.json()["error"]["message"]
    assert Team.objects.filter(organization=organization).count() == 1


def test_another_organization_may_use_the_same_name(
    client: APIClient, organization: Organization, owner: User, their_team: Team
) -> None:
    response = create(as_user(client, owner), organization, name=their_team.name)

    assert response.status_code == 201


BAD_TEAMS: dict[str, tuple[dict[str, Any], str]] = {
    "no name": ({}, "name"),
    "blank name": ({"name": "  "}, "name"),
    "name too long": ({"name": "x" * 201}, "name"),
    "zero rpm": ({"name": "T", "rpm_limit": 0}, "rpm_limit"),
    "negative tpm": ({"name": "T", "tpm_limit": -5}, "tpm_limit"),
    "rpm beyond the column": ({"name": "T", "rpm_limit": 2**31}, "rpm_limit"),
    "rpm not a number": ({"name": "T", "rpm_limit": "lots"}, "rpm_limit"),
    "unknown field": ({"name": "T", "budget": 5}, "budget"),
}


@pytest.mark.parametrize("case", BAD_TEAMS)
def test_bad_team_input_is_a_400_naming_the_field(
    case: str, client: APIClient, organization: Organization, owner: User
) -> None:
    body, param = BAD_TEAMS[case]

    response = as_user(client, owner).post(list_url(organization), body, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert not Team.objects.exists()
    assert not AuditEvent.objects.exists()


# --- changing -----------------------------------------------------------------------------------


def test_an_admin_renames_a_team_and_sets_its_limits(client: APIClient, organization: Organization, team: Team) -> None:
    admin = user_with_role(organization, Role.ADMIN)

    response = as_user(client, admin).patch(
        detail_url(organization, team), {"name": "Core", "rpm_limit": None, "tpm_limit": 1000}, format="json"
    )

    assert response.status_code == 200, response.content
    team.refresh_from_db()
    assert (team.name, team.rpm_limit, team.tpm_limit) == ("Core", None, 1000)
    event = AuditEvent.objects.get(action="team.updated")
    assert event.actor_id == admin.pk
    assert event.before == {"name": "Platform", "rpm_limit": 100, "tpm_limit": None}
    assert event.after == {"name": "Core", "rpm_limit": None, "tpm_limit": 1000}


def test_a_patch_that_changes_nothing_writes_no_audit_event(
    client: APIClient, organization: Organization, owner: User, team: Team
) -> None:
    response = as_user(client, owner).patch(detail_url(organization, team), {"rpm_limit": 100}, format="json")

    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="team.updated").exists()


def test_renaming_onto_another_teams_name_is_a_400(
    client: APIClient, organization: Organization, owner: User, team: Team
) -> None:
    other = TeamFactory.create(organization=organization, name="Data")

    response = as_user(client, owner).patch(detail_url(organization, other), {"name": "platform"}, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param="name")
    assert Team.objects.get(pk=other.pk).name == "Data"


def test_a_team_may_keep_its_own_name_in_another_case(
    client: APIClient, organization: Organization, owner: User, team: Team
) -> None:
    response = as_user(client, owner).patch(detail_url(organization, team), {"name": "PLATFORM"}, format="json")

    assert response.status_code == 200
    assert Team.objects.get(pk=team.pk).name == "PLATFORM"


@pytest.mark.parametrize(
    ("body", "param"), [({"rpm_limit": 0}, "rpm_limit"), ({"slug": "x"}, "slug"), ({"name": ""}, "name")]
)
def test_a_bad_patch_is_a_400(
    body: dict[str, Any], param: str, client: APIClient, organization: Organization, owner: User, team: Team
) -> None:
    response = as_user(client, owner).patch(detail_url(organization, team), body, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert Team.objects.get(pk=team.pk).rpm_limit == 100


@pytest.mark.parametrize("role", list(Role))
def test_changing_and_deleting_a_team_follow_the_matrix(
    role: str, client: APIClient, organization: Organization, team: Team
) -> None:
    caller = as_user(client, user_with_role(organization, role))

    patched = caller.patch(detail_url(organization, team), {"name": "Renamed"}, format="json")
    deleted = caller.delete(detail_url(organization, team))

    if role_can(role, Perm.TEAMS_MANAGE):
        assert (patched.status_code, deleted.status_code) == (200, 204)
        assert not Team.objects.filter(pk=team.pk).exists()
    else:
        assert_openai_error(patched, 403, code="permission_denied")
        assert_openai_error(deleted, 403, code="permission_denied")
        assert Team.objects.get(pk=team.pk).name == "Platform"


def test_a_teams_new_limit_reaches_its_keys(
    client: APIClient, organization: Organization, owner: User, team: Team
) -> None:
    secret = issue_key(organization, created_by=owner, team=team).secret
    assert authenticate_sync(f"Bearer {secret}").rpm_limits[1] == 100

    as_user(client, owner).patch(detail_url(organization, team), {"rpm_limit": 7}, format="json")
    forget_cached_keys()  # what MUXER_KEY_CACHE_SECONDS does on its own

    assert authenticate_sync(f"Bearer {secret}").rpm_limits[1] == 7


# --- deleting -----------------------------------------------------------------------------------


def test_deleting_a_team_keeps_its_members_and_keys_teamless(
    client: APIClient, organization: Organization, owner: User, member: User, team: Team
) -> None:
    membership = Membership.objects.get(user=member, organization=organization)
    membership.team = team
    membership.save()
    key = issue_key(organization, created_by=owner, team=team).api_key

    response = as_user(client, owner).delete(detail_url(organization, team))

    assert response.status_code == 204
    assert not Team.objects.filter(pk=team.pk).exists()
    assert Membership.objects.get(pk=membership.pk).team_id is None
    assert APIKey.objects.get(pk=key.pk).team_id is None
    event = AuditEvent.objects.get(action="team.deleted")
    assert event.before == {"id": team.pk, "name": "Platform", "rpm_limit": 100, "tpm_limit": None}
    assert event.after is None
    assert event.metadata == {"detached_key_ids": [key.pk], "detached_membership_ids": [membership.pk]}


def test_a_team_with_a_budget_is_not_deleted(
    client: APIClient, organization: Organization, owner: User, team: Team
) -> None:
    Budget.objects.create(organization=organization, scope="team", team=team, period="monthly", limit_usd=Decimal(10))

    response = as_user(client, owner).delete(detail_url(organization, team))

    assert_openai_error(response, 409, code="team_has_budgets")
    assert Team.objects.filter(pk=team.pk).exists()
    assert Budget.objects.filter(team=team).count() == 1
    assert not AuditEvent.objects.filter(action="team.deleted").exists()


# --- tenancy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_the_outsider_gets_404_for_our_team(
    method: str, client: APIClient, organization: Organization, outsider: User, team: Team
) -> None:
    response = getattr(as_user(client, outsider), method)(detail_url(organization, team), {"name": "x"}, format="json")

    assert_openai_error(response, 404, code="not_found")
    assert Team.objects.get(pk=team.pk).name == "Platform"


@pytest.mark.parametrize("method", ["get", "post"])
def test_the_outsider_gets_404_for_our_team_list(
    method: str, client: APIClient, organization: Organization, outsider: User
) -> None:
    response = getattr(as_user(client, outsider), method)(list_url(organization), {"name": "x"}, format="json")

    assert_openai_error(response, 404, code="not_found")
    assert not Team.objects.filter(organization=organization).exists()


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_another_organizations_team_id_is_404_under_ours(
    method: str, client: APIClient, organization: Organization, owner: User, their_team: Team
) -> None:
    response = getattr(as_user(client, owner), method)(
        detail_url(organization, their_team), {"name": "x"}, format="json"
    )

    assert_openai_error(response, 404, code="not_found")
    assert "Theirs" not in response.content.decode()
    assert Team.objects.get(pk=their_team.pk).name == "Theirs"


# --- API keys on the management API -------------------------------------------------------------


def test_a_read_key_lists_teams_but_cannot_create_one(
    client: APIClient, organization: Organization, team: Team
) -> None:
    caller = as_key(client, key_with_scopes(organization, "read"))

    assert caller.get(list_url(organization)).status_code == 200
    assert_openai_error(create(caller, organization, name="By key"), 403, code="permission_denied")


def test_an_admin_key_creates_a_team_with_no_human_actor(client: APIClient, organization: Organization) -> None:
    response = create(as_key(client, key_with_scopes(organization, "admin")), organization, name="By key")

    assert response.status_code == 201
    assert AuditEvent.objects.get(action="team.created").actor_id is None


def test_a_proxy_key_cannot_use_the_team_api(client: APIClient, organization: Organization) -> None:
    response = as_key(client, key_with_scopes(organization, "proxy")).get(list_url(organization))

    assert_openai_error(response, 403, code="permission_denied")
    assert "scope" in response.json()["error"]["message"]


def test_a_key_of_another_organization_gets_404(client: APIClient, organization: Organization, outsider: User) -> None:
    theirs = key_with_scopes(outsider.memberships.get().organization, "admin")

    response = create(as_key(client, theirs), organization, name="x")

    assert_openai_error(response, 404, code="not_found")
    assert not Team.objects.filter(organization=organization).exists()
