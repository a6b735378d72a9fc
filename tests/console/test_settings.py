"""Console: organization settings, PII policy and provider keys (console/views/settings.py)."""

from __future__ import annotations

import html
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Organization, Role
from providers.models import Provider, ProviderCredential
from providers.services import provider_credential_set
from tests.console.conftest import signed_in, user_with_role

pytestmark = pytest.mark.django_db

PROVIDER_KEY = "sk-test-organization-own-key-9f3a7c21"


def settings_url(organization: Organization) -> str:
    return reverse("console-settings", args=[organization.slug])


def pii_url(organization: Organization) -> str:
    return reverse("console-settings-pii", args=[organization.slug])


def credential_url(organization: Organization, provider: str = "openai") -> str:
    return reverse("console-credential", args=[organization.slug, provider])


def page(response: Any) -> str:
    return html.unescape(response.content.decode())


def pii_body(**actions: str) -> dict[str, str]:
    return {"default": "off", **actions}


def test_an_owner_sees_every_form(owner_client: Client, organization: Organization, catalog: None) -> None:
    body = page(owner_client.get(settings_url(organization)))
    assert 'id="org-settings-form"' in body
    assert 'id="pii-form"' in body
    assert 'id="credential-form-openai"' in body
    assert 'id="credential-form-fake"' not in body
    assert reverse("org-export", args=[organization.slug]) in body


def test_saving_the_name_and_time_zone(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(settings_url(organization), {"name": "Renamed Inc", "timezone": "Europe/Paris"})
    assert response.status_code == 302
    organization.refresh_from_db()
    assert (organization.name, organization.timezone) == ("Renamed Inc", "Europe/Paris")


def test_an_unknown_time_zone_shows_the_apis_message(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(settings_url(organization), {"name": "Org", "timezone": "Mars/Olympus"})
    assert response.status_code == 400
    assert "'Mars/Olympus' is not an IANA time zone" in page(response)
    organization.refresh_from_db()
    assert organization.timezone == "UTC"


def test_a_blank_name_rerenders_with_400(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(settings_url(organization), {"name": "", "timezone": "UTC"})
    assert response.status_code == 400
    assert "This field is required." in page(response)


def test_saving_the_pii_policy(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(pii_url(organization), pii_body(default="log", email="mask", credit_card="block"))
    assert response.status_code == 302
    organization.refresh_from_db()
    assert organization.pii_policy == {"default": "log", "email": "mask", "credit_card": "block"}
    form = page(owner_client.get(settings_url(organization))).split('id="pii-form"', 1)[1]
    email = form.split('data-entity="email"', 1)[1].split("</div>", 1)[0]
    assert '<option value="mask" selected>' in email


def test_a_bad_pii_action_rerenders_with_400(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(pii_url(organization), pii_body(email="shred"))
    assert response.status_code == 400
    assert "Select a valid choice." in page(response)
    organization.refresh_from_db()
    assert organization.pii_policy == {}


def test_setting_a_provider_key_never_renders_it(
    owner_client: Client, organization: Organization, catalog: None
) -> None:
    response = owner_client.post(credential_url(organization), {"openai-api_key": PROVIDER_KEY}, follow=True)
    assert response.status_code == 200
    credential = ProviderCredential.objects.get(organization=organization, provider__slug="openai")
    assert credential.last_four == PROVIDER_KEY[-4:]
    body = page(response)
    assert PROVIDER_KEY not in body
    assert f"****{PROVIDER_KEY[-4:]}" in body
    assert PROVIDER_KEY not in page(owner_client.get(settings_url(organization)))


def test_a_short_provider_key_rerenders_with_400_without_echoing_it(
    owner_client: Client, organization: Organization, catalog: None
) -> None:
    response = owner_client.post(credential_url(organization), {"openai-api_key": "sk-1"})
    assert response.status_code == 400
    body = page(response)
    assert "Ensure this value has at least 8 characters" in body
    assert 'value="sk-1"' not in body
    assert not ProviderCredential.objects.exists()


def test_deleting_a_provider_key(owner_client: Client, organization: Organization, owner: Any, catalog: None) -> None:
    provider_credential_set(
        organization=organization, provider=Provider.objects.get(slug="openai"), api_key=PROVIDER_KEY, actor=owner
    )
    url = reverse("console-credential-delete", args=[organization.slug, "openai"])
    assert owner_client.post(url).status_code == 302
    assert not ProviderCredential.objects.exists()


def test_an_unknown_provider_is_404(owner_client: Client, organization: Organization, catalog: None) -> None:
    assert owner_client.post(credential_url(organization, "fake"), {"fake-api_key": PROVIDER_KEY}).status_code == 404
    assert owner_client.post(credential_url(organization, "nope"), {"nope-api_key": PROVIDER_KEY}).status_code == 404


def test_readers_see_values_without_forms_and_get_403(
    member_client: Client, organization: Organization, catalog: None
) -> None:
    organization.pii_policy = {"default": "off", "email": "mask"}
    organization.save(update_fields=["pii_policy"])
    body = page(member_client.get(settings_url(organization)))
    assert 'id="org-settings-form"' not in body
    assert 'id="pii-form"' not in body
    assert "credential-form-" not in body
    assert "org-export-link" not in body
    policy = body.split('id="pii-policy"', 1)[1].split("</table>", 1)[0]
    assert "<td>email</td><td>mask</td>" in policy
    assert member_client.post(settings_url(organization), {"name": "x", "timezone": "UTC"}).status_code == 403
    assert member_client.post(pii_url(organization), pii_body(default="block")).status_code == 403
    assert member_client.post(credential_url(organization), {"openai-api_key": PROVIDER_KEY}).status_code == 403
    organization.refresh_from_db()
    assert organization.name != "x"
    assert organization.pii_policy == {"default": "off", "email": "mask"}
    assert not ProviderCredential.objects.exists()


def test_admins_have_no_export_link(organization: Organization, catalog: None) -> None:
    body = page(signed_in(user_with_role(organization, Role.ADMIN)).get(settings_url(organization)))
    assert 'id="org-settings-form"' in body
    assert "org-export-link" not in body


def test_outsiders_get_404(outsider_client: Client, organization: Organization, catalog: None) -> None:
    assert outsider_client.get(settings_url(organization)).status_code == 404
    assert outsider_client.post(settings_url(organization), {"name": "x", "timezone": "UTC"}).status_code == 404
    assert outsider_client.post(pii_url(organization), pii_body()).status_code == 404
    assert outsider_client.post(credential_url(organization), {"openai-api_key": PROVIDER_KEY}).status_code == 404
    organization.refresh_from_db()
    assert organization.name != "x"
    assert not ProviderCredential.objects.exists()
