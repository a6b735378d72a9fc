"""Routing policy per organization and per key: the API, the admin, and what a key's identity carries."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from django.test import Client
from django.urls import reverse
from drf_spectacular.generators import SchemaGenerator
from pytest_django import DjangoAssertNumQueries
from rest_framework.test import APIClient

from accounts.auth import KeyIdentity, authenticate_sync, forget_cached_keys
from accounts.models import APIKey, Organization, Role, RoutingPreference, RoutingStrategy, User
from audit.models import AuditEvent
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory, issue_key

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db

DEFAULT_POLICY = {
    "allowed_models": [],
    "allowed_providers": [],
    "routing_strategy": "hybrid",
    "routing_preference": "cost",
}


@pytest.fixture
def client() -> APIClient:
    return APIClient()


@pytest.fixture
def our_key(organization: Organization, owner: User, catalog: None) -> APIKey:
    return issue_key(organization, created_by=owner, name="our key").api_key


@pytest.fixture
def their_org(outsider: User) -> Organization:
    return outsider.memberships.get().organization


def as_user(client: APIClient, user: User) -> APIClient:
    client.force_authenticate(user)
    return client


def user_with_role(organization: Organization, role: str) -> User:
    return MembershipFactory.create(organization=organization, role=role, user=UserFactory.create()).user


def policy_url(org: Organization | str) -> str:
    return reverse("routing-policy", args=[org if isinstance(org, str) else org.slug])


def key_url(org: Organization, key: APIKey) -> str:
    return reverse("key-detail", args=[org.slug, key.pk])


def assert_openai_error(response: Response, status: int, *, code: str | None, param: str | None = None) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    assert body["error"]["message"]


def policy_of(row: Organization | APIKey) -> dict[str, Any]:
    row.refresh_from_db()
    return {field: getattr(row, field) for field in DEFAULT_POLICY}


def identity_for(secret: str) -> KeyIdentity:
    forget_cached_keys()
    return authenticate_sync(f"Bearer {secret}")


def set_org_policy(organization: Organization, **fields: Any) -> None:
    Organization.objects.filter(pk=organization.pk).update(**fields)
    organization.refresh_from_db()


# --- KeyIdentity -------------------------------------------------------------------------------


def test_a_key_without_its_own_strategy_and_preference_inherits_the_defaults(
    organization: Organization, owner: User
) -> None:
    identity = identity_for(issue_key(organization, created_by=owner).secret)

    assert (identity.strategy, identity.preference) == ("hybrid", "cost")


def test_a_key_without_its_own_strategy_and_preference_inherits_the_organizations(
    organization: Organization, owner: User
) -> None:
    set_org_policy(organization, routing_strategy=RoutingStrategy.SEMANTIC, routing_preference=RoutingPreference.SPEED)

    identity = identity_for(issue_key(organization, created_by=owner).secret)

    assert (identity.strategy, identity.preference) == ("semantic", "speed")


def test_a_keys_own_strategy_and_preference_win_over_the_organizations(organization: Organization, owner: User) -> None:
    set_org_policy(organization, routing_strategy=RoutingStrategy.SEMANTIC, routing_preference=RoutingPreference.SPEED)
    issued = issue_key(organization, created_by=owner, routing_strategy="cascade", routing_preference="quality")

    identity = identity_for(issued.secret)

    assert (identity.strategy, identity.preference) == ("cascade", "quality")


def test_a_key_may_set_only_one_of_the_two(organization: Organization, owner: User) -> None:
    set_org_policy(organization, routing_strategy=RoutingStrategy.SEMANTIC, routing_preference=RoutingPreference.SPEED)
    issued = issue_key(organization, created_by=owner, routing_preference="quality")

    identity = identity_for(issued.secret)

    assert (identity.strategy, identity.preference) == ("semantic", "quality")


def test_the_identity_carries_both_provider_lists(organization: Organization, owner: User) -> None:
    set_org_policy(organization, allowed_providers=["fake", "openai"])
    issued = issue_key(organization, created_by=owner, allowed_providers=("fake",))

    identity = identity_for(issued.secret)

    assert identity.allowed_providers == frozenset({"fake"})
    assert identity.org_allowed_providers == frozenset({"fake", "openai"})


@pytest.mark.parametrize(
    ("org_allows", "key_allows", "expected"),
    [
        ((), (), {"fake": True, "openai": True}),
        (("fake",), (), {"fake": True, "openai": False}),
        ((), ("openai",), {"fake": False, "openai": True}),
        (("fake", "openai"), ("fake",), {"fake": True, "openai": False}),
        # A key cannot widen what its organization allows.
        (("fake",), ("openai",), {"fake": False, "openai": False}),
    ],
)
def test_allows_provider_honours_the_key_and_organization_lists(
    org_allows: tuple[str, ...],
    key_allows: tuple[str, ...],
    expected: dict[str, bool],
    organization: Organization,
    owner: User,
) -> None:
    set_org_policy(organization, allowed_providers=list(org_allows))
    # Written directly: the services refuse a key list that widens the organization's.
    issued = issue_key(organization, created_by=owner)
    APIKey.objects.filter(pk=issued.api_key.pk).update(allowed_providers=list(key_allows))

    identity = identity_for(issued.secret)

    assert {slug: identity.allows_provider(slug) for slug in expected} == expected


def test_an_identity_built_without_the_policy_fields_allows_everything() -> None:
    identity = KeyIdentity(
        key_id=1,
        prefix="mm_live_abcdefgh",
        digest="0" * 64,
        organization_id=1,
        team_id=None,
        user_id=None,
        allowed_models=frozenset(),
        org_allowed_models=frozenset(),
        expires_at=None,
        revoked=False,
    )

    assert identity.allows_provider("openai")
    assert (identity.strategy, identity.preference) == ("hybrid", "cost")


def test_loading_the_policy_costs_one_query(
    organization: Organization, owner: User, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    set_org_policy(organization, allowed_providers=["fake"], routing_strategy=RoutingStrategy.CASCADE)
    issued = issue_key(organization, created_by=owner, routing_preference="speed")
    forget_cached_keys()

    with django_assert_num_queries(1):
        identity = authenticate_sync(f"Bearer {issued.secret}")
        # Every policy field was loaded by that query (``.only`` would defer and re-query otherwise).
        assert (identity.strategy, identity.preference, identity.org_allowed_providers) == (
            "cascade",
            "speed",
            frozenset({"fake"}),
        )


# --- GET /api/orgs/<org>/routing-policy/ -------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_any_member_reads_the_policy(client: APIClient, organization: Organization, role: str) -> None:
    set_org_policy(organization, allowed_models=["fake-small"], routing_preference=RoutingPreference.QUALITY)

    response = as_user(client, user_with_role(organization, role)).get(policy_url(organization))

    assert response.status_code == 200
    assert response.json() == {**DEFAULT_POLICY, "allowed_models": ["fake-small"], "routing_preference": "quality"}


def test_a_new_organization_has_the_default_policy(client: APIClient, organization: Organization, member: User) -> None:
    response = as_user(client, member).get(policy_url(organization))

    assert response.json() == DEFAULT_POLICY


def test_the_org_detail_shows_the_policy(client: APIClient, organization: Organization, member: User) -> None:
    set_org_policy(organization, allowed_providers=["fake"])

    body = as_user(client, member).get(reverse("org-detail", args=[organization.slug])).json()

    assert {field: body[field] for field in DEFAULT_POLICY} == {**DEFAULT_POLICY, "allowed_providers": ["fake"]}


@pytest.mark.parametrize("method", ["get", "patch"])
def test_the_outsider_gets_404_for_our_policy(
    method: str, client: APIClient, organization: Organization, outsider: User, catalog: None
) -> None:
    response = getattr(as_user(client, outsider), method)(
        policy_url(organization), {"routing_strategy": "cascade"}, format="json"
    )

    assert_openai_error(response, 404, code="not_found")
    assert policy_of(organization) == DEFAULT_POLICY
    assert not AuditEvent.objects.filter(action="organization.routing_policy_updated").exists()


def test_an_anonymous_caller_gets_401(client: APIClient, organization: Organization) -> None:
    response = client.patch(policy_url(organization), {"routing_strategy": "cascade"}, format="json")

    assert_openai_error(response, 401, code="invalid_api_key")
    assert policy_of(organization) == DEFAULT_POLICY


# --- PATCH /api/orgs/<org>/routing-policy/ -----------------------------------------------------


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_a_member_below_admin_cannot_change_the_policy(
    client: APIClient, organization: Organization, role: str, catalog: None
) -> None:
    response = as_user(client, user_with_role(organization, role)).patch(
        policy_url(organization), {"routing_strategy": "cascade", "allowed_providers": ["fake"]}, format="json"
    )

    assert_openai_error(response, 403, code="permission_denied")
    assert policy_of(organization) == DEFAULT_POLICY
    assert not AuditEvent.objects.filter(action="organization.routing_policy_updated").exists()


@pytest.fixture
def full_policy() -> dict[str, Any]:
    return {
        "allowed_models": ["fake-small", "fake-large", "gpt-4o"],
        "allowed_providers": ["openai", "fake"],
        "routing_strategy": "cascade",
        "routing_preference": "quality",
    }


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_an_owner_or_admin_changes_the_policy(
    role: str, client: APIClient, organization: Organization, full_policy: dict[str, Any], catalog: None
) -> None:
    response = as_user(client, user_with_role(organization, role)).patch(
        policy_url(organization), full_policy, format="json"
    )

    expected = {
        "allowed_models": ["fake-large", "fake-small", "gpt-4o"],
        "allowed_providers": ["fake", "openai"],
        "routing_strategy": "cascade",
        "routing_preference": "quality",
    }
    assert response.status_code == 200, response.content
    assert response.json() == expected
    assert policy_of(organization) == expected


def test_a_policy_change_is_audited_with_the_actor_and_the_changes(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    as_user(client, owner).patch(
        policy_url(organization), {"routing_strategy": "semantic", "allowed_providers": ["fake"]}, format="json"
    )

    event = AuditEvent.objects.get(action="organization.routing_policy_updated")
    assert (event.organization_id, event.actor_id, event.target_type) == (organization.pk, owner.pk, "organization")
    assert event.target_id == str(organization.pk)
    assert event.metadata == {
        "changes": {
            "routing_strategy": {"old": "hybrid", "new": "semantic"},
            "allowed_providers": {"old": [], "new": ["fake"]},
        }
    }


def test_a_partial_patch_leaves_the_other_fields(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    set_org_policy(organization, allowed_models=["fake-small"], routing_strategy=RoutingStrategy.CASCADE)

    response = as_user(client, owner).patch(policy_url(organization), {"routing_preference": "speed"}, format="json")

    assert response.status_code == 200
    assert policy_of(organization) == {
        **DEFAULT_POLICY,
        "allowed_models": ["fake-small"],
        "routing_strategy": "cascade",
        "routing_preference": "speed",
    }


def test_an_empty_list_lifts_the_limit(client: APIClient, organization: Organization, owner: User) -> None:
    set_org_policy(organization, allowed_models=["fake-small"])

    response = as_user(client, owner).patch(policy_url(organization), {"allowed_models": []}, format="json")

    assert response.status_code == 200
    assert policy_of(organization)["allowed_models"] == []


def test_a_patch_that_changes_nothing_writes_no_audit_event(
    client: APIClient, organization: Organization, owner: User
) -> None:
    response = as_user(client, owner).patch(
        policy_url(organization), {"routing_strategy": "hybrid", "routing_preference": "cost"}, format="json"
    )

    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="organization.routing_policy_updated").exists()


def test_keys_pick_up_the_organizations_new_policy(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    issued = issue_key(organization, created_by=owner)
    assert identity_for(issued.secret).strategy == "hybrid"

    as_user(client, owner).patch(
        policy_url(organization), {"routing_strategy": "semantic", "allowed_providers": ["fake"]}, format="json"
    )
    identity = identity_for(issued.secret)

    assert identity.strategy == "semantic"
    assert identity.allows_provider("fake")
    assert not identity.allows_provider("openai")


BAD_ORG_POLICY: dict[str, tuple[Any, str]] = {
    "unknown model": ({"allowed_models": ["fake-small", "no-such-model"]}, "allowed_models"),
    "unknown provider": ({"allowed_providers": ["fake", "no-such-provider"]}, "allowed_providers"),
    "models not a list": ({"allowed_models": "fake-small"}, "allowed_models"),
    "models an object": ({"allowed_models": {"fake-small": True}}, "allowed_models"),
    "models null": ({"allowed_models": None}, "allowed_models"),
    # An element's error names its index, as everywhere in the API.
    "a model that is not a string": ({"allowed_models": ["fake-small", ["fake-large"]]}, "allowed_models.1"),
    "providers not a list": ({"allowed_providers": "fake"}, "allowed_providers"),
    "a provider that is a boolean": ({"allowed_providers": [True]}, "allowed_providers.0"),
    "unknown strategy": ({"routing_strategy": "fastest"}, "routing_strategy"),
    "blank strategy": ({"routing_strategy": ""}, "routing_strategy"),
    "strategy a boolean": ({"routing_strategy": True}, "routing_strategy"),
    "unknown preference": ({"routing_preference": "latency"}, "routing_preference"),
    "preference null": ({"routing_preference": None}, "routing_preference"),
    "a misspelt field": ({"allowed_model": ["fake-small"]}, "allowed_model"),
    "a field that is not policy": ({"name": "renamed"}, "name"),
}


@pytest.mark.parametrize("case", BAD_ORG_POLICY)
def test_a_bad_org_policy_is_a_400_naming_the_field(
    case: str, client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    payload, param = BAD_ORG_POLICY[case]

    response = as_user(client, owner).patch(policy_url(organization), payload, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert response.json()["error"]["message"].startswith(f"'{param}': ")
    assert policy_of(organization) == DEFAULT_POLICY
    assert organization.name != "renamed"
    assert not AuditEvent.objects.filter(action="organization.routing_policy_updated").exists()


def test_unknown_names_are_named_in_the_message(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    response = as_user(client, owner).patch(
        policy_url(organization), {"allowed_providers": ["fake", "nope", "also-nope"]}, format="json"
    )

    message = response.json()["error"]["message"]
    assert "also-nope, nope" in message
    assert "fake" not in message


@pytest.mark.parametrize("body", ['{"routing_strategy": ', "[]", '"cascade"'])
def test_a_body_that_is_not_a_json_object_is_a_400(
    body: str, client: APIClient, organization: Organization, owner: User
) -> None:
    response = as_user(client, owner).patch(policy_url(organization), data=body, content_type="application/json")

    assert_openai_error(response, 400, code="invalid_request_error", param=None)
    assert policy_of(organization) == DEFAULT_POLICY


# --- the key's policy on /api/orgs/<org>/keys/<id>/ ------------------------------------------------


def test_the_key_detail_shows_the_keys_policy(
    client: APIClient, organization: Organization, member: User, our_key: APIKey
) -> None:
    body = as_user(client, member).get(key_url(organization, our_key)).json()

    assert {field: body[field] for field in DEFAULT_POLICY} == {
        "allowed_models": [],
        "allowed_providers": [],
        "routing_strategy": "",
        "routing_preference": "",
    }


def test_the_owner_sets_a_keys_policy(
    client: APIClient, organization: Organization, owner: User, our_key: APIKey
) -> None:
    response = as_user(client, owner).patch(
        key_url(organization, our_key),
        {
            "allowed_models": ["fake-small", "fake-small", "claude-haiku-4-5"],
            "allowed_providers": ["fake", "anthropic"],
            "routing_strategy": "heuristic",
            "routing_preference": "speed",
        },
        format="json",
    )

    expected = {
        "allowed_models": ["claude-haiku-4-5", "fake-small"],
        "allowed_providers": ["anthropic", "fake"],
        "routing_strategy": "heuristic",
        "routing_preference": "speed",
    }
    assert response.status_code == 200, response.content
    assert {field: response.json()[field] for field in DEFAULT_POLICY} == expected
    assert response.json()["id"] == our_key.pk
    assert policy_of(our_key) == expected


def test_an_admin_sets_a_keys_policy(client: APIClient, organization: Organization, our_key: APIKey) -> None:
    admin = user_with_role(organization, Role.ADMIN)

    response = as_user(client, admin).patch(
        key_url(organization, our_key), {"routing_strategy": "cascade"}, format="json"
    )

    assert response.status_code == 200
    assert policy_of(our_key)["routing_strategy"] == "cascade"


def test_a_keys_policy_change_is_audited(
    client: APIClient, organization: Organization, owner: User, our_key: APIKey
) -> None:
    as_user(client, owner).patch(key_url(organization, our_key), {"allowed_providers": ["fake"]}, format="json")

    event = AuditEvent.objects.get(action="api_key.updated")
    assert (event.organization_id, event.actor_id, event.target_type) == (organization.pk, owner.pk, "api_key")
    assert event.target_id == str(our_key.pk)
    assert event.metadata == {"name": "our key", "prefix": our_key.prefix}
    assert (event.before, event.after) == ({"allowed_providers": []}, {"allowed_providers": ["fake"]})


def test_a_blank_strategy_goes_back_to_the_organizations(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    set_org_policy(organization, routing_strategy=RoutingStrategy.SEMANTIC)
    issued = issue_key(organization, created_by=owner, routing_strategy="cascade")
    assert identity_for(issued.secret).strategy == "cascade"

    response = as_user(client, owner).patch(
        key_url(organization, issued.api_key), {"routing_strategy": ""}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["routing_strategy"] == ""
    assert identity_for(issued.secret).strategy == "semantic"


def test_a_key_picks_up_its_new_policy(client: APIClient, organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner)

    as_user(client, owner).patch(
        key_url(organization, issued.api_key),
        {"allowed_providers": ["fake"], "routing_preference": "quality"},
        format="json",
    )
    identity = identity_for(issued.secret)

    assert identity.preference == "quality"
    assert identity.allows_provider("fake")
    assert not identity.allows_provider("openai")


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_a_member_below_admin_cannot_change_a_keys_policy(
    role: str, client: APIClient, organization: Organization, our_key: APIKey
) -> None:
    response = as_user(client, user_with_role(organization, role)).patch(
        key_url(organization, our_key), {"routing_strategy": "cascade"}, format="json"
    )

    assert_openai_error(response, 403, code="permission_denied")
    assert policy_of(our_key)["routing_strategy"] == ""
    assert not AuditEvent.objects.filter(action="api_key.updated").exists()


@pytest.mark.parametrize("under", ["our org", "their org"])
def test_the_outsider_gets_404_for_our_keys_policy(
    under: str, client: APIClient, organization: Organization, their_org: Organization, outsider: User, our_key: APIKey
) -> None:
    url = key_url(organization if under == "our org" else their_org, our_key)

    response = as_user(client, outsider).patch(url, {"routing_strategy": "cascade"}, format="json")

    assert_openai_error(response, 404, code="not_found")
    assert our_key.name not in response.content.decode()
    assert policy_of(our_key)["routing_strategy"] == ""
    assert not AuditEvent.objects.filter(action="api_key.updated").exists()


def test_the_revoke_url_does_not_take_a_policy(
    client: APIClient, organization: Organization, owner: User, our_key: APIKey
) -> None:
    response = as_user(client, owner).patch(
        reverse("key-revoke", args=[organization.slug, our_key.pk]), {"routing_strategy": "cascade"}, format="json"
    )

    assert_openai_error(response, 405, code="method_not_allowed")
    assert policy_of(our_key)["routing_strategy"] == ""


BAD_KEY_POLICY: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
    # case: (organization's policy, key PATCH, param, a name the message must give)
    "unknown model": ({}, {"allowed_models": ["no-such-model"]}, "allowed_models", "no-such-model"),
    "unknown provider": ({}, {"allowed_providers": ["no-such-provider"]}, "allowed_providers", "no-such-provider"),
    "a model the org leaves out": (
        {"allowed_models": ["fake-small"]},
        {"allowed_models": ["fake-small", "fake-large"]},
        "allowed_models",
        "fake-large",
    ),
    "a model of a provider the org leaves out": (
        {"allowed_providers": ["fake"]},
        {"allowed_models": ["gpt-4o"]},
        "allowed_models",
        "gpt-4o",
    ),
    "a provider the org leaves out": (
        {"allowed_providers": ["fake"]},
        {"allowed_providers": ["fake", "openai"]},
        "allowed_providers",
        "openai",
    ),
    "unknown strategy": ({}, {"routing_strategy": "random"}, "routing_strategy", "random"),
    "preference a number": ({}, {"routing_preference": 1}, "routing_preference", "1"),
    "models not a list": ({}, {"allowed_models": "fake-small"}, "allowed_models", ""),
    "a field a key does not have": ({}, {"digest": "0" * 64}, "digest", ""),
}


@pytest.mark.parametrize("case", BAD_KEY_POLICY)
def test_a_bad_key_policy_is_a_400_naming_the_field(
    case: str, client: APIClient, organization: Organization, owner: User, our_key: APIKey
) -> None:
    org_policy, payload, param, named = BAD_KEY_POLICY[case]
    set_org_policy(organization, **org_policy)

    response = as_user(client, owner).patch(key_url(organization, our_key), payload, format="json")

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert named in response.json()["error"]["message"]
    assert policy_of(our_key) == {**DEFAULT_POLICY, "routing_strategy": "", "routing_preference": ""}
    assert APIKey.objects.get(pk=our_key.pk).name == "our key"
    assert not AuditEvent.objects.filter(action="api_key.updated").exists()


def test_a_key_may_narrow_the_organizations_lists(
    client: APIClient, organization: Organization, owner: User, our_key: APIKey
) -> None:
    set_org_policy(organization, allowed_models=["fake-small", "fake-large"], allowed_providers=["fake", "openai"])

    response = as_user(client, owner).patch(
        key_url(organization, our_key),
        {"allowed_models": ["fake-large"], "allowed_providers": ["fake"]},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert (response.json()["allowed_models"], response.json()["allowed_providers"]) == (["fake-large"], ["fake"])


def test_a_key_may_change_its_strategy_after_the_org_narrowed_below_its_lists(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    """Lists already stored are not re-checked when the PATCH does not touch them."""
    issued = issue_key(organization, created_by=owner, allowed_models=("fake-large",))
    set_org_policy(organization, allowed_models=["fake-small"])

    response = as_user(client, owner).patch(
        key_url(organization, issued.api_key), {"routing_strategy": "cascade"}, format="json"
    )

    assert response.status_code == 200
    assert policy_of(issued.api_key)["allowed_models"] == ["fake-large"]


# --- creating a key with a policy ------------------------------------------------------------------


def test_a_key_is_created_with_its_policy(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    response = as_user(client, owner).post(
        reverse("key-list", args=[organization.slug]),
        {"name": "router", "allowed_providers": ["fake"], "routing_strategy": "semantic", "routing_preference": ""},
        format="json",
    )

    assert response.status_code == 201, response.content
    identity = identity_for(response.json()["key"])
    assert identity.allowed_providers == frozenset({"fake"})
    assert (identity.strategy, identity.preference) == ("semantic", "cost")
    event = AuditEvent.objects.get(action="api_key.created")
    assert event.metadata["allowed_providers"] == ["fake"]
    assert event.metadata["routing_strategy"] == "semantic"


def test_a_key_cannot_be_created_wider_than_its_organization(
    client: APIClient, organization: Organization, owner: User, catalog: None
) -> None:
    set_org_policy(organization, allowed_providers=["fake"])

    response = as_user(client, owner).post(
        reverse("key-list", args=[organization.slug]),
        {"name": "wide", "allowed_providers": ["openai"]},
        format="json",
    )

    assert_openai_error(response, 400, code="invalid_request_error", param="allowed_providers")
    assert APIKey.objects.count() == 0


# --- the schema ---------------------------------------------------------------------------------


def test_the_schema_documents_the_policy_endpoints() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)

    assert set(schema["paths"]["/api/orgs/{org}/routing-policy/"]) == {"get", "patch"}
    assert "patch" in schema["paths"]["/api/orgs/{org}/keys/{key_id}/"]
    policy = schema["components"]["schemas"]["RoutingPolicy"]["properties"]
    assert set(policy) == set(DEFAULT_POLICY)


# --- the admin ----------------------------------------------------------------------------------


@pytest.fixture
def staff(db: None) -> Client:
    user = User.objects.create_superuser("staff@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


def change_form_data(response: _MonkeyPatchedWSGIResponse) -> dict[str, Any]:
    """What the change form would post back unchanged: the main form and every inline."""
    assert response.context is not None
    data: dict[str, Any] = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        forms += [formset.management_form, *formset.forms]
    for form in forms:
        for name in form.fields:
            value = form[name].value()
            if value is not None and value is not False:
                data[form[name].html_name] = value
    return data


@pytest.mark.parametrize("model", ["organization", "apikey"])
def test_the_admin_changelist_shows_the_policy(
    model: str, staff: Client, organization: Organization, our_key: APIKey
) -> None:
    set_org_policy(organization, routing_strategy=RoutingStrategy.CASCADE)

    response = staff.get(reverse(f"admin:accounts_{model}_changelist"))

    assert response.status_code == 200
    assert "column-routing_strategy" in response.content.decode()
    if model == "organization":
        assert "Cascade (cheapest first" in response.content.decode()


@pytest.mark.parametrize("model", ["organization", "apikey"])
def test_the_admin_change_form_edits_the_policy(
    model: str, staff: Client, organization: Organization, our_key: APIKey
) -> None:
    obj = organization if model == "organization" else our_key

    response = staff.get(reverse(f"admin:accounts_{model}_change", args=[obj.pk]))

    assert response.status_code == 200
    assert response.context is not None
    assert set(DEFAULT_POLICY) <= set(response.context["adminform"].form.fields)
    assert 'name="allowed_providers"' in response.content.decode()
    if model == "apikey":
        assert "digest" not in response.context["adminform"].form.fields
        assert "name" not in response.context["adminform"].form.fields


def test_the_admin_saves_an_organizations_policy_through_the_service(
    staff: Client, organization: Organization, catalog: None
) -> None:
    url = reverse("admin:accounts_organization_change", args=[organization.pk])
    data = change_form_data(staff.get(url))
    data.update(
        name="Renamed",
        allowed_providers=json.dumps(["fake", "openai"]),
        routing_strategy="semantic",
        routing_preference="speed",
    )

    response = staff.post(url, data)

    assert response.status_code == 302, response.content.decode()[:2000]
    assert policy_of(organization) == {
        **DEFAULT_POLICY,
        "allowed_providers": ["fake", "openai"],
        "routing_strategy": "semantic",
        "routing_preference": "speed",
    }
    assert organization.name == "Renamed"
    event = AuditEvent.objects.get(action="organization.routing_policy_updated")
    assert event.actor is not None
    assert event.actor.email == "staff@example.com"
    assert set(event.metadata["changes"]) == {"allowed_providers", "routing_strategy", "routing_preference"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("allowed_providers", json.dumps(["no-such-provider"]), "unknown provider(s): no-such-provider."),
        ("allowed_models", json.dumps("fake-small"), "Enter a JSON list of names"),
        ("allowed_models", json.dumps([1, 2]), "Enter a JSON list of names"),
    ],
)
def test_the_admin_refuses_a_bad_organization_policy(
    field: str, value: str, message: str, staff: Client, organization: Organization, catalog: None
) -> None:
    url = reverse("admin:accounts_organization_change", args=[organization.pk])
    data = {**change_form_data(staff.get(url)), field: value}

    response = staff.post(url, data)

    assert response.status_code == 200
    assert response.context is not None
    assert message in " ".join(response.context["adminform"].form.errors[field])
    assert policy_of(organization) == DEFAULT_POLICY
    assert not AuditEvent.objects.filter(action="organization.routing_policy_updated").exists()


def test_the_admin_saves_a_keys_policy_through_the_service(
    staff: Client, organization: Organization, our_key: APIKey
) -> None:
    url = reverse("admin:accounts_apikey_change", args=[our_key.pk])
    data = {**change_form_data(staff.get(url)), "allowed_models": json.dumps(["fake-small"])}
    data["routing_preference"] = "quality"

    response = staff.post(url, data)

    assert response.status_code == 302, response.content.decode()[:2000]
    assert policy_of(our_key) == {
        "allowed_models": ["fake-small"],
        "allowed_providers": [],
        "routing_strategy": "",
        "routing_preference": "quality",
    }
    event = AuditEvent.objects.get(action="api_key.updated")
    assert event.target_id == str(our_key.pk)


def test_the_admin_refuses_a_key_policy_wider_than_the_organizations(
    staff: Client, organization: Organization, our_key: APIKey
) -> None:
    set_org_policy(organization, allowed_providers=["fake"])
    url = reverse("admin:accounts_apikey_change", args=[our_key.pk])
    data = {**change_form_data(staff.get(url)), "allowed_providers": json.dumps(["openai"])}

    response = staff.post(url, data)

    assert response.status_code == 200
    assert response.context is not None
    assert "not allowed by the organization: openai." in response.context["adminform"].form.errors["allowed_providers"]
    assert policy_of(our_key)["allowed_providers"] == []


def test_the_admin_still_cannot_add_or_delete_keys(staff: Client, our_key: APIKey) -> None:
    assert staff.get(reverse("admin:accounts_apikey_add")).status_code == 403
    assert staff.get(reverse("admin:accounts_apikey_delete", args=[our_key.pk])).status_code == 403


def test_other_organizations_are_untouched(
    client: APIClient, organization: Organization, owner: User, their_org: Organization, catalog: None
) -> None:
    other = OrganizationFactory.create()

    as_user(client, owner).patch(policy_url(organization), {"routing_strategy": "cascade"}, format="json")

    assert policy_of(their_org) == DEFAULT_POLICY
    assert policy_of(other) == DEFAULT_POLICY


def test_the_admin_sets_a_keys_and_an_organizations_rate_limits(
    staff: Client, organization: Organization, our_key: APIKey
) -> None:
    key_url = reverse("admin:accounts_apikey_change", args=[our_key.pk])
    org_url = reverse("admin:accounts_organization_change", args=[organization.pk])

    key_reply = staff.post(key_url, {**change_form_data(staff.get(key_url)), "rpm_limit": "60", "tpm_limit": ""})
    org_reply = staff.post(org_url, {**change_form_data(staff.get(org_url)), "tpm_limit": "90000"})

    assert (key_reply.status_code, org_reply.status_code) == (302, 302)
    our_key.refresh_from_db()
    organization.refresh_from_db()
    assert (our_key.rpm_limit, our_key.tpm_limit) == (60, None)
    assert (organization.rpm_limit, organization.tpm_limit) == (None, 90_000)
