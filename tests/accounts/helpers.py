"""Shared helpers for the management API tests: callers by role, and the OpenAI error shape."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rest_framework.test import APIClient

from accounts.models import APIKey, Organization, User
from audit.models import AuditEvent
from tests.factories import MembershipFactory, UserFactory, issue_key

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response


def as_user(client: APIClient, user: User) -> APIClient:
    client.force_authenticate(user)
    return client


def as_key(client: APIClient, secret: str) -> APIClient:
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def user_with_role(organization: Organization, role: str) -> User:
    return MembershipFactory.create(organization=organization, role=role, user=UserFactory.create()).user


def key_with_scopes(organization: Organization, *scopes: str, created_by: User | None = None) -> str:
    return issue_key(organization, created_by=created_by, name=f"{'+'.join(scopes)} key", scopes=scopes).secret


def assert_openai_error(response: Response, status: int, *, code: str | None, param: str | None = None) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    assert body["error"]["message"]


def audit_text() -> str:
    """Every audit row, as one string: for checking that no secret or email address got in."""
    rows = AuditEvent.objects.values("action", "target_id", "metadata", "before", "after")
    return json.dumps(list(rows), default=str)


def key_row(api_key: APIKey) -> APIKey:
    return APIKey.objects.get(pk=api_key.pk)
