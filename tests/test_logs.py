"""Logs are JSON, one access line per request, and clean of secrets and PII."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import httpx
import openai
import pytest

from accounts.models import Organization, User
from muxer_project.logs import logging_config, scrub_text
from tests.conftest import Gateway
from tests.factories import issue_key

EMAIL = "grace.hopper@navy.example"
CARD = "4111 1111 1111 1111"
PHONE = "+44 20 7946 0958"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key mm_live_" + "A" * 38 + " used", "key [api-key] used"),
        ("invite mm_inv_" + "b" * 40, "invite [api-key]"),
        ("openai sk-proj-" + "c" * 40, "openai [provider-key]"),
        ("anthropic sk-ant-api03-" + "d" * 40, "anthropic [provider-key]"),
        ("groq gsk_" + "e" * 40, "groq [provider-key]"),
        ("google AIza" + "f" * 35, "google [provider-key]"),
        ("Authorization: Bearer abcdef0123456789", "Authorization: Bearer [credential]"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "jwt [jwt]"),
        (f"mail {EMAIL} now", "mail [email] now"),
        (f"card {CARD} ok", "card [number] ok"),
        (f"call {PHONE}", "call [phone]"),
    ],
)
def test_the_scrubber_replaces_credentials_and_pii(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "prefix mm_live_Ab3dEf9H is only the lookup prefix",
        "request req_3f2a9c0d4e5b6a7c8d9e0f1a2b3c4d5e",
        "latency 1234 ms, 42 tokens, model fake-small",
        "2026-11-26T09:10:46.513008Z",
    ],
)
def test_the_scrubber_leaves_ordinary_values_alone(text: str) -> None:
    assert scrub_text(text) == text


def test_every_record_becomes_one_json_line_with_its_fields() -> None:
    config = logging_config(level="INFO", json=True)
    formatter = logging.config.dictConfigClass(config).configure_custom(dict(config["formatters"]["structured"]))  # type: ignore[attr-defined]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.logs.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sent %s to %s", "mm_live_" + "Z" * 38, EMAIL)
        try:
            raise ValueError(f"bad card {CARD}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "sent [api-key] to [email]"
    assert (first["level"], first["logger"]) == ("warning", "tests.logs.json")
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "failed"
    assert "ValueError: bad card [number]" in second["exception"]
    assert CARD not in lines[1]


# --- a live server: everything it logged while serving real traffic -------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_live_servers_log_is_json_and_holds_no_secret_or_pii(
    gateway: Gateway, organization: Organization, owner: User, catalog: None
) -> None:
    # "log" sends the values upstream untouched: only the logs must keep them out.
    Organization.objects.filter(pk=organization.pk).update(pii_policy={"default": "log"})
    key = issue_key(organization, created_by=owner).secret
    client = openai.OpenAI(api_key=key, base_url=f"{gateway.url}/v1", max_retries=0)
    text = f"My email is {EMAIL}, card {CARD}, phone {PHONE}."
    start = gateway.log.stat().st_size

    answer = client.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": text}])
    assert answer.choices[0].message.content
    streamed = client.chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": text}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": f"[fake status=500] {text}"}]
        )
    forged = "mm_live_" + key[8:-1] + ("A" if key[-1] != "A" else "B")
    body = {"model": "fake-small", "messages": [{"role": "user", "content": text}]}
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(url, headers={"Authorization": f"Bearer {forged}"}, json=body).status_code == 401
    broken = b'{"model": "fake-small", "messages": [' + text.encode()
    assert httpx.post(url, headers={"Authorization": f"Bearer {key}"}, content=broken).status_code == 400
    assert httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in read_from(gateway.log, start) if line.strip()]
        access = [json.loads(line) for line in lines if '"logger":"muxer.access"' in line.replace(" ", "")]
        if len(access) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    assert len(access) >= 6, lines
    for line in lines:
        try:
            record = json.loads(line)  # every line, the servers' own included, is one JSON object
        except ValueError:
            pytest.fail(f"not a JSON line: {line[:300]!r}")
        assert {"event", "level", "logger", "timestamp"} <= set(record)
        for value in (key, forged, EMAIL, CARD, PHONE, "test-openai-key", "test-anthropic-key"):
            assert value not in line, f"{record['logger']} logged a secret or PII: {record['event']!r}"
    proxied = [a for a in access if a.get("endpoint") == "chat_completions"]
    assert {a["status"] for a in proxied} >= {200, 401, 400}
    assert all(a["request_id"] for a in access)
    assert {a.get("key_prefix") for a in proxied if a["status"] == 200} == {key[:16]}


def read_from(path: Path, offset: int) -> list[str]:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", "replace").splitlines()
