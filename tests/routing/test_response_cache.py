"""The exact-match response cache on /v1/chat/completions, end to end through the consumer.

The fake upstream counts the chat requests it receives (``/_fake/stats``), so a
hit is proven by the count not moving; the ledger shows what a hit costs.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from django.conf import settings
from django.core.cache import caches
from django.test import override_settings
from openai import AsyncOpenAI

from accounts.models import Organization, Role, User
from muxer_project.asgi import application
from tests.conftest import FakeUpstream
from tests.factories import MembershipFactory, OrganizationFactory, issue_key
from tests.routing.harness import (
    HELLO,
    Reply,
    chat,
    data_chunks,
    in_thread,
    post,
    sse_events,
    upstream_stats,
    usage_rows,
)

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_TIERS = ("fake-small", "fake-medium", "fake-large")
USE = [(b"x-muxer-cache", b"use")]
BYPASS = [(b"x-muxer-cache", b"bypass")]


@pytest.fixture
def key(organization: Organization, owner: User, catalog: None) -> str:
    """Limited to the fake provider's tiers, so routed requests stay on the fake upstream."""
    return issue_key(organization, created_by=owner, allowed_models=FAKE_TIERS).secret


@pytest.fixture
def large_only_key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner, allowed_models=("fake-large",)).secret


@pytest.fixture
def other_tenant_key(catalog: None) -> str:
    other = OrganizationFactory.create()
    owner = MembershipFactory.create(organization=other, role=Role.OWNER).user
    return issue_key(other, created_by=owner, allowed_models=FAKE_TIERS).secret


def settled(content: str = HELLO, **extra: Any) -> dict[str, Any]:
    """A request whose answer may be repeated: temperature 0."""
    return chat(content, temperature=0, **extra)


async def upstream_calls(upstream: FakeUpstream) -> int:
    return int((await upstream_stats(upstream))["requests"])


async def set_org(organization: Organization, **fields: Any) -> None:
    await in_thread(Organization.objects.filter(pk=organization.pk).update, **fields)


def answer(reply: Reply) -> str:
    return str(reply.json()["choices"][0]["message"]["content"])


def streamed_text(reply: Reply) -> str:
    chunks = data_chunks(sse_events(reply.body))
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# --- hits and misses --------------------------------------------------------------------------------


async def test_a_repeated_temperature_zero_request_is_answered_from_the_cache_at_no_cost(
    key: str, upstream: FakeUpstream
) -> None:
    first = await post(settled(), key=key)
    second = await post(settled(), key=key)

    assert (first.status, second.status) == (200, 200)
    assert first.headers["x-muxer-cache"] == "miss"
    assert second.headers["x-muxer-cache"] == "hit"
    assert await upstream_calls(upstream) == 1
    assert answer(second) == answer(first)
    # A completion of its own: clients that dedupe by id must not drop it.
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["id"].startswith("chatcmpl-")
    assert second.json()["usage"] == first.json()["usage"]
    assert (second.headers["x-muxer-model"], second.headers["x-muxer-provider"]) == ("fake-small", "fake")
    assert second.headers["x-muxer-cost-usd"] == "0"
    missed, hit = await usage_rows()
    assert (missed.cache_hit, missed.cost_usd > 0) == (False, True)
    assert (hit.cache_hit, hit.cost_usd, hit.status, hit.http_status) == (True, Decimal(0), "ok", 200)
    assert (hit.model, hit.provider) == ("fake-small", "fake")
    assert (hit.input_tokens, hit.output_tokens) == (missed.input_tokens, missed.output_tokens)
    assert hit.request_id == second.headers["x-request-id"]
    assert hit.request_fingerprint == missed.request_fingerprint


async def test_another_tenant_sending_the_same_request_is_a_miss(
    key: str, other_tenant_key: str, upstream: FakeUpstream
) -> None:
    await post(settled(), key=key)

    theirs = await post(settled(), key=other_tenant_key)

    assert theirs.status == 200
    assert theirs.headers["x-muxer-cache"] == "miss"
    assert await upstream_calls(upstream) == 2
    again = await post(settled(), key=other_tenant_key)
    assert again.headers["x-muxer-cache"] == "hit"  # their own answer is theirs to reuse
    assert await upstream_calls(upstream) == 2


async def test_fields_that_do_not_change_the_answer_share_an_entry_and_those_that_do_not(
    key: str, upstream: FakeUpstream
) -> None:
    await post(settled(user="someone", metadata={"run": "1"}), key=key)

    same = await post(settled(user="someone else", metadata={"run": "2"}), key=key)
    other_length = await post(settled(max_tokens=3), key=key)
    other_model = await post(settled(model="fake-medium"), key=key)

    assert same.headers["x-muxer-cache"] == "hit"
    assert other_length.headers["x-muxer-cache"] == "miss"
    assert other_model.headers["x-muxer-cache"] == "miss"
    assert await upstream_calls(upstream) == 3


