"""Sign-ins are platform events: ``auth.login``, ``auth.logout`` and ``auth.login_failed`` (no address kept)."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import User
from audit.models import AuditEvent
from audit.receivers import username_fingerprint

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def person(owner: User) -> User:
    owner.save(update_fields=["password"])  # the factory sets it without saving
    return owner


def the_event(action: str) -> AuditEvent:
    return AuditEvent.objects.get(action=action)


def row_text(event: AuditEvent) -> str:
    return json.dumps([event.metadata, event.before, event.after, event.target_id, event.user_agent])


def test_a_console_sign_in_is_recorded(person: User) -> None:
    client = Client(REMOTE_ADDR="192.0.2.20", HTTP_USER_AGENT="Firefox/140")

    response = client.post(reverse("console-login"), {"username": person.email, "password": PASSWORD})

    assert response.status_code == 302
    event = the_event("auth.login")
    assert (event.actor_id, event.organization_id, event.target_type, event.target_id) == (
        person.pk, None, "user", str(person.pk),
    )  # fmt: skip
    assert event.metadata == {"method": "session"}
    assert (event.ip, event.user_agent) == ("192.0.2.20", "Firefox/140")
    assert event.request_id == response.headers["X-Request-ID"]


def test_a_token_sign_in_is_recorded(person: User) -> None:
    response = APIClient().post(reverse("token-obtain"), {"email": person.email, "password": PASSWORD}, format="json")

    assert response.status_code == 200
    event = the_event("auth.login")
    assert (event.actor_id, event.metadata) == (person.pk, {"method": "token"})
    assert event.request_id == response.headers["X-Request-ID"]


def test_a_sign_out_is_recorded(person: User) -> None:
    client = Client()
    client.force_login(person)

    client.post(reverse("console-logout"))

    event = the_event("auth.logout")
    assert (event.actor_id, event.target_id, event.organization_id) == (person.pk, str(person.pk), None)


def test_a_failed_sign_in_names_the_account_by_id_and_keeps_no_address(person: User) -> None:
    client = Client(REMOTE_ADDR="192.0.2.21")

    response = client.post(reverse("console-login"), {"username": person.email, "password": "wrong horse"})

    assert response.status_code == 200  # the form again, with its error
    event = the_event("auth.login_failed")
    assert (event.actor_id, event.target_type, event.target_id) == (None, "user", str(person.pk))
    assert event.metadata == {"username_fingerprint": username_fingerprint(person.email)}
    assert person.email not in row_text(event)
    assert "wrong horse" not in row_text(event)
    assert event.ip == "192.0.2.21"


def test_a_failed_sign_in_for_no_account_has_no_target() -> None:
    APIClient().post(reverse("token-obtain"), {"email": "nobody@example.com", "password": "x"}, format="json")

    event = the_event("auth.login_failed")
    assert (event.target_type, event.target_id) == ("", "")
    assert event.metadata == {"username_fingerprint": username_fingerprint("nobody@example.com")}
    assert "nobody" not in row_text(event)


def test_the_fingerprint_is_short_stable_and_ignores_case_and_spaces() -> None:
    fingerprint = username_fingerprint("Alice@Example.com ")

    assert fingerprint == username_fingerprint("alice@example.com")
    assert fingerprint != username_fingerprint("bob@example.com")
    assert len(fingerprint) == 16
    assert int(fingerprint, 16) >= 0
