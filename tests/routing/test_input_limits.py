"""Input limits on the proxy: message count, estimated input tokens, the named model's context window, body size.

Each refusal is a 400 (a 413 for the body) in the endpoint's error shape,
before any provider call, usage row or budget hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import Organization, User
from providers.catalog import forget_catalog
from providers.models import Model
from tests.conftest import FakeUpstream
from tests.factories import issue_key
from tests.routing.harness import Reply, assert_nothing_recorded, audit_count, in_thread, post, upstream_stats

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_TIERS = ("fake-small", "fake-medium", "fake-large")


@pytest.fixture
def key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner, allowed_models=FAKE_TIERS).secret


@pytest.fixture
def embedding_key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner).secret


async def send(path: str, body: dict[str, Any], *, key: str) -> Reply:
    return await post(body, key=key, path=path)


def turns(count: int) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(count)]


def openai_error(reply: Reply, message: str, code: str, param: str) -> None:
    assert reply.status == 400, reply.body
    assert reply.error == {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def anthropic_error(reply: Reply, message: str, code: str) -> None:
    assert reply.status == 400, reply.body
    assert reply.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message, "code": code},
        "request_id": reply.headers["x-request-id"],
    }


async def shrink_context_window(name: str, tokens: int) -> None:
    await in_thread(Model.objects.filter(name=name).update, context_window=tokens)
    forget_catalog()


# --- message count ------------------------------------------------------------------------------


async def test_chat_refuses_more_messages_than_the_limit(
    key: str, settings: SettingsWrapper, upstream: FakeUpstream
) -> None:
    settings.MUXER_MAX_MESSAGES = 3
    audit_before = await audit_count()

    reply = await send("/v1/chat/completions", {"model": "fake-small", "messages": turns(5)}, key=key)

    openai_error(reply, "The request has 5 messages; the gateway accepts at most 3.", "too_many_messages", "messages")
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_chat_takes_exactly_the_limit(key: str, settings: SettingsWrapper, upstream: FakeUpstream) -> None:
    settings.MUXER_MAX_MESSAGES = 3

    reply = await send("/v1/chat/completions", {"model": "fake-small", "messages": turns(3)}, key=key)

    assert reply.status == 200, reply.body


async def test_messages_counts_the_clients_turns_not_the_system_prompt(
    key: str, settings: SettingsWrapper, upstream: FakeUpstream
) -> None:
    settings.MUXER_MAX_MESSAGES = 3
    body = {"model": "fake-small", "max_tokens": 64, "system": "Be brief.", "messages": turns(3)}

    fits = await send("/v1/messages", body, key=key)
    refused = await send("/v1/messages", {**body, "messages": turns(5)}, key=key)

    assert fits.status == 200, fits.body
    anthropic_error(refused, "The request has 5 messages; the gateway accepts at most 3.", "too_many_messages")
    assert (await upstream_stats(upstream))["requests"] == 1


# --- input tokens -------------------------------------------------------------------------------


async def test_chat_refuses_input_over_the_gateways_token_cap(
    key: str, settings: SettingsWrapper, upstream: FakeUpstream
) -> None:
    settings.MUXER_MAX_INPUT_TOKENS = 20
    audit_before = await audit_count()
    # 100 characters are 25 tokens, and the message's own 4.
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "x" * 100}]}

    reply = await send("/v1/chat/completions", body, key=key)

    openai_error(
        reply,
        "The request's input comes to about 29 tokens; the gateway accepts at most 20.",
        "context_length_exceeded",
        "messages",
    )
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_the_token_cap_applies_to_routed_requests_too(
    key: str, settings: SettingsWrapper, upstream: FakeUpstream
) -> None:
    settings.MUXER_MAX_INPUT_TOKENS = 20

    reply = await send(
        "/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "x" * 100}]}, key=key
    )

    assert (reply.status, reply.error["code"]) == (400, "context_length_exceeded")
    assert (await upstream_stats(upstream))["requests"] == 0


async def test_embeddings_refuse_input_over_the_gateways_token_cap(
    embedding_key: str, settings: SettingsWrapper, upstream: FakeUpstream
) -> None:
    settings.MUXER_MAX_INPUT_TOKENS = 20

    reply = await send(
        "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["x" * 40, "y" * 44]}, key=embedding_key
    )

    openai_error(
        reply,
        "The request's input comes to about 21 tokens; the gateway accepts at most 20.",
        "context_length_exceeded",
        "input",
    )
    assert (await upstream_stats(upstream))["requests"] == 0


# --- the model's context window -----------------------------------------------------------------


async def test_chat_refuses_a_prompt_beyond_the_named_models_context_window(key: str, upstream: FakeUpstream) -> None:
    await shrink_context_window("fake-small", 50)
    audit_before = await audit_count()
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "x" * 200}]}

    reply = await send("/v1/chat/completions", body, key=key)

    openai_error(
        reply,
        "The model 'fake-small' has a context window of 50 tokens, but this request needs about 54 "
        "(54 in the messages). Shorten the input or the completion.",
        "context_length_exceeded",
        "messages",
    )
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_the_completions_max_tokens_counts_against_the_window(key: str, upstream: FakeUpstream) -> None:
    await shrink_context_window("fake-small", 50)
    body = {"model": "fake-small", "messages": [{"role": "user", "content": "x" * 80}], "max_tokens": 30}

    fits = await send("/v1/chat/completions", {**body, "max_tokens": 26}, key=key)
    refused = await send("/v1/chat/completions", body, key=key)

    assert fits.status == 200, fits.body
    openai_error(
        refused,
        "The model 'fake-small' has a context window of 50 tokens, but this request needs about 54 "
        "(24 in the messages, 30 for the completion). Shorten the input or the completion.",
        "context_length_exceeded",
        "messages",
    )


async def test_messages_refuses_a_prompt_beyond_the_models_context_window(key: str, upstream: FakeUpstream) -> None:
    await shrink_context_window("fake-small", 50)
    body = {"model": "fake-small", "max_tokens": 10, "messages": [{"role": "user", "content": "x" * 200}]}

    reply = await send("/v1/messages", body, key=key)

    anthropic_error(
        reply,
        "The model 'fake-small' has a context window of 50 tokens, but this request needs about 64 "
        "(54 in the messages, 10 for the completion). Shorten the input or the completion.",
        "context_length_exceeded",
    )
    assert (await upstream_stats(upstream))["requests"] == 0


async def test_a_routed_request_goes_to_a_model_whose_window_fits(key: str, upstream: FakeUpstream) -> None:
    await shrink_context_window("fake-small", 50)

    reply = await send(
        "/v1/chat/completions",
        {"model": "muxer/heuristic", "messages": [{"role": "user", "content": "x" * 200}]},
        key=key,
    )

    assert reply.status == 200, reply.body
    assert reply.headers["x-muxer-model"] in ("fake-medium", "fake-large")


# --- body size ----------------------------------------------------------------------------------
# Chat and messages have theirs in test_proxy.py and test_messages.py; embeddings share the consumer base.


async def test_embeddings_refuse_a_body_over_the_size_limit(
    embedding_key: str, settings: SettingsWrapper, upstream: FakeUpstream
) -> None:
    settings.MUXER_MAX_BODY_BYTES = 64

    reply = await send("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x" * 100}, key=embedding_key)

    assert reply.status == 413
    assert reply.error["code"] == "request_too_large"
    assert (await upstream_stats(upstream))["requests"] == 0
