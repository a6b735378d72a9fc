"""The management API: organizations and API keys, tried by the owner, a member and an outsider."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response as DRFResponse
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate

from accounts import keys
from accounts.api import OrganizationScopedView
from accounts.auth import authenticate_sync, forget_cached_keys
from accounts.models import APIKey, Organization, Role, User
from accounts.permissions import Perm
from audit.models import AuditEvent
from muxer_project.errors import APIError
from tests.factories import MembershipFactory, OrganizationFactory, TeamFactory, issue_key

from .helpers import as_user, assert_openai_error, user_with_role

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def client() -> APIClient:
    return APIClient()


@pytest.fixture
def our_key(organization: Organization, owner: User) -> APIKey:
    return issue_key(organization, created_by=owner, name="our key").api_key


@pytest.fixture
def their_org(outsider: User) -> Organization:
    return outsider.memberships.get().organization


def urls(org: str, key_id: int) -> dict[str, tuple[str, str]]:
    """Every object endpoint: name -> (method, url)."""
    return {
        "org-detail": ("get", reverse("org-detail", args=[org])),
        "key-list": ("get", reverse("key-list", args=[org])),
        "key-create": ("post", reverse("key-list", args=[org])),
        "key-detail": ("get", reverse("key-detail", args=[org, key_id])),
        "key-revoke": ("post", reverse("key-revoke", args=[org, key_id])),
    }


def call(client: APIClient, method: str, url: str) -> Response:
    if method == "post":
        return client.post(url, {"name": "sneaky"}, format="json")
    return client.get(url)


# --- organizations ---------------------------------------------------------------


def test_org_list_shows_only_the_callers_organizations(
    client: APIClient, organization: Organization, owner: User, their_org: Organization
) -> None:
    second = OrganizationFactory.create(name="Zeta")
    MembershipFactory.create(organization=second, user=owner, role=Role.VIEWER)
    OrganizationFactory.create()  # nobody's

    response = as_user(client, owner).get(reverse("org-list"))

    assert response.status_code == 200
    assert response.json()["object"] == "list"
    slugs: list[str] = [o["slug"] for o in response.json()["data"]]
    assert sorted(slugs) == sorted([organization.slug, second.slug])
    assert their_org.slug not in slugs


def test_org_detail_shows_the_callers_role(client: APIClient, organization: Organization, member: User) -> None:
    response = as_user(client, member).get(reverse("org-detail", args=[organization.slug]))

    assert response.status_code == 200
    assert response.json()["slug"] == organization.slug
    assert response.json()["role"] == Role.MEMBER


def test_an_unknown_organization_is_404(client: APIClient, owner: User) -> None:
    response = as_user(client, owner).get(reverse("org-detail", args=["no-such-org"]))

    assert_openai_error(response, 404, code="not_found")


# --- the outsider: 404 everywhere ------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["org-detail", "key-list", "key-create", "key-detail", "key-revoke"])
def test_the_outsider_gets_404(
    endpoint: str, client: APIClient, organization: Organization, outsider: User, our_key: APIKey
) -> None:
    method, url = urls(organization.slug, our_key.pk)[endpoint]

    response = call(as_user(client, outsider), method, url)

    assert_openai_error(response, 404, code="not_found")
    assert APIKey.objects.filter(organization=organization).count() == 1
    assert APIKey.objects.get(pk=our_key.pk).revoked_at is None


@pytest.mark.parametrize("endpoint", ["key-detail", "key-revoke"])
def test_the_outsider_gets_404_for_our_key_under_their_own_organization(
    endpoint: str, client: APIClient, their_org: Organization, outsider: User, our_key: APIKey
) -> None:
    method, url = urls(their_org.slug, our_key.pk)[endpoint]

    response = call(as_user(client, outsider), method, url)

    assert_openai_error(response, 404, code="not_found")
    assert our_key.name not in response.content.decode()
    assert APIKey.objects.get(pk=our_key.pk).revoked_at is None
    assert not AuditEvent.objects.filter(action="api_key.revoked").exists()


def test_the_outsider_does_not_see_our_keys_in_their_list(
    client: APIClient, their_org: Organization, outsider: User, our_key: APIKey
) -> None:
    response = as_user(client, outsider).get(reverse("key-list", args=[their_org.slug]))

    assert response.status_code == 200
    assert response.json()["data"] == []


# --- members below admin: read yes, write 403 -------------------------------------------


@pytest.mark.parametrize("role", [Role.VIEWER, Role.BILLING])
def test_a_viewer_or_billing_member_cannot_create_a_key(
    client: APIClient, organization: Organization, role: str
) -> None:
    user = user_with_role(organization, role)

    response = as_user(client, user).post(
        reverse("key-list", args=[organization.slug]), {"name": "mine"}, format="json"
    )

    assert_openai_error(response, 403, code="permission_denied")
    assert APIKey.objects.count() == 0


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_a_member_below_admin_cannot_revoke_a_key(
    client: APIClient, organization: Organization, our_key: APIKey, role: str
) -> None:
    user = user_with_role(organization, role)

    response = as_user(client, user).post(reverse("key-revoke", args=[organization.slug, our_key.pk]))

    assert_openai_error(response, 403, code="permission_denied")
    assert APIKey.objects.get(pk=our_key.pk).revoked_at is None
    assert not AuditEvent.objects.filter(action="api_key.revoked").exists()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
@pytest.mark.parametrize("endpoint", ["org-detail", "key-list", "key-detail"])
def test_a_member_can_read(
    endpoint: str, role: str, client: APIClient, organization: Organization, our_key: APIKey
) -> None:
    method, url = urls(organization.slug, our_key.pk)[endpoint]

    response = call(as_user(client, user_with_role(organization, role)), method, url)

    assert response.status_code == 200
    assert str(our_key.pk if endpoint != "org-detail" else organization.slug) in response.content.decode()


def test_an_admin_can_create_a_key(client: APIClient, organization: Organization) -> None:
    admin = user_with_role(organization, Role.ADMIN)

    response = as_user(client, admin).post(
        reverse("key-list", args=[organization.slug]), {"name": "ops"}, format="json"
    )

    assert response.status_code == 201
    assert APIKey.objects.get().created_by == admin


# --- the owner: create, read, revoke -------------------------------------------------------


@pytest.fixture
def created(client: APIClient, organization: Organization, owner: User, catalog: None) -> Response:
    return as_user(client, owner).post(
        reverse("key-list", args=[organization.slug]),
        {"name": "production", "allowed_models": ["fake-small"]},
        format="json",
    )


def test_the_owner_creates_a_key(created: Response, organization: Organization, owner: User) -> None:
    assert created.status_code == 201
    body = created.json()
    row = APIKey.objects.get(pk=body["id"])
    assert row.organization_id == organization.pk
    assert row.created_by_id == owner.pk
    assert body["name"] == row.name == "production"
    assert body["allowed_models"] == row.allowed_models == ["fake-small"]
    assert body["status"] == "active"
    assert body["created_by"] == owner.email
    assert body["prefix"] == row.prefix


def test_the_created_key_is_shown_once_and_well_formed(created: Response) -> None:
    secret = created.json()["key"]

    assert keys.is_well_formed(secret)
    assert created.json()["prefix"] == keys.lookup_prefix(secret)
    assert APIKey.objects.get(pk=created.json()["id"]).digest == keys.key_digest(secret)
    assert created.content.decode().count(secret) == 1


def test_the_created_key_authenticates(created: Response, organization: Organization) -> None:
    identity = authenticate_sync(f"Bearer {created.json()['key']}")

    assert identity.key_id == created.json()["id"]
    assert identity.organization_id == organization.pk
    assert identity.allowed_models == frozenset({"fake-small"})


@pytest.mark.parametrize("endpoint", ["key-list", "key-detail"])
def test_later_reads_never_include_the_secret(
    endpoint: str, created: Response, client: APIClient, organization: Organization
) -> None:
    secret = created.json()["key"]
    method, url = urls(organization.slug, created.json()["id"])[endpoint]

    response = call(client, method, url)

    assert response.status_code == 200
    assert secret not in response.content.decode()
    assert secret[16:] not in response.content.decode()
    rows = response.json()["data"] if endpoint == "key-list" else [response.json()]
    assert [r["id"] for r in rows] == [created.json()["id"]]
    assert all("key" not in r and "digest" not in r for r in rows)


def test_the_owner_creates_a_key_for_a_team_of_the_organization(
    client: APIClient, organization: Organization, owner: User
) -> None:
    team = TeamFactory.create(organization=organization)

    response = as_user(client, owner).post(
        reverse("key-list", args=[organization.slug]), {"name": "team key", "team": team.pk}, format="json"
    )

    assert response.status_code == 201
    assert response.json()["team"] == team.pk
    assert APIKey.objects.get().team_id == team.pk


def test_create_records_the_actor_in_the_audit_log(created: Response, organization: Organization, owner: User) -> None:
    event = AuditEvent.objects.get(action="api_key.created")

    assert (event.organization_id, event.actor_id) == (organization.pk, owner.pk)
    assert event.target_id == str(created.json()["id"])


@pytest.fixture
def revoked(client: APIClient, organization: Organization, owner: User, our_key: APIKey) -> Response:
    return as_user(client, owner).post(reverse("key-revoke", args=[organization.slug, our_key.pk]))


def test_the_owner_revokes_a_key(revoked: Response, our_key: APIKey) -> None:
    assert revoked.status_code == 200
    assert revoked.json()["id"] == our_key.pk
    assert revoked.json()["status"] == "revoked"
    assert revoked.json()["revoked_at"] is not None
    assert APIKey.objects.get(pk=our_key.pk).revoked_at is not None


def test_revoking_twice_is_harmless(
    revoked: Response, client: APIClient, organization: Organization, our_key: APIKey
) -> None:
    again = client.post(reverse("key-revoke", args=[organization.slug, our_key.pk]))

    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1


def test_a_revoked_key_stops_authenticating(client: APIClient, organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner)
    header = f"Bearer {issued.secret}"
    assert authenticate_sync(header).key_id == issued.api_key.pk

    response = as_user(client, owner).post(reverse("key-revoke", args=[organization.slug, issued.api_key.pk]))
    forget_cached_keys()

    assert response.status_code == 200
    with pytest.raises(APIError) as excinfo:
        authenticate_sync(header)
    assert (excinfo.value.status, excinfo.value.code) == (401, "invalid_api_key")


def test_revoking_an_unknown_key_is_404(client: APIClient, organization: Organization, owner: User) -> None:
    response = as_user(client, owner).post(reverse("key-revoke", args=[organization.slug, 999_999]))

    assert_openai_error(response, 404, code="not_found")


# --- bad input: 400 in OpenAI shape, and nothing written ---------------------------------------


def foreign_team_id() -> int:
    return TeamFactory.create().pk


BAD_INPUT: dict[str, tuple[Any, str]] = {
    "missing name": (lambda: {}, "name"),
    "blank name": (lambda: {"name": ""}, "name"),
    "name too long": (lambda: {"name": "x" * 201}, "name"),
    "expires_at in the past": (
        lambda: {"name": "k", "expires_at": (timezone.now() - timedelta(minutes=1)).isoformat()},
        "expires_at",
    ),
    "expires_at not a date": (lambda: {"name": "k", "expires_at": "next tuesday"}, "expires_at"),
    "unknown model": (lambda: {"name": "k", "allowed_models": ["fake-small", "no-such-model"]}, "allowed_models"),
    "allowed_models not a list": (lambda: {"name": "k", "allowed_models": "fake-small"}, "allowed_models"),
    "allowed_models an object": (lambda: {"name": "k", "allowed_models": {"fake-small": True}}, "allowed_models"),
    "team not an integer": (lambda: {"name": "k", "team": "ops"}, "team"),
    "team of another organization": (lambda: {"name": "k", "team": foreign_team_id()}, "team"),
    "team that does not exist": (lambda: {"name": "k", "team": 999_999}, "team"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_a_400_naming_the_field(
    case: str, client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    make_payload, param = BAD_INPUT[case]
    payload = make_payload()
    keys_before, events_before = APIKey.objects.count(), AuditEvent.objects.count()

    response = as_user(client, owner).post(reverse("key-list", args=[organization.slug]), payload, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert response.json()["error"]["message"].startswith(f"'{param}': ")
    assert (APIKey.objects.count(), AuditEvent.objects.count()) == (keys_before, events_before)


def test_an_unknown_model_is_named_in_the_message(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    response = as_user(client, owner).post(
        reverse("key-list", args=[organization.slug]),
        {"name": "k", "allowed_models": ["fake-small", "no-such-model"]},
        format="json",
    )

    assert "no-such-model" in response.json()["error"]["message"]
    assert "fake-small" not in response.json()["error"]["message"]


def test_malformed_json_is_a_400(client: APIClient, organization: Organization, owner: User) -> None:
    keys_before, events_before = APIKey.objects.count(), AuditEvent.objects.count()

    response = as_user(client, owner).post(
        reverse("key-list", args=[organization.slug]), data='{"name": "k",', content_type="application/json"
    )

    assert_openai_error(response, 400, code="invalid_request_error", param=None)
    assert "JSON" in response.json()["error"]["message"]
    assert (APIKey.objects.count(), AuditEvent.objects.count()) == (keys_before, events_before)


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("url_name", ["org-list", "org-detail", "key-list"])
def test_an_anonymous_caller_gets_401(url_name: str, client: APIClient, organization: Organization) -> None:
    url = reverse(url_name, args=[] if url_name == "org-list" else [organization.slug])

    response = client.get(url)

    assert_openai_error(response, 401, code="invalid_api_key")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_anonymous_caller_cannot_create_a_key(client: APIClient, organization: Organization) -> None:
    response = client.post(reverse("key-list", args=[organization.slug]), {"name": "k"}, format="json")

    assert_openai_error(response, 401, code="invalid_api_key")
    assert APIKey.objects.count() == 0


@pytest.fixture
def can_log_in(owner: User) -> User:
    """The owner, with the factory's password actually stored.

    UserFactory sets the password after creating the row and skips the save
    (``skip_postgeneration_save``), so only the in-memory user has it.
    """
    owner.save(update_fields=["password"])
    assert User.objects.get(pk=owner.pk).check_password(PASSWORD)
    return owner


def obtain_token(client: APIClient, email: str, password: str) -> Response:
    return client.post(reverse("token-obtain"), {"email": email, "password": password}, format="json")


def test_a_jwt_access_token_works_on_the_api(client: APIClient, organization: Organization, can_log_in: User) -> None:
    token = obtain_token(client, can_log_in.email, PASSWORD)
    assert token.status_code == 200
    assert set(token.json()) >= {"access", "refresh"}

    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.json()['access']}")
    response = client.get(reverse("org-list"))

    assert response.status_code == 200
    assert [o["slug"] for o in response.json()["data"]] == [organization.slug]


def test_a_wrong_password_gets_no_token(client: APIClient, can_log_in: User) -> None:
    response = obtain_token(client, can_log_in.email, "wrong horse")

    assert response.status_code == 401
    assert "access" not in response.json()
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_garbage_bearer_token_gets_401(client: APIClient) -> None:
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-jwt")

    response = client.get(reverse("org-list"))

    assert_openai_error(response, 401, code="invalid_api_key")


def test_an_oversized_body_gets_413_in_openai_shape(tenant: Any, catalog: None) -> None:
    client = APIClient()
    client.force_authenticate(tenant.owner)
    body = b'{"name": "' + b"x" * 3_000_000 + b'"}'  # over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB)

    response = client.post(f"/api/orgs/{tenant.organization.slug}/keys/", body, content_type="application/json")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert APIKey.objects.count() == 0


# --- every org-scoped view names a permission for each method ----------------------------------------


def _org_scoped_views() -> list[type[OrganizationScopedView]]:
    found: list[type[OrganizationScopedView]] = []
    pending: list[type[OrganizationScopedView]] = [OrganizationScopedView]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found


def test_every_org_scoped_view_names_a_permission_for_each_of_its_methods() -> None:
    import muxer_project.urls  # noqa: F401  (imports every API module)

    views = [view for view in _org_scoped_views() if not view.__module__.startswith("tests.")]
    assert len(views) > 10
    for view in views:
        handlers = {m.upper() for m in view.http_method_names if m not in ("head", "options") and hasattr(view, m)}
        assert handlers <= set(view.perms), f"{view.__module__}.{view.__name__} lacks a permission for some method"


class _ForgotPost(OrganizationScopedView):
    perms = {"GET": Perm.ORG_VIEW}

    def post(self, request: Request, org: str) -> DRFResponse:
        return DRFResponse({"done": True})


def test_a_method_without_a_permission_is_refused(organization: Organization, owner: User) -> None:
    request = APIRequestFactory().post(f"/api/orgs/{organization.slug}/x/", {}, format="json")
    force_authenticate(request, user=owner)

    response = _ForgotPost.as_view()(request, org=organization.slug)

    assert response.status_code == 403
    assert response.data["error"]["code"] == "permission_denied"
