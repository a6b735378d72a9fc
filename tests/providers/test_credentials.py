"""Organizations' own provider keys (BYOK): encrypted at rest, masked, tenant-scoped, used on the hot path."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from accounts.models import Organization, Role, User
from audit.models import AuditEvent
from providers import crypto
from providers.credentials import forget_organization_keys
from providers.models import Provider, ProviderCredential
from providers.services import provider_credential_set, provider_credentials_rotate
from tests.conftest import FakeUpstream, Tenant
from tests.factories import MembershipFactory, issue_key
from tests.routing.harness import chat, in_thread, post, upstream_stats, usage_rows

SECRET = "sk-org-own-key-0123456789abcd"


def url(org: str, provider: str | None = None) -> str:
    return f"/api/orgs/{org}/credentials/" + (f"{provider}/" if provider else "")


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def openai_provider(catalog: None) -> Provider:
    return Provider.objects.get(slug="openai")


@pytest.fixture
def stored(tenant: Tenant, openai_provider: Provider) -> ProviderCredential:
    return provider_credential_set(
        organization=tenant.organization, provider=openai_provider, api_key=SECRET, actor=tenant.owner
    )


# --- storage -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_key_is_stored_encrypted(stored: ProviderCredential) -> None:
    row = ProviderCredential.objects.get(pk=stored.pk)
    assert SECRET not in row.encrypted_key
    assert crypto.decrypt(row.encrypted_key) == SECRET
    assert row.masked == "****abcd"


@pytest.mark.django_db
def test_no_audit_row_contains_the_key(stored: ProviderCredential) -> None:
    events = list(AuditEvent.objects.filter(target_type="provider_credential"))
    assert [e.action for e in events] == ["provider_credential.set"]
    assert events[0].metadata == {"provider": "openai", "key": "****abcd"}
    assert all(SECRET not in str(e.metadata) for e in AuditEvent.objects.all())


@pytest.mark.django_db
def test_rotation_re_encrypts_with_the_newest_key(
    tenant: Tenant, openai_provider: Provider, settings: SettingsWrapper
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MUXER_FERNET_KEYS = [old]
    stored = provider_credential_set(
        organization=tenant.organization, provider=openai_provider, api_key=SECRET, actor=None
    )
    settings.MUXER_FERNET_KEYS = [new, old]

    assert provider_credentials_rotate() == 1

    settings.MUXER_FERNET_KEYS = [new]
    assert crypto.decrypt(ProviderCredential.objects.get(pk=stored.pk).encrypted_key) == SECRET
    settings.MUXER_FERNET_KEYS = [old]
    with pytest.raises(InvalidToken):
        crypto.decrypt(ProviderCredential.objects.get(pk=stored.pk).encrypted_key)


# --- API -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_owner_sets_a_key_and_sees_it_masked(tenant: Tenant, openai_provider: Provider) -> None:
    client = client_for(tenant.owner)

    response = client.put(url(tenant.organization.slug, "openai"), {"api_key": SECRET}, format="json")

    assert response.status_code == 200
    assert response.json()["key"] == "****abcd"
    listing = client.get(url(tenant.organization.slug))
    assert [(c["provider"], c["key"]) for c in listing.json()["data"]] == [("openai", "****abcd")]
    assert SECRET not in response.content.decode() + listing.content.decode()


@pytest.mark.django_db
def test_replacing_a_key_keeps_one_row(tenant: Tenant, stored: ProviderCredential) -> None:
    client = client_for(tenant.owner)
    client.put(url(tenant.organization.slug, "openai"), {"api_key": "sk-another-key-9999"}, format="json")

    assert ProviderCredential.objects.filter(organization=tenant.organization).count() == 1
    assert crypto.decrypt(ProviderCredential.objects.get().encrypted_key) == "sk-another-key-9999"


@pytest.mark.django_db
def test_a_member_can_neither_see_nor_set_provider_keys(tenant: Tenant, stored: ProviderCredential) -> None:
    client = client_for(tenant.member)
    slug = tenant.organization.slug

    assert client.get(url(slug)).status_code == 403
    assert client.get(url(slug, "openai")).status_code == 403
    assert client.put(url(slug, "openai"), {"api_key": SECRET}, format="json").status_code == 403
    assert client.delete(url(slug, "openai")).status_code == 403
    assert ProviderCredential.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_an_outsider_gets_404(tenant: Tenant, stored: ProviderCredential, outsider: User, method: str) -> None:
    client = client_for(outsider)

    body = {"api_key": SECRET} if method == "put" else None  # a GET's data would travel in the query string
    response = getattr(client, method)(url(tenant.organization.slug, "openai"), body, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert ProviderCredential.objects.count() == 1


@pytest.mark.django_db
def test_an_outsider_cannot_reach_our_key_through_their_own_org(
    tenant: Tenant, stored: ProviderCredential, outsider: User
) -> None:
    their_org = Organization.objects.get(memberships__user=outsider)

    response = client_for(outsider).get(url(their_org.slug, "openai"))

    assert response.status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("provider", ["nope", "fake"])
def test_unknown_providers_are_404(tenant: Tenant, catalog: None, provider: str) -> None:
    response = client_for(tenant.owner).put(url(tenant.organization.slug, provider), {"api_key": SECRET}, format="json")

    assert response.status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "api_key"), ({"api_key": "short"}, "api_key"), ({"api_key": ["x" * 20]}, "api_key")],
)
def test_bad_input_is_a_400_with_nothing_written(
    tenant: Tenant, openai_provider: Provider, body: dict[str, Any], param: str
) -> None:
    response = client_for(tenant.owner).put(url(tenant.organization.slug, "openai"), body, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert ProviderCredential.objects.count() == 0
    assert not AuditEvent.objects.filter(target_type="provider_credential").exists()


@pytest.mark.django_db
def test_deleting_a_key(tenant: Tenant, stored: ProviderCredential) -> None:
    client = client_for(tenant.owner)

    assert client.delete(url(tenant.organization.slug, "openai")).status_code == 204
    assert client.get(url(tenant.organization.slug, "openai")).status_code == 404
    assert AuditEvent.objects.filter(action="provider_credential.deleted").count() == 1


# --- the hot path ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_proxy_calls_the_provider_with_the_organizations_own_key(
    api_key: str, upstream: FakeUpstream, stored: ProviderCredential
) -> None:
    reply = await post(chat("hi", model="gpt-4o-mini"), key=api_key)

    assert reply.status == 200, reply.body
    sent = (await upstream_stats(upstream))["last_request"]
    assert sent["credential_sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()


@pytest.mark.django_db(transaction=True)
async def test_other_organizations_still_use_the_platform_key(
    upstream: FakeUpstream, stored: ProviderCredential, outsider: User
) -> None:
    their_org = await in_thread(Organization.objects.get, memberships__user=outsider)
    their_key = (await in_thread(issue_key, their_org, created_by=outsider)).secret

    reply = await post(chat("hi", model="gpt-4o-mini"), key=their_key)

    assert reply.status == 200
    sent = (await upstream_stats(upstream))["last_request"]
    assert sent["credential_sha256"] == hashlib.sha256(b"test-openai-key").hexdigest()


@pytest.mark.django_db
def test_byok_makes_a_provider_without_a_platform_key_available_to_that_organization_only(
    tenant: Tenant, stored: ProviderCredential, outsider: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    forget_organization_keys()
    ours = issue_key(tenant.organization, created_by=tenant.owner).secret
    their_org = Organization.objects.get(memberships__user=outsider)
    MembershipFactory.create(organization=their_org, role=Role.MEMBER)
    theirs = issue_key(their_org, created_by=outsider).secret

    def models(key: str) -> list[str]:
        response = APIClient().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}")
        return [m["id"] for m in response.json()["data"]]

    assert "gpt-4o-mini" in models(ours)
    assert "gpt-4o-mini" not in models(theirs)


@pytest.mark.django_db(transaction=True)
async def test_the_key_never_reaches_logs_errors_or_usage_rows(
    api_key: str, upstream: FakeUpstream, stored: ProviderCredential, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")

    refused = await post(chat("[fake status=401] hi", model="gpt-4o-mini"), key=api_key)

    assert refused.status == 502
    assert SECRET not in refused.body.decode()
    assert SECRET not in caplog.text
    rows = await usage_rows()
    assert rows
    assert all(SECRET not in str(vars(row)) for row in rows)