async def test_the_routing_headers_are_part_of_a_routed_requests_key(key: str, upstream: FakeUpstream) -> None:
    await post(settled(model="auto"), key=key)

    same = await post(settled(model="auto"), key=key)
    other_strategy = await post(settled(model="auto"), key=key, extra_headers=[(b"x-muxer-strategy", b"heuristic")])
    capped = await post(settled(model="auto"), key=key, extra_headers=[(b"x-muxer-max-cost", b"0.5")])
    capped_again = await post(settled(model="auto"), key=key, extra_headers=[(b"x-muxer-max-cost", b"0.5")])

    assert same.headers["x-muxer-cache"] == "hit"
    assert other_strategy.headers["x-muxer-cache"] == "miss"
    assert capped.headers["x-muxer-cache"] == "miss"
    assert capped_again.headers["x-muxer-cache"] == "hit"
    assert await upstream_calls(upstream) == 3


# --- when the cache applies -------------------------------------------------------------------------


async def test_a_request_with_a_nonzero_temperature_is_not_cached_without_the_header(
    key: str, upstream: FakeUpstream
) -> None:
    first = await post(chat(temperature=1), key=key)
    second = await post(chat(temperature=1), key=key)
    unset = await post(chat(), key=key)

    assert (first.status, second.status, unset.status) == (200, 200, 200)
    assert "x-muxer-cache" not in first.headers
    assert "x-muxer-cache" not in second.headers
    assert "x-muxer-cache" not in unset.headers
    assert await upstream_calls(upstream) == 3
    assert not any(row.cache_hit for row in await usage_rows())


async def test_the_use_header_opts_a_nonzero_temperature_in(key: str, upstream: FakeUpstream) -> None:
    first = await post(chat(temperature=1), key=key, extra_headers=USE)
    second = await post(chat(temperature=1), key=key, extra_headers=USE)

    assert (first.headers["x-muxer-cache"], second.headers["x-muxer-cache"]) == ("miss", "hit")
    assert answer(second) == answer(first)
    assert await upstream_calls(upstream) == 1


async def test_bypass_neither_reads_nor_writes(key: str, upstream: FakeUpstream) -> None:
    await post(settled(), key=key)
    bypassed = await post(settled(), key=key, extra_headers=BYPASS)
    assert bypassed.status == 200
    assert bypassed.headers["x-muxer-cache"] == "bypass"
    assert await upstream_calls(upstream) == 2

    await post(settled("Something new"), key=key, extra_headers=BYPASS)
    after = await post(settled("Something new"), key=key)

    assert after.headers["x-muxer-cache"] == "miss"  # the bypassed answer was not kept
    assert await upstream_calls(upstream) == 4
    assert not any(row.cache_hit for row in await usage_rows())


@pytest.mark.parametrize("value", ["always", "", "use,bypass"])
async def test_a_bad_cache_header_is_refused_before_anything_is_counted(
    value: str, key: str, upstream: FakeUpstream
) -> None:
    reply = await post(settled(), key=key, extra_headers=[(b"x-muxer-cache", value.encode())])

    assert reply.status == 400
    assert reply.error["param"] == "X-Muxer-Cache"
    assert reply.error["type"] == "invalid_request_error"
    assert await upstream_calls(upstream) == 0
    assert await usage_rows() == []


async def test_header_values_are_case_insensitive(key: str, upstream: FakeUpstream) -> None:
    await post(chat(temperature=1), key=key, extra_headers=[(b"x-muxer-cache", b" USE ")])
    second = await post(chat(temperature=1), key=key, extra_headers=[(b"x-muxer-cache", b"Use")])

    assert second.headers["x-muxer-cache"] == "hit"


