"""Console: the API keys pages (console/views/keys.py)."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import APIKey, Organization, User
from tests.factories import issue_key

pytestmark = pytest.mark.django_db

SECRET = re.compile(r'<code id="new-key-secret">([^<]+)</code>')


def keys_url(organization: Organization) -> str:
    return reverse("console-keys", args=[organization.slug])


def detail_url(organization: Organization, key: APIKey) -> str:
    return reverse("console-key-detail", args=[organization.slug, key.pk])


def revoke_url(organization: Organization, key: APIKey) -> str:
    return reverse("console-key-revoke", args=[organization.slug, key.pk])


def rotate_url(organization: Organization, key: APIKey) -> str:
    return reverse("console-key-rotate", args=[organization.slug, key.pk])


def page(response: object) -> str:
    return html.unescape(response.content.decode())  # type: ignore[attr-defined]


def test_it_lists_keys_by_prefix_without_secrets(owner_client: Client, organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner, name="ci bot", rpm_limit=60)
    response = owner_client.get(keys_url(organization))
    assert response.status_code == 200
    body = page(response)
    assert f'data-key-id="{issued.api_key.pk}"' in body
    assert issued.api_key.prefix in body
    assert "ci bot" in body
    assert issued.secret not in body
    assert 'id="key-create-form"' in body


def test_creating_a_key_shows_its_secret_once(owner_client: Client, organization: Organization, catalog: None) -> None:
    response = owner_client.post(
        keys_url(organization), {"name": "deploy", "scopes": ["proxy", "read"], "rpm_limit": "30"}
    )
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    found = SECRET.search(response.content.decode())
    assert found is not None
    secret = found.group(1)
    key = APIKey.objects.get(organization=organization, name="deploy")
    assert secret.startswith(key.prefix)
    assert sorted(key.scopes) == ["proxy", "read"]
    assert key.rpm_limit == 30
    assert 'data-copy="#new-key-secret"' in response.content.decode()
    assert secret not in page(owner_client.get(keys_url(organization)))
    assert secret not in page(owner_client.get(detail_url(organization, key)))
    assert secret not in str(dict(owner_client.session))


def test_creating_a_key_with_models_and_expiry(owner_client: Client, organization: Organization, catalog: None) -> None:
    day = (timezone.now() + timedelta(days=10)).date()
    response = owner_client.post(
        keys_url(organization),
        {"name": "scoped", "scopes": ["proxy"], "allowed_models": ["fake-small"], "expires_at": day.isoformat()},
    )
    assert response.status_code == 201
    key = APIKey.objects.get(name="scoped")
    assert key.allowed_models == ["fake-small"]
    assert key.expires_at is not None
    assert key.expires_at.date() == day


def test_a_bad_key_form_rerenders_with_400(owner_client: Client, organization: Organization) -> None:
    response = owner_client.post(keys_url(organization), {"name": "", "scopes": ["proxy"], "rpm_limit": "0"})
    assert response.status_code == 400
    body = page(response)
    assert "This field is required." in body
    assert "Ensure this value is greater than or equal to 1." in body
    assert not APIKey.objects.filter(organization=organization).exists()


def test_an_api_refusal_shows_the_apis_message(owner_client: Client, organization: Organization) -> None:
    yesterday = (timezone.now() - timedelta(days=1)).date()
    response = owner_client.post(
        keys_url(organization), {"name": "late", "scopes": ["proxy"], "expires_at": yesterday.isoformat()}
    )
    assert response.status_code == 400
    assert "must be in the future." in page(response)
    assert not APIKey.objects.filter(name="late").exists()


def test_members_are_offered_only_the_scopes_they_may_grant(member_client: Client, organization: Organization) -> None:
    body = page(member_client.get(keys_url(organization)))
    assert 'value="proxy"' in body
    assert 'value="read"' in body
    assert 'value="admin"' not in body
    response = member_client.post(keys_url(organization), {"name": "sneaky", "scopes": ["admin"]})
    assert response.status_code == 400
    assert not APIKey.objects.filter(name="sneaky").exists()


def test_viewers_see_keys_but_no_controls(viewer_client: Client, organization: Organization, owner: User) -> None:
    key = issue_key(organization, created_by=owner).api_key
    body = page(viewer_client.get(keys_url(organization)))
    assert f'data-key-id="{key.pk}"' in body
    assert 'id="key-create-form"' not in body
    assert f'data-testid="revoke-{key.pk}"' not in body
    detail = page(viewer_client.get(detail_url(organization, key)))
    assert 'id="key-edit-form"' not in detail
    assert 'id="key-rotate-form"' not in detail


def test_viewers_get_403_on_every_write(viewer_client: Client, organization: Organization, owner: User) -> None:
    key = issue_key(organization, created_by=owner).api_key
    assert viewer_client.post(keys_url(organization), {"name": "x", "scopes": ["proxy"]}).status_code == 403
    assert viewer_client.post(revoke_url(organization, key)).status_code == 403
    assert viewer_client.post(rotate_url(organization, key), {"grace_seconds": "0"}).status_code == 403
    assert viewer_client.post(detail_url(organization, key), {"name": "renamed"}).status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None
    assert key.name == "test key"


def test_outsiders_get_404(outsider_client: Client, organization: Organization, owner: User) -> None:
    key = issue_key(organization, created_by=owner).api_key
    assert outsider_client.get(keys_url(organization)).status_code == 404
    assert outsider_client.post(keys_url(organization), {"name": "x", "scopes": ["proxy"]}).status_code == 404
    assert outsider_client.get(detail_url(organization, key)).status_code == 404
    assert outsider_client.post(revoke_url(organization, key)).status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def test_another_organizations_key_is_404(owner_client: Client, organization: Organization, outsider: User) -> None:
    foreign = issue_key(outsider.memberships.get().organization, created_by=outsider).api_key
    assert owner_client.get(detail_url(organization, foreign)).status_code == 404
    assert owner_client.post(revoke_url(organization, foreign)).status_code == 404
    foreign.refresh_from_db()
    assert foreign.revoked_at is None


def test_revoking_a_key_shows_it_revoked(owner_client: Client, organization: Organization, owner: User) -> None:
    key = issue_key(organization, created_by=owner).api_key
    response = owner_client.post(revoke_url(organization, key), follow=True)
    assert response.redirect_chain[-1][0] == keys_url(organization)
    key.refresh_from_db()
    assert key.revoked_at is not None
    body = page(response)
    assert "revoked." in body
    row = body.split(f'data-key-id="{key.pk}"', 1)[1].split("</tr>", 1)[0]
    assert 'data-status="revoked"' in row
    assert f'data-testid="revoke-{key.pk}"' not in row


def test_members_manage_only_their_own_keys(
    member_client: Client, organization: Organization, owner: User, member: User
) -> None:
    theirs = issue_key(organization, created_by=owner, name="owner key").api_key
    mine = issue_key(organization, created_by=member, name="member key").api_key
    body = page(member_client.get(keys_url(organization)))
    assert f'data-testid="revoke-{mine.pk}"' in body
    assert f'data-testid="revoke-{theirs.pk}"' not in body
    assert 'id="key-edit-form"' not in page(member_client.get(detail_url(organization, theirs)))
    response = member_client.post(revoke_url(organization, theirs))
    assert response.status_code == 403
    assert "can only change the API keys you created" in page(response)
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert member_client.post(revoke_url(organization, mine)).status_code == 302
    mine.refresh_from_db()
    assert mine.revoked_at is not None


def test_editing_a_key_changes_its_limits_and_models(
    owner_client: Client, organization: Organization, owner: User, catalog: None
) -> None:
    key = issue_key(organization, created_by=owner, name="edit me").api_key
    response = owner_client.post(
        detail_url(organization, key),
        {"name": "edited", "rpm_limit": "120", "tpm_limit": "", "allowed_models": ["fake-small", "fake-medium"]},
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.name == "edited"
    assert key.rpm_limit == 120
    assert sorted(key.allowed_models) == ["fake-medium", "fake-small"]


def test_a_bad_edit_rerenders_with_400(owner_client: Client, organization: Organization, owner: User) -> None:
    key = issue_key(organization, created_by=owner, name="keep").api_key
    response = owner_client.post(detail_url(organization, key), {"name": "keep", "rpm_limit": "lots"})
    assert response.status_code == 400
    assert "Enter a whole number." in page(response)
    key.refresh_from_db()
    assert key.rpm_limit is None


def test_rotating_shows_the_new_secret_once(owner_client: Client, organization: Organization, owner: User) -> None:
    old = issue_key(organization, created_by=owner, name="rotating")
    response = owner_client.post(rotate_url(organization, old.api_key), {"grace_seconds": "60"})
    assert response.status_code == 201
    found = SECRET.search(response.content.decode())
    assert found is not None
    successor = APIKey.objects.get(rotated_from=old.api_key)
    assert found.group(1).startswith(successor.prefix)
    old.api_key.refresh_from_db()
    assert old.api_key.expires_at is not None
    assert old.api_key.expires_at <= timezone.now() + timedelta(seconds=61)
    listing = page(owner_client.get(keys_url(organization)))
    assert found.group(1) not in listing
    row = listing.split(f'data-key-id="{old.api_key.pk}"', 1)[1].split("</tr>", 1)[0]
    assert 'data-status="expiring after rotation"' in row


def test_rotating_twice_shows_the_apis_refusal(owner_client: Client, organization: Organization, owner: User) -> None:
    old = issue_key(organization, created_by=owner).api_key
    assert owner_client.post(rotate_url(organization, old), {"grace_seconds": "60"}).status_code == 201
    response = owner_client.post(rotate_url(organization, old), {"grace_seconds": "60"})
    assert response.status_code == 400
    assert "already been rotated" in page(response)


def test_the_rotate_form_defaults_to_the_configured_grace(
    owner_client: Client, organization: Organization, owner: User, settings: object
) -> None:
    settings.MUXER_KEY_ROTATION_GRACE_SECONDS = 1234  # type: ignore[attr-defined]
    key = issue_key(organization, created_by=owner).api_key
    body = page(owner_client.get(detail_url(organization, key)))
    form = body.split('id="key-rotate-form"', 1)[1].split("</form>", 1)[0]
    assert 'value="1234"' in form
