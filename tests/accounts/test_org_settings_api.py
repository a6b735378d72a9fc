"""Organization settings on PATCH /api/orgs/<org>/, and the webhook secret's own endpoint."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.auth import authenticate_sync, forget_cached_keys
from accounts.models import Organization, Role, User
from accounts.permissions import Perm, role_can
from audit.models import AuditEvent
from routing.pii import PIIAction, PIIEntity
from tests.factories import issue_key

from .helpers import as_key, as_user, assert_openai_error, audit_text, key_with_scopes, user_with_role

pytestmark = pytest.mark.django_db

SETTINGS = {
    "name": "Acme Labs",
    "timezone": "Europe/Paris",
    "alert_email": "finance@acme.example",
    "webhook_url": "https://hooks.example.com/services/T000/B000/XXXXsecretpath",
    "max_output_tokens_cap": 4096,
    "pii_policy": {"email": "mask", "credit_card": "block"},
    "rpm_limit": 600,
    "tpm_limit": 1_000_000,
}


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def url(organization: Organization) -> str:
    return reverse("org-detail", args=[organization.slug])


def secret_url(organization: Organization) -> str:
    return reverse("org-webhook-secret", args=[organization.slug])


def fresh(organization: Organization) -> Organization:
    return Organization.objects.get(pk=organization.pk)


def test_the_owner_changes_every_setting(client: APIClient, organization: Organization, owner: User) -> None:
    response = as_user(client, owner).patch(url(organization), SETTINGS, format="json")

    assert response.status_code == 200, response.content
    row = fresh(organization)
    assert {field: getattr(row, field) for field in SETTINGS} == {
        **SETTINGS,
        "pii_policy": {"default": "off", "email": "mask", "credit_card": "block"},
    }
    body = response.json()
    assert (body["name"], body["timezone"], body["rpm_limit"], body["role"]) == (
        "Acme Labs",
        "Europe/Paris",
        600,
        "owner",
    )
    assert body["slug"] == organization.slug


def test_a_settings_change_is_audited_without_the_address_or_the_webhook_path(
    client: APIClient, organization: Organization, owner: User
) -> None:
    as_user(client, owner).patch(url(organization), SETTINGS, format="json")

    event = AuditEvent.objects.get(action="organization.updated")
    assert (event.actor_id, event.target_type, event.target_id) == (owner.pk, "organization", str(organization.pk))
    assert event.after is not None
    assert event.before is not None
    assert set(event.after) == set(SETTINGS)
    assert event.before["timezone"] == "UTC"
    assert event.after["timezone"] == "Europe/Paris"
    assert event.after["alert_email"] == "***@acme.example"
    assert event.after["webhook_url"] == "https://hooks.example.com/…"
    text = audit_text()
    assert "finance@" not in text
    assert "secretpath" not in text


def test_only_changed_settings_are_audited(client: APIClient, organization: Organization, owner: User) -> None:
    as_user(client, owner).patch(url(organization), {"timezone": "UTC", "rpm_limit": 10}, format="json")

    event = AuditEvent.objects.get(action="organization.updated")
    assert (event.before, event.after) == ({"rpm_limit": None}, {"rpm_limit": 10})


def test_a_patch_that_changes_nothing_writes_no_audit_event(
    client: APIClient, organization: Organization, owner: User
) -> None:
    response = as_user(client, owner).patch(url(organization), {"timezone": "UTC"}, format="json")

    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="organization.updated").exists()


@pytest.mark.parametrize("role", list(Role))
def test_changing_settings_follows_the_matrix(role: str, client: APIClient, organization: Organization) -> None:
    response = as_user(client, user_with_role(organization, role)).patch(
        url(organization), {"timezone": "Asia/Tokyo"}, format="json"
    )

    if role_can(role, Perm.ORG_UPDATE):
        assert response.status_code == 200
        assert fresh(organization).timezone == "Asia/Tokyo"
    else:
        assert_openai_error(response, 403, code="permission_denied")
        assert fresh(organization).timezone == "UTC"


def test_the_outsider_gets_404(client: APIClient, organization: Organization, outsider: User) -> None:
    response = as_user(client, outsider).patch(url(organization), {"name": "Pwned"}, format="json")

    assert_openai_error(response, 404, code="not_found")
    assert fresh(organization).name != "Pwned"


def test_an_admin_key_changes_settings_and_a_read_key_cannot(client: APIClient, organization: Organization) -> None:
    read = APIClient()
    refused = as_key(read, key_with_scopes(organization, "read")).patch(
        url(organization), {"rpm_limit": 1}, format="json"
    )
    changed = as_key(client, key_with_scopes(organization, "admin")).patch(
        url(organization), {"rpm_limit": 2}, format="json"
    )

    assert_openai_error(refused, 403, code="permission_denied")
    assert changed.status_code == 200
    assert fresh(organization).rpm_limit == 2
    assert AuditEvent.objects.get(action="organization.updated").actor_id is None


BAD_SETTINGS: dict[str, tuple[dict[str, Any], str, str]] = {
    # case: (body, param, a phrase the message must hold)
    "unknown time zone": ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
    "a path for a time zone": ({"timezone": "../../etc/passwd"}, "timezone", "IANA"),
    "the machine's local zone": ({"timezone": "localtime"}, "timezone", "IANA"),
    "unknown PII entity": ({"pii_policy": {"shoe_size": "mask"}}, "pii_policy", "Unknown PII policy key"),
    "unknown PII action": ({"pii_policy": {"email": "shred"}}, "pii_policy", "shred"),
    "PII policy not an object": ({"pii_policy": ["mask"]}, "pii_policy", "object"),
    "not an email": ({"alert_email": "finance"}, "alert_email", "email"),
    "ftp webhook": ({"webhook_url": "ftp://files.example.com/x"}, "webhook_url", "http"),
    "not a URL": ({"webhook_url": "hooks"}, "webhook_url", "URL"),
    "zero cap": ({"max_output_tokens_cap": 0}, "max_output_tokens_cap", ""),
    "zero rpm": ({"rpm_limit": 0}, "rpm_limit", ""),
    "blank name": ({"name": ""}, "name", ""),
    "the slug": ({"slug": "new-slug"}, "slug", "not an organization setting"),
    "the webhook secret": ({"webhook_secret": "mine"}, "webhook_secret", "not an organization setting"),
    "a routing policy field": ({"routing_strategy": "cascade"}, "routing_strategy", "own"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_setting_is_a_400_and_changes_nothing(
    case: str, client: APIClient, organization: Organization, owner: User
) -> None:
    body, param, phrase = BAD_SETTINGS[case]
    before = fresh(organization)

    response = as_user(client, owner).patch(
        url(organization), {**body, "name": "Changed"} if param != "name" else body, format="json"
    )

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert phrase in response.json()["error"]["message"]
    after = fresh(organization)
    assert (after.name, after.slug, after.timezone, after.pii_policy, after.webhook_secret) == (
        before.name,
        before.slug,
        before.timezone,
        before.pii_policy,
        before.webhook_secret,
    )
    assert not AuditEvent.objects.exists()


def test_the_new_policy_and_limits_reach_the_organizations_keys(
    client: APIClient, organization: Organization, owner: User
) -> None:
    secret = issue_key(organization, created_by=owner).secret

    as_user(client, owner).patch(
        url(organization), {"pii_policy": {"email": "block"}, "rpm_limit": 9, "tpm_limit": 99}, format="json"
    )
    forget_cached_keys()  # what MUXER_KEY_CACHE_SECONDS does on every process
    found = authenticate_sync(f"Bearer {secret}")

    assert found.pii_policy.action_for(PIIEntity.EMAIL) == PIIAction.BLOCK
    assert (found.rpm_limits[2], found.tpm_limits[2]) == (9, 99)


def test_limits_can_be_cleared(client: APIClient, organization: Organization, owner: User) -> None:
    Organization.objects.filter(pk=organization.pk).update(rpm_limit=5, max_output_tokens_cap=10)

    response = as_user(client, owner).patch(
        url(organization), {"rpm_limit": None, "max_output_tokens_cap": None}, format="json"
    )

    assert response.status_code == 200
    assert (fresh(organization).rpm_limit, fresh(organization).max_output_tokens_cap) == (None, None)


@pytest.mark.parametrize("role", list(Role))
def test_only_managers_see_the_whole_webhook_url(role: str, client: APIClient, organization: Organization) -> None:
    Organization.objects.filter(pk=organization.pk).update(webhook_url=SETTINGS["webhook_url"])

    response = as_user(client, user_with_role(organization, role)).get(url(organization))

    expected = SETTINGS["webhook_url"] if role_can(role, Perm.ORG_UPDATE) else "https://hooks.example.com/…"
    assert response.json()["webhook_url"] == expected
    if expected != SETTINGS["webhook_url"]:
        assert "secretpath" not in client.get(reverse("org-list")).content.decode()


# --- the webhook secret -------------------------------------------------------------------------


def test_the_webhook_secret_is_never_shown(client: APIClient, organization: Organization, owner: User) -> None:
    Organization.objects.filter(pk=organization.pk).update(webhook_secret="whsec_existing-secret")

    for response in (
        as_user(client, owner).get(url(organization)),
        client.patch(url(organization), {"name": "Renamed"}, format="json"),
        client.get(reverse("org-list")),
    ):
        assert response.status_code == 200
        assert "whsec_existing-secret" not in response.content.decode()
    assert client.get(url(organization)).json()["webhook_secret_set"] is True


def test_rotating_the_webhook_secret_returns_it_once(
    client: APIClient, organization: Organization, owner: User
) -> None:
    Organization.objects.filter(pk=organization.pk).update(webhook_secret="whsec_old")

    response = as_user(client, owner).post(secret_url(organization))

    assert response.status_code == 201
    secret = response.json()["webhook_secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 40
    assert fresh(organization).webhook_secret == secret
    assert secret not in client.get(url(organization)).content.decode()
    event = AuditEvent.objects.get(action="organization.webhook_secret_rotated")
    assert (event.before, event.after, event.actor_id) == (
        {"webhook_secret_set": True},
        {"webhook_secret_set": True},
        owner.pk,
    )
    assert secret not in audit_text()
    assert "whsec_old" not in audit_text()


def test_each_rotation_makes_a_new_secret(client: APIClient, organization: Organization, owner: User) -> None:
    first = as_user(client, owner).post(secret_url(organization)).json()["webhook_secret"]
    second = client.post(secret_url(organization)).json()["webhook_secret"]

    assert first != second
    assert fresh(organization).webhook_secret == second


@pytest.mark.parametrize("role", list(Role))
def test_rotating_the_webhook_secret_follows_the_matrix(
    role: str, client: APIClient, organization: Organization
) -> None:
    response = as_user(client, user_with_role(organization, role)).post(secret_url(organization))

    if role_can(role, Perm.ORG_UPDATE):
        assert response.status_code == 201
        assert fresh(organization).webhook_secret == response.json()["webhook_secret"]
    else:
        assert_openai_error(response, 403, code="permission_denied")
        assert fresh(organization).webhook_secret == ""


def test_the_outsider_cannot_rotate_our_webhook_secret(
    client: APIClient, organization: Organization, outsider: User
) -> None:
    response = as_user(client, outsider).post(secret_url(organization))

    assert_openai_error(response, 404, code="not_found")
    assert fresh(organization).webhook_secret == ""
