"""The secret-hygiene scanner (tests/hygiene.py) finds planted leaks, and is live in this session.

Planted secrets are written by hand, never issued, so the session's own ledger
does not know them and the session-wide scan is not tripped by these tests.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from django.test import RequestFactory
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import Organization, User
from audit.models import AuditEvent
from tests import hygiene
from tests.factories import issue_key

PLANTED_KEY = "mm_live_PLANTEDplantedPLANTEDplanted0000abcdef"
PLANTED_TOKEN = "mm_inv_PLANTEDinvitationTOKENplanted0123"
# The shape of a simplejwt access token, signed by no one.
PLANTED_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0b2tlbl90eXBlIjoiYWNjZXNzIiwicGxhbnRlZCI6dHJ1ZX0"
    ".PLANTEDjwtSIGNATUREplanted0000000000000000"
)


@pytest.fixture
def ledger() -> hygiene.SecretLedger:
    planted = hygiene.SecretLedger()
    planted.add("API key", PLANTED_KEY)
    planted.add("invitation token", PLANTED_TOKEN)
    planted.add("JWT", PLANTED_JWT)
    return planted


def planted_record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("routing.consumers", logging.INFO, __file__, 1, message, args, None)


def test_it_finds_a_secret_in_a_log_message_argument(ledger: hygiene.SecretLedger) -> None:
    text = hygiene.record_text(planted_record("rejected key %s for org %s", PLANTED_KEY, "acme"))
    [leak] = hygiene.log_leaks(ledger, [("routing.consumers", text)])
    assert leak.kind == "API key"
    assert leak.prefix == PLANTED_KEY[:16]
    assert PLANTED_KEY not in str(leak)  # the report shows the lookup prefix only


def test_it_finds_a_secret_in_a_traceback_and_in_extras(ledger: hygiene.SecretLedger) -> None:
    try:
        raise ValueError(f"bad token {PLANTED_TOKEN}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    record.__dict__["token"] = PLANTED_TOKEN
    assert [leak.kind for leak in ledger.find(hygiene.record_text(record), "here")] == ["invitation token"]
    extra_only = planted_record("nothing here")
    extra_only.__dict__["authorization"] = f"Bearer {PLANTED_KEY}"
    assert [leak.kind for leak in ledger.find(hygiene.record_text(extra_only), "here")] == ["API key"]


def test_it_finds_a_jwt_in_a_log_record(ledger: hygiene.SecretLedger) -> None:
    record = planted_record("request with headers %s", {"Authorization": f"Bearer {PLANTED_JWT}"})
    [leak] = hygiene.log_leaks(ledger, [("django.request", hygiene.record_text(record))])
    assert leak.kind == "JWT"
    assert PLANTED_JWT not in str(leak)
    assert leak.prefix == PLANTED_JWT[:8]
    # Its header and payload alone (no signature) are not the token: not a leak.
    assert ledger.find(PLANTED_JWT.rsplit(".", 1)[0], "here") == []


def test_it_ignores_texts_without_the_secret(ledger: hygiene.SecretLedger) -> None:
    near_misses = [
        PLANTED_KEY[:16],  # the lookup prefix alone is not secret
        PLANTED_KEY[:-1],
        "mm_live_" + "x" * 38,
        "Bearer <redacted>",
    ]
    assert hygiene.log_leaks(ledger, [("x", text) for text in near_misses]) == []


def test_it_finds_a_secret_in_a_server_log_file(ledger: hygiene.SecretLedger, tmp_path: Path) -> None:
    clean, dirty = tmp_path / "clean.log", tmp_path / "dirty.log"
    clean.write_text("GET /v1/models 200\n")
    dirty.write_text(f"INFO auth failed for {PLANTED_KEY}\n")
    [leak] = hygiene.file_leaks(ledger, [clean, dirty])
    assert leak.where == f"log file {dirty}"


@pytest.mark.django_db
def test_it_finds_a_secret_in_any_field_of_an_audit_row(
    ledger: hygiene.SecretLedger, organization: Organization
) -> None:
    # Written past audit_event_record, whose redactor would mask the key: as a careless writer would.
    AuditEvent.objects.create(
        action="api_key.created", organization=organization, metadata={"prefix": PLANTED_KEY[:16]}
    )
    assert hygiene.audit_leaks(ledger, "the test") == []
    AuditEvent.objects.create(action="api_key.updated", organization=organization, user_agent=f"curl {PLANTED_KEY}")
    [leak] = hygiene.audit_leaks(ledger, "the test")
    assert leak.kind == "API key"
    assert "api_key.updated" in leak.where


@pytest.mark.django_db
def test_the_session_records_issued_keys(organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner)
    assert issued.secret in hygiene.LEDGER


@pytest.mark.django_db
def test_the_session_records_issued_jwts(owner: User) -> None:
    client = APIClient()
    pair = client.post(
        reverse("token-obtain"), {"email": owner.email, "password": "correct horse battery staple"}, format="json"
    ).json()
    assert pair["access"] in hygiene.LEDGER
    assert pair["refresh"] in hygiene.LEDGER
    rotated = client.post(reverse("token-refresh"), {"refresh": pair["refresh"]}, format="json").json()
    assert rotated["refresh"] != pair["refresh"]
    assert rotated["access"] in hygiene.LEDGER
    assert rotated["refresh"] in hygiene.LEDGER


@pytest.mark.django_db
def test_it_finds_a_jwt_in_an_audit_row(ledger: hygiene.SecretLedger, organization: Organization) -> None:
    AuditEvent.objects.create(action="user.login", organization=organization, metadata={"token": PLANTED_JWT})
    [leak] = hygiene.audit_leaks(ledger, "the test")
    assert leak.kind == "JWT"
    assert "user.login" in leak.where


def test_the_session_captures_log_records() -> None:
    logging.getLogger("tests.governance").debug("hygiene capture check %s", "m4rk3r")
    assert any("hygiene capture check m4rk3r" in text for _, text in hygiene.HANDLER.texts[-50:])


def test_a_logged_request_counts_by_its_method_and_path(ledger: hygiene.SecretLedger) -> None:
    # What a handler shows of Django's request extra; a query string is the client's own choice.
    in_path = planted_record("Not Found")
    in_path.__dict__["request"] = RequestFactory().get(f"/api/keys/{PLANTED_KEY}/")
    in_query = planted_record("Not Found")
    in_query.__dict__["request"] = RequestFactory().get("/api/keys/", {"key": PLANTED_KEY})
    assert [leak.kind for leak in ledger.find(hygiene.record_text(in_path), "here")] == ["API key"]
    assert ledger.find(hygiene.record_text(in_query), "here") == []
