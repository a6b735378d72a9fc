"""What an audit row may hold: secret-named keys are hidden, secrets and personal data in values masked."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from accounts import keys
from accounts.models import Organization, User
from audit.models import AuditEvent
from audit.redaction import REDACTED, is_secret_key, mask_text, redact
from audit.services import audit_event_record

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


@pytest.mark.parametrize(
    "name",
    [
        "password", "new_password", "api_key", "apiKey", "APIKey", "x-api-key", "webhook_secret", "encrypted_key",
        "digest", "token", "accessToken", "refresh_token", "Authorization", "client_secret", "key", "secret_keys",
        "session.cookie", "hmac_signature", "private key",
    ],
)  # fmt: skip
def test_it_hides_secret_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name",
    [
        "key_id", "api_key_id", "keyId", "revoked_key_ids", "prefix", "key_prefix", "api_key_env", "key_name",
        "token_count", "max_tokens", "input_tokens", "tpm_limit", "scopes", "key_scopes", "rotated_at",
        "allowed_models", "name", "last_four", "request_fingerprint", "anchor_hash", "",
    ],
)  # fmt: skip
def test_it_keeps_harmless_names(name: str) -> None:
    assert not is_secret_key(name)


def test_secret_values_are_replaced_at_any_depth() -> None:
    value = {
        "name": "ci",
        "password": "hunter2",
        "changes": {"digest": {"old": "abc", "new": "def"}, "name": {"old": "a", "new": "b"}},
        "items": [{"token": 12345}, {"token_count": 3}],
    }

    assert redact(value) == {
        "name": "ci",
        "password": REDACTED,
        "changes": {"digest": REDACTED, "name": {"old": "a", "new": "b"}},
        "items": [{"token": REDACTED}, {"token_count": 3}],
    }


@pytest.mark.parametrize("kept", [None, True, False, "", "****abcd", "********"])
def test_a_secret_name_keeps_values_that_reveal_nothing(kept: object) -> None:
    assert redact({"webhook_secret": kept}) == {"webhook_secret": kept}


def test_a_modelmuxer_key_in_any_value_is_masked() -> None:
    secret = keys.generate_key()

    redacted = redact({"note": f"rotated to {secret} today", "list": [secret]})

    assert redacted == {"note": "rotated to [SECRET] today", "list": ["[SECRET]"]}
    assert secret not in json.dumps(redacted)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("alice@example.com", "[EMAIL]"),
        ("invited bob.smith+x@corp.example.org to admin", "invited [EMAIL] to admin"),
        (f"Bearer {JWT}", "Bearer [JWT]"),
        ("sk-proj-" + "a1B2" * 8, "[SECRET]"),
        ("card 4111 1111 1111 1111", "card [CARD]"),
        ("call +44 20 7946 0958", "call [PHONE]"),
    ],
)
def test_personal_data_and_secrets_in_text_are_masked(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-25T19:00:00.123456+00:00",
        "claude-3-5-sonnet-20241022",
        "gpt-4o-mini",
        "mm_live_AbCd1234",  # a key's lookup prefix: not the key
        f"req_{uuid.uuid4().hex}",
        hashlib.sha256(b"x").hexdigest(),
        "0123456789abcdef",
        "203.0.113.7",  # addresses are kept: the audit records them on purpose
        "2001:db8::1",
        "***@example.com",  # an address masked already by the caller
        "https://hooks.example.com/…",
        '[{"changed": {"fields": ["Enabled", "Input price per mtok usd"]}}]',
    ],
)
def test_ordinary_values_are_untouched(text: str) -> None:
    assert mask_text(text) == text


def test_values_become_plain_json() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    some_id = uuid.UUID(int=7)

    redacted = redact(
        {
            "price": Decimal("0.150000"),
            "at": moment,
            "day": date(2026, 1, 2),
            "id": some_id,
            "tags": {"b", "a"},
            "pair": (1, 2),
            "blob": b"\x00\x01",
            "nan": float("nan"),
            "nul": "a\x00b",
            3: "int key",
        }
    )

    assert redacted == {
        "price": "0.150000",
        "at": "2026-01-02T03:04:05.678901+00:00",
        "day": "2026-01-02",
        "id": str(some_id),
        "tags": ["a", "b"],
        "pair": [1, 2],
        "blob": REDACTED,
        "nan": "nan",
        "nul": "ab",
        "3": "int key",
    }
    assert json.loads(json.dumps(redacted, allow_nan=False)) == redacted


def test_redaction_is_deterministic_and_idempotent() -> None:
    value = {"email": "carol@example.com", "api_key": "x", "nested": [{"note": f"key {keys.generate_key()}"}]}

    once = redact(value)

    assert redact(value) == once
    assert redact(once) == once


@pytest.mark.django_db
def test_no_secret_or_address_reaches_the_row(organization: Organization, owner: User) -> None:
    secret = keys.generate_key()

    event = audit_event_record(
        action="test.redacted",
        organization=organization,
        actor=owner,
        target_type="api_key",
        target_id="dave@example.com",
        metadata={
            "api_key": secret,
            "note": f"sent {secret} to dave@example.com",
            "prefix": keys.lookup_prefix(secret),
        },
        before={"password": "old"},
        after={"password": "new", "alert_email": "ops@example.com"},
    )

    stored = AuditEvent.objects.get(pk=event.pk)
    row = json.dumps([stored.metadata, stored.before, stored.after, stored.target_id])
    assert secret not in row
    assert "@example.com" not in row
    assert stored.metadata == {"api_key": REDACTED, "note": "sent [SECRET] to [EMAIL]", "prefix": secret[:16]}
    assert (stored.before, stored.after) == ({"password": REDACTED}, {"password": REDACTED, "alert_email": "[EMAIL]"})
    assert stored.target_id == "[EMAIL]"
