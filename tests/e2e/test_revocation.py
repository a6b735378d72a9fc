"""Revoking a key reaches a running server within its key-cache window."""

from __future__ import annotations

import time

import httpx
import pytest

from accounts import services
from accounts.models import APIKey, Organization, User
from tests.conftest import Gateway
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
