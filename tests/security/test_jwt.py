"""JWT sign-in: obtain, refresh with rotation, verify, and sign-out that blacklists the refresh token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import Organization, User
from audit.models import AuditEvent
from tests.conftest import Tenant

from .conftest import PASSWORD

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db


def obtain(client: APIClient, email: str, password: str = PASSWORD, **extra: Any) -> Response:
    return client.post(reverse("token-obtain"), {"email": email, "password": password}, format="json", **extra)


def refresh(client: APIClient, token: str) -> Response:
    return client.post(reverse("token-refresh"), {"refresh": token}, format="json")


def assert_error(response: Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "{" not in error["message"]  # a sentence, not simplejwt's nested dictionary
    if code is not None:
        assert error["code"] == code
    return dict(error)


def test_an_access_token_works_on_the_api(can_log_in: User, organization: Organization) -> None:
    client = APIClient()
    tokens = obtain(client, can_log_in.email).json()

    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    response = client.get(reverse("org-list"))

    assert response.status_code == 200
    assert [o["slug"] for o in response.json()["data"]] == [organization.slug]


def test_refreshing_rotates_the_refresh_token_and_the_old_one_is_refused(can_log_in: User) -> None:
    client = APIClient()
    first = obtain(client, can_log_in.email).json()["refresh"]

    rotated = refresh(client, first)
    assert rotated.status_code == 200
    second = rotated.json()["refresh"]
    assert second != first
    assert rotated.json()["access"]

    assert_error(refresh(client, first), 401, "invalid_api_key")
    assert refresh(client, second).status_code == 200


def test_logout_blacklists_the_refresh_token(can_log_in: User) -> None:
    client = APIClient()
    tokens = obtain(client, can_log_in.email).json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")

    response = client.post(reverse("token-logout"), {"refresh": tokens["refresh"]}, format="json")

    assert response.status_code == 204
    error = assert_error(refresh(APIClient(), tokens["refresh"]), 401, "invalid_api_key")
    assert "blacklisted" in error["message"]


def test_logout_needs_a_signed_in_caller(can_log_in: User) -> None:
    tokens = obtain(APIClient(), can_log_in.email).json()

    response = APIClient().post(reverse("token-logout"), {"refresh": tokens["refresh"]}, format="json")

    assert_error(response, 401, "invalid_api_key")
    assert refresh(APIClient(), tokens["refresh"]).status_code == 200


def test_logout_refuses_someone_elses_refresh_token(can_log_in: User, member_can_log_in: User) -> None:
    owner_tokens = obtain(APIClient(), can_log_in.email).json()
    member = APIClient()
    member.credentials(HTTP_AUTHORIZATION=f"Bearer {obtain(member, member_can_log_in.email).json()['access']}")

    response = member.post(reverse("token-logout"), {"refresh": owner_tokens["refresh"]}, format="json")

    assert_error(response, 403, "permission_denied")
    assert refresh(APIClient(), owner_tokens["refresh"]).status_code == 200


def test_logout_with_a_garbage_refresh_token_is_401(can_log_in: User) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {obtain(client, can_log_in.email).json()['access']}")

    assert_error(client.post(reverse("token-logout"), {"refresh": "nope"}, format="json"), 401)
    assert_error(client.post(reverse("token-logout"), {}, format="json"), 400, "invalid_request_error")


def test_verify_tells_a_valid_token_from_a_bad_one(can_log_in: User) -> None:
    client = APIClient()
    tokens = obtain(client, can_log_in.email).json()

    assert client.post(reverse("token-verify"), {"token": tokens["access"]}, format="json").status_code == 200
    assert_error(client.post(reverse("token-verify"), {"token": tokens["access"][:-4]}, format="json"), 401)


def test_a_garbage_bearer_token_gets_a_plain_401() -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not.a.jwt")

    error = assert_error(client.get(reverse("org-list")), 401, "invalid_api_key")

    assert error["message"] == "The access token is invalid or has expired."


def test_obtaining_a_token_is_recorded_as_a_sign_in(can_log_in: User) -> None:
    seen: list[Any] = []

    def receiver(sender: Any, user: User, request: Any, **kwargs: Any) -> None:
        seen.append((user.pk, request.path))

    user_logged_in.connect(receiver)
    try:
        assert obtain(APIClient(), can_log_in.email).status_code == 200
    finally:
        user_logged_in.disconnect(receiver)

    assert seen == [(can_log_in.pk, reverse("token-obtain"))]
    can_log_in.refresh_from_db()
    assert can_log_in.last_login is not None


def test_a_wrong_password_is_recorded_as_a_failed_sign_in_without_the_password(can_log_in: User) -> None:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, credentials: dict[str, Any], **kwargs: Any) -> None:
        seen.append(credentials)

    user_login_failed.connect(receiver)
    try:
        response = obtain(APIClient(), can_log_in.email, "wrong horse")
    finally:
        user_login_failed.disconnect(receiver)

    assert_error(response, 401, "invalid_api_key")
    assert len(seen) == 1
    assert seen[0]["email"] == can_log_in.email
    assert "wrong horse" not in str(seen[0])


def test_an_inactive_user_gets_no_token_and_cannot_refresh(can_log_in: User) -> None:
    tokens = obtain(APIClient(), can_log_in.email).json()
    User.objects.filter(pk=can_log_in.pk).update(is_active=False)

    assert_error(obtain(APIClient(), can_log_in.email), 401)
    assert_error(refresh(APIClient(), tokens["refresh"]), 401)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert_error(client.get(reverse("org-list")), 401)


def test_a_malformed_obtain_body_is_400(tenant: Tenant) -> None:
    response = APIClient().post(reverse("token-obtain"), {"email": tenant.owner.email}, format="json")

    error = assert_error(response, 400, "invalid_request_error")
    assert error["param"] == "password"


def test_sign_in_sign_out_and_failures_reach_the_audit_log(can_log_in: User) -> None:
    client = APIClient()
    obtain(client, can_log_in.email, "wrong horse")
    tokens = obtain(client, can_log_in.email).json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    client.post(reverse("token-logout"), {"refresh": tokens["refresh"]}, format="json")

    events = list(AuditEvent.objects.filter(action__startswith="auth.").order_by("pk"))

    assert [(e.action, e.target_id) for e in events] == [
        ("auth.login_failed", str(can_log_in.pk)),
        ("auth.login", str(can_log_in.pk)),
        ("auth.logout", str(can_log_in.pk)),
    ]
    assert events[1].metadata == {"method": "token"}
    assert can_log_in.email not in str([(e.metadata, e.before, e.after) for e in events])