async def test_an_organization_with_a_ttl_of_zero_has_no_cache(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org(organization, response_cache_ttl_seconds=0)

    first = await post(settled(), key=key, extra_headers=USE)
    second = await post(settled(), key=key, extra_headers=USE)

    assert "x-muxer-cache" not in first.headers
    assert "x-muxer-cache" not in second.headers
    assert await upstream_calls(upstream) == 2


async def test_an_answer_expires_after_the_organizations_ttl(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org(organization, response_cache_ttl_seconds=1)
    await post(settled(), key=key)
    assert (await post(settled(), key=key)).headers["x-muxer-cache"] == "hit"

    await asyncio.sleep(1.2)
    expired = await post(settled(), key=key)

    assert expired.headers["x-muxer-cache"] == "miss"
    assert await upstream_calls(upstream) == 2


async def test_several_choices_are_not_cached(key: str, upstream: FakeUpstream) -> None:
    await post(settled(n=2), key=key)
    second = await post(settled(n=2), key=key)

    assert "x-muxer-cache" not in second.headers
    assert await upstream_calls(upstream) == 2


# --- what is never kept -----------------------------------------------------------------------------


async def test_errors_are_not_kept(key: str, upstream: FakeUpstream) -> None:
    failing = settled("Hi [fake status=400]")
    first = await post(failing, key=key)
    second = await post(failing, key=key)

    assert (first.status, second.status) == (400, 400)
    assert (first.headers["x-muxer-cache"], second.headers["x-muxer-cache"]) == ("miss", "miss")
    assert await upstream_calls(upstream) == 2


async def test_a_failed_stream_is_not_kept(key: str, upstream: FakeUpstream) -> None:
    failing = settled("Hi [fake fail_after_chunks=2]", stream=True)
    first = await post(failing, key=key)
    second = await post(failing, key=key)

    assert b'"error"' in first.body
    assert second.headers["x-muxer-cache"] == "miss"
    assert b'"error"' in second.body
    assert await upstream_calls(upstream) == 2


async def test_an_answer_over_the_size_cap_is_not_kept(key: str, upstream: FakeUpstream) -> None:
    with override_settings(MUXER_RESPONSE_CACHE_MAX_BYTES=100):
        await post(settled(), key=key)
        second = await post(settled(), key=key)

    assert second.headers["x-muxer-cache"] == "miss"
    assert await upstream_calls(upstream) == 2


# --- streams ----------------------------------------------------------------------------------------


async def test_a_kept_answer_is_replayed_as_an_event_stream(key: str, upstream: FakeUpstream) -> None:
    plain = await post(settled(), key=key)

    streamed = await post(settled(stream=True, stream_options={"include_usage": True}), key=key)

    assert streamed.status == 200
    assert streamed.headers["content-type"] == "text/event-stream"
    assert streamed.headers["x-muxer-cache"] == "hit"
    events = sse_events(streamed.body)
    assert events[-1] == b"data: [DONE]"
    chunks = data_chunks(events)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"] != plain.json()["id"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(streamed) == answer(plain)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    # include_usage: every chunk says usage null, and a last chunk without choices carries it.
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == plain.json()["usage"]["completion_tokens"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert await upstream_calls(upstream) == 1
    _, hit = await usage_rows()
    assert (hit.cache_hit, hit.stream, hit.cost_usd) == (True, True, Decimal(0))


async def test_a_streamed_answer_is_kept_for_a_plain_request(key: str, upstream: FakeUpstream) -> None:
    streamed = await post(settled(stream=True), key=key)
    assert streamed.headers["x-muxer-cache"] == "miss"

    plain = await post(settled(), key=key)

    assert plain.headers["x-muxer-cache"] == "hit"
    body = plain.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": streamed_text(streamed)}
    assert body["choices"][0]["finish_reason"] == "stop"
    missed, hit = await usage_rows()
    assert body["usage"]["completion_tokens"] == missed.output_tokens
    assert (hit.output_tokens, hit.cache_hit) == (missed.output_tokens, True)
    assert await upstream_calls(upstream) == 1


async def test_a_streamed_tool_call_is_kept_whole(key: str, upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    streamed = await post(settled("What is the weather?", tools=tools, stream=True), key=key)
    assert streamed.status == 200

    plain = await post(settled("What is the weather?", tools=tools), key=key)

    assert plain.headers["x-muxer-cache"] == "hit"
    choice = plain.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_")
    assert call["type"] == "function"


async def test_the_openai_sdk_reads_a_streamed_hit(key: str, upstream: FakeUpstream) -> None:
    # The SDK's own HTTP client (httpx2), talking to the ASGI application in process.
    transport = httpx2.ASGITransport(app=application)
    async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as http:
        client = AsyncOpenAI(api_key=key, base_url="http://gateway/v1", http_client=http, max_retries=0)
        messages: Any = [{"role": "user", "content": HELLO}]
        first = await client.chat.completions.create(model="fake-small", messages=messages, temperature=0)

        raw = await client.chat.completions.with_raw_response.create(
            model="fake-small",
            messages=messages,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in raw.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage

    assert raw.headers["x-muxer-cache"] == "hit"
    assert text == first.choices[0].message.content
    assert usage is not None
    assert first.usage is not None
    assert usage.total_tokens == first.usage.total_tokens
    assert await upstream_calls(upstream) == 1


# --- who may get a kept answer ----------------------------------------------------------------------


async def test_a_key_that_may_not_use_the_kept_model_does_not_get_its_answer(
    key: str, large_only_key: str, upstream: FakeUpstream
) -> None:
    kept = await post(settled(model="auto"), key=key)
    assert kept.headers["x-muxer-model"] == "fake-small"

    routed = await post(settled(model="auto"), key=large_only_key)
    named = await post(settled(model="fake-small"), key=key)
    refused = await post(settled(model="fake-small"), key=large_only_key)

    assert routed.status == 200
    assert routed.headers["x-muxer-cache"] == "miss"
    assert routed.headers["x-muxer-model"] == "fake-large"
    assert named.headers["x-muxer-cache"] == "miss"  # its own key: the model named, not "auto"
    assert refused.status == 403
    assert refused.error["code"] == "permission_denied"
    assert await upstream_calls(upstream) == 3


async def test_a_masked_hit_gets_its_own_requests_values_back(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org(organization, pii_policy={"email": "mask"})

    first = await post(settled("Mail ann@example.com today"), key=key)
    second = await post(settled("Mail bob@example.org today"), key=key)
    streamed = await post(settled("Mail cy@example.net today", stream=True), key=key)

    # Masked, the three requests are the same one; each answer carries its own address.
    assert second.headers["x-muxer-cache"] == "hit"
    assert streamed.headers["x-muxer-cache"] == "hit"
    assert await upstream_calls(upstream) == 1
    assert answer(first) == "Fake reply to: Mail ann@example.com today"
    assert answer(second) == "Fake reply to: Mail bob@example.org today"
    assert streamed_text(streamed) == "Fake reply to: Mail cy@example.net today"
    last = (await upstream_stats(upstream))["last_request"]["body"]
    assert last["messages"][0]["content"] == "Mail [EMAIL_1] today"


async def test_the_pii_restore_header_leaves_a_hit_masked(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_org(organization, pii_policy={"email": "mask"})
    await post(settled("Mail ann@example.com today"), key=key)

    kept_masked = await post(
        settled("Mail bob@example.org today"), key=key, extra_headers=[(b"x-muxer-pii-restore", b"false")]
    )

    assert kept_masked.headers["x-muxer-cache"] == "hit"
    assert answer(kept_masked) == "Fake reply to: Mail [EMAIL_1] today"


# --- cascades ---------------------------------------------------------------------------------------


async def test_a_cascades_accepted_answer_is_kept(key: str, upstream: FakeUpstream) -> None:
    first = await post(settled("Hello there", model="muxer/cascade"), key=key)
    second = await post(settled("Hello there", model="muxer/cascade"), key=key)

    assert first.headers["x-muxer-cascade"] == "fake-small=1.00"
    assert second.headers["x-muxer-cache"] == "hit"
    assert second.headers["x-muxer-model"] == "fake-small"
    assert answer(second) == answer(first)
    assert await upstream_calls(upstream) == 1


# --- the backend ------------------------------------------------------------------------------------


async def test_a_broken_cache_backend_answers_as_a_miss(
    key: str, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    broken = {
        **settings.CACHES,
        "responses": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    with override_settings(CACHES=broken):
        first = await post(settled(), key=key)
        second = await post(settled(), key=key)

    assert (first.status, second.status) == (200, 200)
    assert (first.headers["x-muxer-cache"], second.headers["x-muxer-cache"]) == ("miss", "miss")
    assert await upstream_calls(upstream) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "routing.response_cache"]
    assert "response cache read failed (ConnectionError); answering without it" in warnings
    assert "response cache write failed (ConnectionError); answer not kept" in warnings


@pytest.mark.redis
async def test_answers_are_kept_in_redis_under_a_key_without_prompt_text(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    from muxer_project.redis import sync_redis

    assert "RedisCache" in settings.CACHES["responses"]["BACKEND"]
    await set_org(organization, response_cache_ttl_seconds=120, pii_policy={"email": "mask"})

    await post(settled("Mail ann@example.com today"), key=key)
    hit = await post(settled("Mail bob@example.org today"), key=key)

    assert hit.headers["x-muxer-cache"] == "hit"
    assert answer(hit) == "Fake reply to: Mail bob@example.org today"
    client = sync_redis()
    [name] = await asyncio.to_thread(lambda: list(client.scan_iter(match="mm:resp:*")))
    assert name.decode().startswith(f"mm:resp:1:chat:{organization.pk}:")
    assert b"Mail" not in name
    assert 100 < await asyncio.to_thread(client.ttl, name) <= 120
    # What is kept is what the provider saw: placeholders, never the values.
    stored = await asyncio.to_thread(client.get, name)
    assert isinstance(stored, bytes)
    assert b"[EMAIL_1]" in stored
    assert b"ann@example.com" not in stored
    assert caches["responses"].get(name.decode().removeprefix("mm:resp:1:")) == stored_entry(stored)


def stored_entry(raw: bytes) -> bytes:
    """django-redis keeps a value pickled; the cache's own read gives back the entry's bytes."""
    import pickle

    value = pickle.loads(raw)
    assert isinstance(value, bytes)
    return value
