"""An API key's life: scopes and limits at creation, changes, rotation with a grace period, revocation,
and who may do each (a member only to the keys they created)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from channels.testing import HttpCommunicator
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from accounts import keys
from accounts.auth import authenticate_sync, forget_cached_keys
from accounts.models import APIKey, Organization, Role, User
from accounts.permissions import Perm, role_can
from audit.models import AuditEvent
from muxer_project.asgi import application
from muxer_project.errors import APIError
from tests.factories import TeamFactory, issue_key

from .helpers import as_key, as_user, assert_openai_error, audit_text, key_with_scopes, user_with_role

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def list_url(organization: Organization) -> str:
    return reverse("key-list", args=[organization.slug])


def detail_url(organization: Organization, api_key: APIKey | int) -> str:
    return reverse("key-detail", args=[organization.slug, getattr(api_key, "pk", api_key)])


def rotate_url(organization: Organization, api_key: APIKey | int) -> str:
    return reverse("key-rotate", args=[organization.slug, getattr(api_key, "pk", api_key)])


def revoke_url(organization: Organization, api_key: APIKey | int) -> str:
    return reverse("key-revoke", args=[organization.slug, getattr(api_key, "pk", api_key)])


def identity(secret: str) -> Any:
    forget_cached_keys()  # what MUXER_KEY_CACHE_SECONDS does on every process
    return authenticate_sync(f"Bearer {secret}", scope=None)


def refusal(secret: str) -> APIError:
    forget_cached_keys()
    with pytest.raises(APIError) as caught:
        authenticate_sync(f"Bearer {secret}")
    return caught.value


@pytest.fixture
def owners_key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner, name="owner's").api_key


@pytest.fixture
def members_key(organization: Organization, member: User) -> APIKey:
    return issue_key(organization, created_by=member, name="member's").api_key


# --- creating: scopes and limits ----------------------------------------------------------------


def test_a_key_is_created_with_scopes_and_limits(client: APIClient, organization: Organization, owner: User) -> None:
    response = as_user(client, owner).post(
        list_url(organization),
        {"name": "ci", "scopes": ["read", "proxy", "read"], "rpm_limit": 30, "tpm_limit": 40_000},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["scopes"], body["rpm_limit"], body["tpm_limit"]) == (["proxy", "read"], 30, 40_000)
    assert (body["rotated_from"], body["rotated_to"], body["last_used_at"]) == (None, None, None)
    found = identity(body["key"])
    assert found.scopes == frozenset({"proxy", "read"})
    assert (found.rpm_limits[0], found.tpm_limits[0]) == (30, 40_000)


def test_a_key_has_the_proxy_scope_by_default(client: APIClient, organization: Organization, owner: User) -> None:
    response = as_user(client, owner).post(list_url(organization), {"name": "plain"}, format="json")

    assert response.json()["scopes"] == ["proxy"]
    assert APIKey.objects.get().scopes == ["proxy"]


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("scope", ["proxy", "read", "admin"])
def test_who_may_give_which_scope(role: str, scope: str, client: APIClient, organization: Organization) -> None:
    response = as_user(client, user_with_role(organization, role)).post(
        list_url(organization), {"name": "k", "scopes": [scope]}, format="json"
    )

    allowed = role_can(role, Perm.KEYS_CREATE) and (scope != "admin" or role_can(role, Perm.ORG_UPDATE))
    if allowed:
        assert response.status_code == 201
        assert APIKey.objects.get().scopes == [scope]
    else:
        assert_openai_error(response, 403, code="permission_denied")
        assert not APIKey.objects.exists()


BAD_KEYS: dict[str, tuple[dict[str, Any], str]] = {
    "no scopes": ({"scopes": []}, "scopes"),
    "unknown scope": ({"scopes": ["proxy", "root"]}, "scopes.1"),
    "scopes not a list": ({"scopes": "proxy"}, "scopes"),
    "zero rpm": ({"rpm_limit": 0}, "rpm_limit"),
    "huge tpm": ({"tpm_limit": 2**31}, "tpm_limit"),
    "unknown field": ({"expire_at": "2099-01-01T00:00:00Z"}, "expire_at"),
}


@pytest.mark.parametrize("case", BAD_KEYS)
def test_bad_key_input_is_a_400(case: str, client: APIClient, organization: Organization, owner: User) -> None:
    extra, param = BAD_KEYS[case]

    response = as_user(client, owner).post(list_url(organization), {"name": "k", **extra}, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert not APIKey.objects.exists()
    assert not AuditEvent.objects.exists()


def test_an_admin_key_creates_a_key_with_no_creator(client: APIClient, organization: Organization) -> None:
    response = as_key(client, key_with_scopes(organization, "admin")).post(
        list_url(organization), {"name": "made by a key", "scopes": ["admin"]}, format="json"
    )

    assert response.status_code == 201
    made = APIKey.objects.get(pk=response.json()["id"])
    assert made.created_by_id is None
    assert AuditEvent.objects.get(action="api_key.created", target_id=str(made.pk)).actor_id is None


@pytest.mark.parametrize("scopes", [("read",), ("proxy",)])
def test_a_read_or_proxy_key_cannot_create_keys(
    scopes: tuple[str, ...], client: APIClient, organization: Organization
) -> None:
    before = APIKey.objects.count()
    response = as_key(client, key_with_scopes(organization, *scopes)).post(
        list_url(organization), {"name": "k"}, format="json"
    )

    assert_openai_error(response, 403, code="permission_denied")
    assert APIKey.objects.count() == before + 1  # the caller's own key only


# --- changing -----------------------------------------------------------------------------------


def test_the_owner_changes_a_keys_name_limits_expiry_and_scopes(
    client: APIClient, organization: Organization, owner: User, owners_key: APIKey
) -> None:
    expires = timezone.now() + timedelta(days=30)

    response = as_user(client, owner).patch(
        detail_url(organization, owners_key),
        {
            "name": "renamed",
            "rpm_limit": 5,
            "tpm_limit": None,
            "expires_at": expires.isoformat(),
            "scopes": ["proxy", "admin"],
        },
        format="json",
    )

    assert response.status_code == 200, response.content
    row = APIKey.objects.get(pk=owners_key.pk)
    assert (row.name, row.rpm_limit, row.tpm_limit, row.expires_at, row.scopes) == (
        "renamed",
        5,
        None,
        expires,
        ["proxy", "admin"],
    )
    assert response.json()["scopes"] == ["proxy", "admin"]


def test_a_key_change_is_audited_with_before_and_after(
    client: APIClient, organization: Organization, owner: User, owners_key: APIKey
) -> None:
    as_user(client, owner).patch(
        detail_url(organization, owners_key), {"name": "renamed", "rpm_limit": 5}, format="json"
    )

    event = AuditEvent.objects.get(action="api_key.updated")
    assert (event.actor_id, event.target_id) == (owner.pk, str(owners_key.pk))
    assert event.before == {"name": "owner's", "rpm_limit": None}
    assert event.after == {"name": "renamed", "rpm_limit": 5}
    assert event.metadata["prefix"] == owners_key.prefix


def test_a_changed_limit_reaches_the_key(client: APIClient, organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner)

    as_user(client, owner).patch(detail_url(organization, issued.api_key), {"tpm_limit": 1234}, format="json")

    assert identity(issued.secret).tpm_limits[0] == 1234


def test_clearing_the_expiry_makes_a_key_permanent(client: APIClient, organization: Organization, owner: User) -> None:
    api_key = issue_key(organization, created_by=owner, expires_at=timezone.now() + timedelta(days=1)).api_key

    response = as_user(client, owner).patch(detail_url(organization, api_key), {"expires_at": None}, format="json")

    assert response.status_code == 200
    assert APIKey.objects.get(pk=api_key.pk).expires_at is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"scopes": []}, "scopes"),
        ({"rpm_limit": -1}, "rpm_limit"),
        ({"name": ""}, "name"),
        ({"prefix": "mm_live_x"}, "prefix"),
        ({"revoked_at": None}, "revoked_at"),
    ],
)
def test_a_bad_key_patch_is_a_400(
    body: dict[str, Any], param: str, client: APIClient, organization: Organization, owner: User, owners_key: APIKey
) -> None:
    response = as_user(client, owner).patch(detail_url(organization, owners_key), body, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    row = APIKey.objects.get(pk=owners_key.pk)
    assert (row.name, row.scopes, row.rpm_limit, row.expires_at) == ("owner's", ["proxy"], None, None)


def test_a_revoked_key_cannot_be_changed(
    client: APIClient, organization: Organization, owner: User, owners_key: APIKey
) -> None:
    as_user(client, owner).post(revoke_url(organization, owners_key))

    response = client.patch(detail_url(organization, owners_key), {"name": "zombie"}, format="json")

    assert_openai_error(response, 400, code="invalid_request_error")
    assert APIKey.objects.get(pk=owners_key.pk).name == "owner's"


# --- a member and their own keys ----------------------------------------------------------------


def test_a_member_changes_rotates_and_revokes_their_own_key(
    client: APIClient, organization: Organization, member: User, members_key: APIKey
) -> None:
    caller = as_user(client, member)

    patched = caller.patch(
        detail_url(organization, members_key), {"name": "mine", "scopes": ["proxy", "read"]}, format="json"
    )
    rotated = caller.post(rotate_url(organization, members_key), {}, format="json")
    revoked = caller.post(revoke_url(organization, rotated.json()["id"]))

    assert (patched.status_code, rotated.status_code, revoked.status_code) == (200, 201, 200)
    assert APIKey.objects.get(pk=rotated.json()["id"]).created_by_id == member.pk
    assert revoked.json()["status"] == "revoked"


@pytest.mark.parametrize("action", ["patch", "rotate", "revoke"])
def test_a_member_cannot_touch_someone_elses_key(
    action: str, client: APIClient, organization: Organization, member: User, owners_key: APIKey
) -> None:
    caller = as_user(client, member)
    if action == "patch":
        response = caller.patch(detail_url(organization, owners_key), {"name": "mine now"}, format="json")
    elif action == "rotate":
        response = caller.post(rotate_url(organization, owners_key), {}, format="json")
    else:
        response = caller.post(revoke_url(organization, owners_key))

    assert_openai_error(response, 403, code="permission_denied")
    assert "you created" in response.json()["error"]["message"]
    row = APIKey.objects.get(pk=owners_key.pk)
    assert (row.name, row.revoked_at, row.expires_at) == ("owner's", None, None)
    assert APIKey.objects.count() == 1


def test_a_member_cannot_give_their_key_the_admin_scope(
    client: APIClient, organization: Organization, member: User, members_key: APIKey
) -> None:
    response = as_user(client, member).patch(
        detail_url(organization, members_key), {"scopes": ["proxy", "admin"]}, format="json"
    )

    assert_openai_error(response, 403, code="permission_denied")
    assert "'admin'" in response.json()["error"]["message"]
    assert APIKey.objects.get(pk=members_key.pk).scopes == ["proxy"]


@pytest.mark.parametrize("role", [Role.ADMIN, Role.OWNER])
def test_a_manager_changes_a_members_key(
    role: str, client: APIClient, organization: Organization, members_key: APIKey
) -> None:
    response = as_user(client, user_with_role(organization, role)).patch(
        detail_url(organization, members_key), {"rpm_limit": 1}, format="json"
    )

    assert response.status_code == 200
    assert APIKey.objects.get(pk=members_key.pk).rpm_limit == 1


@pytest.mark.parametrize("role", [Role.VIEWER, Role.BILLING])
def test_a_viewer_or_billing_member_changes_no_key(
    role: str, client: APIClient, organization: Organization, owners_key: APIKey
) -> None:
    caller = as_user(client, user_with_role(organization, role))

    responses = [
        caller.patch(detail_url(organization, owners_key), {"name": "x"}, format="json"),
        caller.post(rotate_url(organization, owners_key), {}, format="json"),
        caller.post(revoke_url(organization, owners_key)),
    ]

    for response in responses:
        assert_openai_error(response, 403, code="permission_denied")
    assert APIKey.objects.get(pk=owners_key.pk).is_active


# --- rotation -----------------------------------------------------------------------------------


@pytest.fixture
def old(organization: Organization, owner: User, catalog: None) -> Any:
    team = TeamFactory.create(organization=organization)
    return issue_key(
        organization,
        created_by=owner,
        name="prod",
        team=team,
        allowed_models=("fake-small",),
        allowed_providers=("fake",),
        routing_strategy="cascade",
        routing_preference="quality",
        scopes=("proxy", "read"),
        rpm_limit=60,
        tpm_limit=1000,
    )


def rotate(client: APIClient, organization: Organization, api_key: APIKey, **body: Any) -> Response:
    return client.post(rotate_url(organization, api_key), body, format="json")


def test_rotation_issues_a_new_key_with_the_same_settings(
    client: APIClient, organization: Organization, owner: User, old: Any
) -> None:
    response = rotate(as_user(client, owner), organization, old.api_key, grace_seconds=3600)

    assert response.status_code == 201, response.content
    secret = response.json()["key"]
    assert keys.is_well_formed(secret)
    assert secret != old.secret
    assert response.content.decode().count(secret) == 1
    new = APIKey.objects.get(pk=response.json()["id"])
    settings_of = ("name", "team_id", "created_by_id", "allowed_models", "allowed_providers", "routing_strategy",
                   "routing_preference", "scopes", "rpm_limit", "tpm_limit")  # fmt: skip
    assert [getattr(new, f) for f in settings_of] == [getattr(old.api_key, f) for f in settings_of]
    assert new.rotated_from_id == old.api_key.pk
    assert response.json()["rotated_from"] == old.api_key.pk
    assert client.get(detail_url(organization, old.api_key)).json()["rotated_to"] == new.pk


def test_the_old_key_works_until_the_grace_period_ends(
    client: APIClient, organization: Organization, owner: User, old: Any
) -> None:
    response = rotate(as_user(client, owner), organization, old.api_key, grace_seconds=3600)

    expires_at = APIKey.objects.get(pk=old.api_key.pk).expires_at
    assert expires_at is not None
    assert expires_at - timezone.now() == pytest.approx(timedelta(hours=1), abs=timedelta(minutes=1))
    assert identity(old.secret).key_id == old.api_key.pk
    assert identity(response.json()["key"]).key_id == response.json()["id"]

    # The grace period ends (moved into the past rather than waited for).
    APIKey.objects.filter(pk=old.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    refused = refusal(old.secret)
    assert (refused.status, refused.code, refused.message) == (401, "invalid_api_key", "This API key has expired.")
    assert identity(response.json()["key"]).key_id == response.json()["id"]


def test_a_rotated_keys_grace_can_be_shortened_but_not_extended(
    client: APIClient, organization: Organization, owner: User, old: Any
) -> None:
    rotate(as_user(client, owner), organization, old.api_key, grace_seconds=3600)
    grace_end = APIKey.objects.get(pk=old.api_key.pk).expires_at
    assert grace_end is not None

    later = client.patch(
        detail_url(organization, old.api_key),
        {"expires_at": (grace_end + timedelta(days=30)).isoformat()},
        format="json",
    )
    never = client.patch(detail_url(organization, old.api_key), {"expires_at": None}, format="json")
    sooner = client.patch(
        detail_url(organization, old.api_key),
        {"expires_at": (timezone.now() + timedelta(minutes=5)).isoformat()},
        format="json",
    )

    assert_openai_error(later, 400, code="invalid_request_error", param="expires_at")
    assert_openai_error(never, 400, code="invalid_request_error", param="expires_at")
    assert sooner.status_code == 200, sooner.content
    shortened = APIKey.objects.get(pk=old.api_key.pk).expires_at
    assert shortened is not None
    assert shortened < grace_end


def test_a_zero_grace_retires_the_old_key_at_once(
    client: APIClient, organization: Organization, owner: User, old: Any
) -> None:
    response = rotate(as_user(client, owner), organization, old.api_key, grace_seconds=0)

    assert response.status_code == 201
    assert refusal(old.secret).code == "invalid_api_key"
    assert identity(response.json()["key"]).key_id == response.json()["id"]


def test_the_default_grace_comes_from_the_setting(
    client: APIClient, organization: Organization, owner: User, old: Any, settings: SettingsWrapper
) -> None:
    settings.MUXER_KEY_ROTATION_GRACE_SECONDS = 600

    rotate(as_user(client, owner), organization, old.api_key)

    expires_at = APIKey.objects.get(pk=old.api_key.pk).expires_at
    assert expires_at is not None
    assert expires_at - timezone.now() == pytest.approx(timedelta(minutes=10), abs=timedelta(minutes=1))


def test_an_earlier_expiry_is_kept(client: APIClient, organization: Organization, owner: User) -> None:
    soon = timezone.now() + timedelta(minutes=5)
    api_key = issue_key(organization, created_by=owner, expires_at=soon).api_key

    response = rotate(as_user(client, owner), organization, api_key, grace_seconds=86400)

    assert APIKey.objects.get(pk=api_key.pk).expires_at == soon
    assert APIKey.objects.get(pk=response.json()["id"]).expires_at == soon


def test_rotation_is_audited_with_prefixes_only(
    client: APIClient, organization: Organization, owner: User, old: Any
) -> None:
    response = rotate(as_user(client, owner), organization, old.api_key, grace_seconds=60)

    event = AuditEvent.objects.get(action="api_key.rotated")
    assert (event.actor_id, event.target_id) == (owner.pk, str(old.api_key.pk))
    assert event.metadata == {
        "name": "prod",
        "prefix": old.api_key.prefix,
        "new_key_id": response.json()["id"],
        "new_prefix": response.json()["prefix"],
        "grace_seconds": 60,
    }
    assert event.before == {"expires_at": None}
    assert event.after is not None
    assert event.after["expires_at"] == APIKey.objects.get(pk=old.api_key.pk).expires_at.isoformat()  # type: ignore[union-attr]
    text = audit_text()
    assert old.secret not in text
    assert response.json()["key"] not in text
    assert not AuditEvent.objects.filter(action="api_key.created", target_id=str(response.json()["id"])).exists()


def test_a_revoked_key_cannot_be_rotated(client: APIClient, organization: Organization, owner: User, old: Any) -> None:
    as_user(client, owner).post(revoke_url(organization, old.api_key))

    response = rotate(client, organization, old.api_key)

    assert_openai_error(response, 400, code="invalid_request_error")
    assert "revoked" in response.json()["error"]["message"]
    assert APIKey.objects.count() == 1


def test_an_expired_key_cannot_be_rotated(client: APIClient, organization: Organization, owner: User, old: Any) -> None:
    APIKey.objects.filter(pk=old.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = rotate(as_user(client, owner), organization, old.api_key)

    assert_openai_error(response, 400, code="invalid_request_error")
    assert "expired" in response.json()["error"]["message"]
    assert APIKey.objects.count() == 1


def test_a_key_is_rotated_once(client: APIClient, organization: Organization, owner: User, old: Any) -> None:
    first = rotate(as_user(client, owner), organization, old.api_key, grace_seconds=3600)

    again = rotate(client, organization, old.api_key, grace_seconds=3600)

    assert_openai_error(again, 400, code="invalid_request_error")
    assert str(first.json()["id"]) in again.json()["error"]["message"]
    assert APIKey.objects.count() == 2
    assert rotate(client, organization, APIKey.objects.get(pk=first.json()["id"])).status_code == 201


@pytest.mark.parametrize("grace", [-1, 604_801, "soon", None])
def test_a_bad_grace_is_a_400(grace: Any, client: APIClient, organization: Organization, owner: User, old: Any) -> None:
    response = rotate(as_user(client, owner), organization, old.api_key, grace_seconds=grace)

    assert_openai_error(response, 400, code="invalid_request_error", param="grace_seconds")
    assert APIKey.objects.count() == 1
    assert APIKey.objects.get(pk=old.api_key.pk).expires_at is None


def test_rotation_takes_no_other_fields(client: APIClient, organization: Organization, owner: User, old: Any) -> None:
    response = rotate(as_user(client, owner), organization, old.api_key, scopes=["admin"])

    assert_openai_error(response, 400, code="invalid_request_error", param="scopes")
    assert APIKey.objects.count() == 1


# --- tenancy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["patch", "rotate"])
def test_the_outsider_gets_404(
    action: str, client: APIClient, organization: Organization, outsider: User, owners_key: APIKey
) -> None:
    caller = as_user(client, outsider)
    their_org = outsider.memberships.get().organization
    for org in (organization, their_org):
        if action == "patch":
            response = caller.patch(detail_url(org, owners_key), {"name": "stolen"}, format="json")
        else:
            response = caller.post(rotate_url(org, owners_key), {}, format="json")

        assert_openai_error(response, 404, code="not_found")
    assert APIKey.objects.get(pk=owners_key.pk).name == "owner's"
    assert APIKey.objects.count() == 1


# --- scopes: what each key may call -------------------------------------------------------------


@pytest.mark.parametrize(("scopes", "status"), [(("read",), 403), (("admin",), 403), (("read", "proxy"), 200)])
def test_v1_models_needs_the_proxy_scope(
    scopes: tuple[str, ...], status: int, client: APIClient, organization: Organization, catalog: None
) -> None:
    response = as_key(client, key_with_scopes(organization, *scopes)).get(reverse("v1-models"))

    assert response.status_code == status
    if status == 403:
        assert_openai_error(response, 403, code="permission_denied")
        assert "'proxy' scope" in response.json()["error"]["message"]


def test_a_proxy_key_cannot_read_the_management_api(client: APIClient, organization: Organization) -> None:
    response = as_key(client, key_with_scopes(organization, "proxy")).get(list_url(organization))

    assert_openai_error(response, 403, code="permission_denied")


def test_a_read_key_reads_but_cannot_revoke(client: APIClient, organization: Organization, owners_key: APIKey) -> None:
    caller = as_key(client, key_with_scopes(organization, "read"))

    assert caller.get(detail_url(organization, owners_key)).status_code == 200
    assert_openai_error(caller.post(revoke_url(organization, owners_key)), 403, code="permission_denied")
    assert APIKey.objects.get(pk=owners_key.pk).revoked_at is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("scopes", [("read",), ("admin",), ("read", "admin")])
async def test_chat_completions_refuses_a_key_without_the_proxy_scope(scopes: tuple[str, ...], catalog: None) -> None:
    from asgiref.sync import sync_to_async

    from tests.factories import OrganizationFactory

    organization = await sync_to_async(OrganizationFactory.create)()
    secret = await sync_to_async(key_with_scopes)(organization, *scopes)
    body = b'{"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]}'
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {secret}".encode())]

    communicator = HttpCommunicator(application, "POST", "/v1/chat/completions", body=body, headers=headers)
    response = await communicator.get_response(timeout=15)

    assert response["status"] == 403
    assert b'"code":"permission_denied"' in response["body"].replace(b" ", b"")
    assert b"'proxy' scope" in response["body"]
    assert secret.encode() not in response["body"]


# --- a key never does more than its creator may do now -------------------------------------------


def test_an_admin_key_follows_its_creators_demotion_and_departure(
    client: APIClient, organization: Organization
) -> None:
    admin = user_with_role(organization, Role.ADMIN)
    secret = key_with_scopes(organization, "admin", created_by=admin)
    teams = reverse("team-list", args=[organization.slug])

    assert as_key(client, secret).post(teams, {"name": "while admin"}, format="json").status_code == 201

    admin.memberships.filter(organization=organization).update(role=Role.MEMBER)
    demoted = as_key(client, secret).post(teams, {"name": "after demotion"}, format="json")
    assert_openai_error(demoted, 403, code="permission_denied")
    assert as_key(client, secret).get(teams).status_code == 200  # a member still reads

    admin.memberships.filter(organization=organization).update(role=Role.BILLING)
    assert_openai_error(as_key(client, secret).get(list_url(organization)), 403, code="permission_denied")

    admin.memberships.filter(organization=organization).delete()
    assert_openai_error(as_key(client, secret).get(teams), 403, code="permission_denied")


def test_a_read_key_of_a_billing_member_cannot_list_keys(client: APIClient, organization: Organization) -> None:
    person = user_with_role(organization, Role.MEMBER)
    secret = key_with_scopes(organization, "read", created_by=person)
    assert as_key(client, secret).get(list_url(organization)).status_code == 200

    person.memberships.filter(organization=organization).update(role=Role.BILLING)

    assert_openai_error(as_key(client, secret).get(list_url(organization)), 403, code="permission_denied")
    assert as_key(client, secret).get(reverse("budget-list", args=[organization.slug])).status_code == 200


def test_an_owners_admin_key_acts_as_an_admin(client: APIClient, organization: Organization, owner: User) -> None:
    secret = key_with_scopes(organization, "admin", created_by=owner)

    response = as_key(client, secret).get(reverse("org-detail", args=[organization.slug]))

    assert response.status_code == 200
    assert response.json()["role"] == "admin"
