"""Brute-force protection: per account and per address, on the JWT endpoint, the console and the admin."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth import authenticate
from django.test import Client, RequestFactory
from django.urls import reverse
from pytest_django import Settings
from rest_framework.test import APIClient

from accounts import bruteforce
from accounts.models import User
from tests.conftest import Tenant

from .conftest import PASSWORD

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db


def obtain(email: str, password: str, ip: str = "198.51.100.7") -> Response:
    return APIClient().post(
        reverse("token-obtain"), {"email": email, "password": password}, format="json", REMOTE_ADDR=ip
    )


def assert_locked(response: Response) -> None:
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert error["code"] == "too_many_login_attempts"
    assert error["type"] == "requests"
    assert "Try again in 15 minutes" in error["message"]
    assert 0 < int(response["Retry-After"]) <= 900


def test_the_sixth_attempt_is_refused_even_with_the_right_password(can_log_in: User) -> None:
    for _ in range(4):
        assert obtain(can_log_in.email, "wrong").status_code == 401
    assert_locked(obtain(can_log_in.email, "wrong"))  # the fifth failure locks the account

    assert_locked(obtain(can_log_in.email, PASSWORD))


def test_the_account_is_locked_from_every_address(can_log_in: User) -> None:
    for number in range(5):
        obtain(can_log_in.email, "wrong", ip=f"203.0.113.{number}")

    assert_locked(obtain(can_log_in.email, PASSWORD, ip="192.0.2.99"))


def test_variants_of_the_email_count_as_one_account(can_log_in: User) -> None:
    for variant in ["  " + can_log_in.email.upper(), can_log_in.email.title(), can_log_in.email + " "] * 2:
        obtain(variant, "wrong")

    assert_locked(obtain(can_log_in.email, PASSWORD))


def test_failures_across_accounts_lock_the_address(can_log_in: User) -> None:
    for number in range(20):
        assert obtain(f"nobody{number}@example.com", "wrong", ip="198.51.100.20").status_code in (401, 429)

    assert_locked(obtain(can_log_in.email, PASSWORD, ip="198.51.100.20"))
    assert obtain(can_log_in.email, PASSWORD, ip="198.51.100.21").status_code == 200


def test_a_success_clears_the_accounts_failures(can_log_in: User) -> None:
    for _ in range(4):
        obtain(can_log_in.email, "wrong")
    assert obtain(can_log_in.email, PASSWORD).status_code == 200

    for _ in range(4):
        assert obtain(can_log_in.email, "wrong").status_code == 401
    assert obtain(can_log_in.email, PASSWORD).status_code == 200


def test_the_lock_expires_after_the_window(can_log_in: User, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(5):
        obtain(can_log_in.email, "wrong")
    assert_locked(obtain(can_log_in.email, PASSWORD))

    later = bruteforce.time.time() + 901
    monkeypatch.setattr(bruteforce.time, "time", lambda: later)

    assert obtain(can_log_in.email, PASSWORD).status_code == 200


def test_limits_and_window_come_from_settings(can_log_in: User, settings: Settings) -> None:
    settings.MUXER_LOGIN_MAX_FAILURES = 2
    settings.MUXER_LOGIN_LOCKOUT_SECONDS = 120
    obtain(can_log_in.email, "wrong")
    response = obtain(can_log_in.email, "wrong")

    assert response.status_code == 429
    assert "Try again in 2 minutes" in response.json()["error"]["message"]
    assert int(response["Retry-After"]) <= 120


def test_the_backend_refuses_a_locked_account_without_checking_the_password(
    can_log_in: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = RequestFactory().post("/", REMOTE_ADDR="198.51.100.30")
    for _ in range(5):
        assert authenticate(request, username=can_log_in.email, password="wrong") is None
    checked: list[str] = []
    original = User.check_password

    def check_password(self: User, raw: str) -> bool:
        checked.append(raw)
        return original(self, raw)

    monkeypatch.setattr(User, "check_password", check_password)

    assert authenticate(request, username=can_log_in.email, password=PASSWORD) is None
    assert checked == []


def test_the_lockout_is_logged_without_the_email(can_log_in: User, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="accounts.bruteforce"):
        for _ in range(5):
            obtain(can_log_in.email, "wrong")

    locked = [r.getMessage() for r in caplog.records if "login locked" in r.getMessage()]
    assert len(locked) == 1
    assert "account" in locked[0]
    assert can_log_in.email not in caplog.text
    assert can_log_in.email.split("@")[0] not in caplog.text


def test_the_console_says_when_to_try_again(can_log_in: User) -> None:
    client = Client(REMOTE_ADDR="198.51.100.40")
    for _ in range(4):
        response = client.post(reverse("console-login"), {"username": can_log_in.email, "password": "wrong"})
        assert b"Please enter a correct" in response.content

    fifth = client.post(reverse("console-login"), {"username": can_log_in.email, "password": "wrong"})
    right = client.post(reverse("console-login"), {"username": can_log_in.email, "password": PASSWORD})

    for response in (fifth, right):
        assert response.status_code == 200
        assert b"Too many failed sign-in attempts. Try again in 15 minutes." in response.content
    assert "_auth_user_id" not in client.session


def test_the_admin_login_is_locked_too(tenant: Tenant) -> None:
    staff = User.objects.create_user("ops@example.com", PASSWORD, is_staff=True, is_superuser=True)
    client = Client()
    for _ in range(5):
        client.post(reverse("admin:login"), {"username": staff.email, "password": "wrong"})

    response = client.post(reverse("admin:login"), {"username": staff.email, "password": PASSWORD})

    assert response.status_code == 200
    assert b"Too many failed sign-in attempts" in response.content
    assert client.get(reverse("admin:index")).status_code == 302
