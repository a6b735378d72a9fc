"""Revoking a key reaches a running server within its key-cache window."""

from __future__ import annotations

import time

import httpx
import pytest
from rest_framework_simplejwt.tokens import AccessToken

from accounts import services
from accounts.models import APIKey, Organization, User
from tests.conftest import FakeUpstream, Gateway, gateway_processes
from tests.factories import issue_key

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"model": "fake-small", "messages": [{"role": "user", "content": "still there?"}]}


def test_revoked_key_stops_working_on_a_running_server(
    gateway: Gateway, organization: Organization, owner: User, catalog: None
) -> None:
    secret = issue_key(organization, created_by=owner).secret
    headers = {"authorization": f"Bearer {secret}"}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY, headers=headers).status_code == 200

    services.api_key_revoke(api_key=APIKey.objects.get(organization=organization), actor=owner)
    revoked_at = time.monotonic()
    while True:
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY, headers=headers)
        if response.status_code == 401 or time.monotonic() - revoked_at > 5:
            break
        time.sleep(0.05)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["message"] == "This API key has been revoked."
    assert secret not in response.text
    # The gateway under test caches keys for 0.5 s; allow for scheduling noise.
    assert time.monotonic() - revoked_at < 3


@pytest.mark.redis
@pytest.mark.postgres
def test_a_key_revoked_through_one_instance_is_refused_by_the_other_within_5_s(
    fake_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    organization: Organization,
    owner: User,
    catalog: None,
) -> None:
    """Two instances with the production key cache (MUXER_KEY_CACHE_SECONDS=2); the owner revokes through A's
    management API with a JWT; B refuses the key within 5 s, with no signal between the instances."""
    secret = issue_key(organization, created_by=owner).secret
    api_key = APIKey.objects.get(organization=organization)
    keyed = {"authorization": f"Bearer {secret}"}
    with gateway_processes(2, fake_upstream, tmp_path_factory, MUXER_KEY_CACHE_SECONDS="2") as (a, b):
        # Both instances have the key in their cache before the revocation.
        assert httpx.post(f"{a}/v1/chat/completions", json=BODY, headers=keyed).status_code == 200
        assert httpx.post(f"{b}/v1/chat/completions", json=BODY, headers=keyed).status_code == 200
        token = str(AccessToken.for_user(owner))  # signed with the SECRET_KEY the instances share

        revoked = httpx.post(
            f"{a}/api/orgs/{organization.slug}/keys/{api_key.pk}/revoke/", headers={"authorization": f"Bearer {token}"}
        )
        revoked_at = time.monotonic()
        assert revoked.status_code == 200, revoked.text
        while True:
            response = httpx.post(f"{b}/v1/chat/completions", json=BODY, headers=keyed)
            if response.status_code == 401 or time.monotonic() - revoked_at > 6:
                break
            time.sleep(0.05)
        took = time.monotonic() - revoked_at

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This API key has been revoked."
    assert took < 5
