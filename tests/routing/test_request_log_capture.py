"""The proxy's side of the opt-in request log: which bodies a usage record carries, end to end.

The request is kept as the client sent it (not as the PII guard or the budget
cap changed it for the provider), the answer as the client got it (a stream
assembled), both PII masked by billing/request_log.py. An organization that
has not opted in keeps nothing at all.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from accounts.models import Organization, User
from billing.models import RequestLog, UsageRecord
from tests.conftest import FakeUpstream
from tests.factories import issue_key
from tests.routing.harness import chat, in_thread, post, sse_events, upstream_stats, usage_rows

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "ann@example.com"
CARD = "4111111111111111"
# Short enough that the fake upstream's reply ("Fake reply to: " + 40 characters) repeats it whole.
PROMPT = f"{CARD} {EMAIL}"
MASKED_PROMPT = "[CARD_1] [EMAIL_1]"


@pytest.fixture
def key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner, allowed_models=("fake-small", "fake-medium", "fake-large")).secret


async def set_org(organization: Organization, **fields: Any) -> None:
    await in_thread(Organization.objects.filter(pk=organization.pk).update, **fields)


def _logs() -> list[tuple[RequestLog, UsageRecord]]:
    return [(log, log.usage) for log in RequestLog.objects.select_related("usage").order_by("id")]


async def kept_logs() -> list[tuple[RequestLog, UsageRecord]]:
    await usage_rows()  # moves the usage events (and their bodies) into the database first
    return await in_thread(_logs)


def response_of(log: RequestLog) -> dict[str, Any]:
    assert isinstance(log.response_body, dict)
    return log.response_body


def assert_no_raw_values(log: RequestLog) -> None:
    stored = orjson.dumps([log.request_body, log.response_body]).decode()
    assert EMAIL not in stored
    assert CARD not in stored


async def test_an_opted_in_organization_keeps_the_request_as_sent_and_the_answer_as_received(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    # The organization's output cap makes the gateway add max_tokens for the provider; the log must not show it.
    await set_org(organization, request_log_enabled=True, max_output_tokens_cap=50)
    body = chat(PROMPT, temperature=0.5, user=EMAIL, muxer={"quality_floor": "economy"})

    reply = await post(body, key=key)

    assert reply.status == 200
    assert reply.json()["choices"][0]["message"]["content"] == f"Fake reply to: {PROMPT}"
    assert (await upstream_stats(upstream))["last_request"]["body"]["max_tokens"] == 50
    [(log, usage)] = await kept_logs()
    assert usage.request_id == reply.headers["x-request-id"]
    assert (usage.status, log.organization_id) == ("ok", organization.pk)
    assert log.request_body == {
        "model": "fake-small",
        "messages": [{"role": "user", "content": MASKED_PROMPT}],
        "temperature": 0.5,
        "user": "[EMAIL_1]",
        "muxer": {"quality_floor": "economy"},
    }
    assert response_of(log)["id"] == reply.json()["id"]
    assert response_of(log)["choices"][0]["message"]["content"] == f"Fake reply to: {MASKED_PROMPT}"
    assert response_of(log)["usage"] == reply.json()["usage"]
    assert_no_raw_values(log)


async def test_a_stream_is_kept_assembled(key: str, organization: Organization, upstream: FakeUpstream) -> None:
    await set_org(organization, request_log_enabled=True)

    reply = await post(chat(PROMPT, stream=True, stream_options={"include_usage": True}), key=key)

    assert reply.status == 200
    assert sse_events(reply.body)[-1] == b"data: [DONE]"
    [(log, usage)] = await kept_logs()
    assert (usage.status, usage.stream) == ("ok", True)
    assert log.request_body["stream"] is True
    answer = response_of(log)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": f"Fake reply to: {MASKED_PROMPT}"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == usage.output_tokens
    assert_no_raw_values(log)


async def test_the_guards_masking_does_not_reach_the_log_but_the_answer_as_restored_does(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org(organization, request_log_enabled=True, pii_policy={"email": "mask"})

    reply = await post(chat(f"Write to {EMAIL} now", stream=True), key=key)

    assert reply.status == 200
    sent = (await upstream_stats(upstream))["last_request"]["body"]["messages"][0]["content"]
    assert sent == "Write to [EMAIL_1] now"
    [(log, _usage)] = await kept_logs()
    # Both masked by the log itself, from the client's text and the restored answer.
    assert log.request_body["messages"][0]["content"] == "Write to [EMAIL_1] now"
    assert response_of(log)["choices"][0]["message"]["content"] == "Fake reply to: Write to [EMAIL_1] now"
    assert_no_raw_values(log)


async def test_a_cache_hit_keeps_its_bodies_too(key: str, organization: Organization, upstream: FakeUpstream) -> None:
    await set_org(organization, request_log_enabled=True)
    await post(chat(PROMPT, temperature=0), key=key)

    hit = await post(chat(PROMPT, temperature=0, stream=True), key=key)

    assert hit.headers["x-muxer-cache"] == "hit"
    logs = await kept_logs()
    assert [(usage.cache_hit, usage.stream) for _log, usage in logs] == [(False, False), (True, True)]
    log, usage = logs[1]
    assert usage.request_id == hit.headers["x-request-id"]
    assert log.request_body["stream"] is True
    assert response_of(log)["choices"][0]["message"]["content"] == f"Fake reply to: {MASKED_PROMPT}"
    assert response_of(log)["id"] != response_of(logs[0][0])["id"]
    assert_no_raw_values(log)


async def test_a_failed_request_keeps_the_request_without_an_answer(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org(organization, request_log_enabled=True)

    reply = await post(chat(f"{EMAIL} [fake status=400]"), key=key)

    assert reply.status == 400
    [(log, usage)] = await kept_logs()
    assert usage.status == "error"
    assert log.request_body["messages"][0]["content"] == "[EMAIL_1] [fake status=400]"
    assert log.response_body is None


async def test_a_stream_that_fails_keeps_no_answer(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org(organization, request_log_enabled=True)

    reply = await post(chat("Hi [fake fail_after_chunks=2]", stream=True), key=key)

    assert b'"error"' in reply.body
    [(log, usage)] = await kept_logs()
    assert usage.status == "error"
    assert log.request_body["messages"][0]["content"] == "Hi [fake fail_after_chunks=2]"
    assert log.response_body is None


async def test_an_organization_that_has_not_opted_in_keeps_nothing(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await post(chat(PROMPT), key=key)
    await post(chat(PROMPT, stream=True), key=key)
    await post(chat(PROMPT, temperature=0), key=key)
    hit = await post(chat(PROMPT, temperature=0, stream=True), key=key)
    await post(chat(f"{PROMPT} [fake status=400]"), key=key)
    message = {"model": "fake-small", "max_tokens": 256, "messages": [{"role": "user", "content": PROMPT}]}
    await post(message, key=key, path="/v1/messages")
    await post({**message, "stream": True}, key=key, path="/v1/messages")

    assert hit.headers["x-muxer-cache"] == "hit"
    rows = await usage_rows()
    assert [r.status for r in rows] == ["ok", "ok", "ok", "ok", "error", "ok", "ok"]
    assert await in_thread(RequestLog.objects.count) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_the_messages_endpoint_keeps_its_own_formats(
    stream: bool, key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org(organization, request_log_enabled=True)
    body = {"model": "fake-small", "max_tokens": 256, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True

    reply = await post(body, key=key, path="/v1/messages")

    assert reply.status == 200
    [(log, usage)] = await kept_logs()
    assert (usage.status, usage.stream) == ("ok", stream)
    assert log.request_body == {**body, "messages": [{"role": "user", "content": MASKED_PROMPT}]}
    answer = response_of(log)
    assert answer["type"] == "message"
    assert answer["content"] == [{"type": "text", "text": f"Fake reply to: {MASKED_PROMPT}"}]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"]["output_tokens"] == usage.output_tokens
    assert_no_raw_values(log)
