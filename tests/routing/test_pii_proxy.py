"""The PII guard on the proxy: each policy action on chat (streamed and not) and /v1/messages, end to end.

The fake upstream answers "Fake reply to: " and the start of the last user
message, and reports the last request it received, so a test sees both what
left the gateway (placeholders, never the values) and what the client got back
(the values again). A second, in-test upstream streams its answer a few
characters at a time, to split placeholders across chunks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web
from django.forms.models import model_to_dict

from accounts.auth import forget_cached_keys
from accounts.models import Organization, User
from billing.budgets import budget_usage
from billing.models import Budget, UsageRecord
from providers.catalog import forget_catalog
from providers.fake_upstream import REPLY_PREFIX, SNIPPET_CHARS
from routing.pii import CompletionStreamRestorer, PIIAction, PIIPolicy, guard
from tests.conftest import FakeUpstream
from tests.factories import issue_key
from tests.routing.harness import Reply, data_chunks, in_thread, post, sse_events, upstream_stats, usage_rows

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "ann@example.com"
PHONE = "+44 20 7946 0958"
RAW = (EMAIL, PHONE)
PROMPT = f"Mail {EMAIL}, call {PHONE}"
MASKED = "Mail [EMAIL_1], call [PHONE_1]"
# What the fake upstream answers to the prompt as it arrives: raw (off, log) or masked.
RAW_REPLY = REPLY_PREFIX + PROMPT[:SNIPPET_CHARS]
MASKED_REPLY = REPLY_PREFIX + MASKED
RESTORED_REPLY = REPLY_PREFIX + PROMPT
FOUND = "email=1,phone=1"
ENDPOINTS = ["chat", "chat-stream", "messages", "messages-stream"]
FAKE_TIERS = ("fake-small", "fake-medium", "fake-large")
PRIVATE_KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----"
)


@pytest.fixture
def key(organization: Organization, owner: User, catalog: None) -> str:
    """Limited to the fake provider's tiers, so routed requests stay on the fake upstream."""
    return issue_key(organization, created_by=owner, allowed_models=FAKE_TIERS).secret


@pytest.fixture
def embedding_key(organization: Organization, owner: User, catalog: None) -> str:
    return issue_key(organization, created_by=owner).secret


async def set_policy(organization: Organization, policy: dict[str, str]) -> None:
    await in_thread(Organization.objects.filter(pk=organization.pk).update, pii_policy=policy)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_raw_value_logged(caplog: pytest.LogCaptureFixture, *values: str) -> None:
    assert caplog.records, "the request logged nothing at all; the check would prove nothing"
    for record in caplog.records:
        text = f"{record.getMessage()} {record.exc_text or ''} {record.stack_info or ''}"
        for value in values:
            assert value not in text, f"{record.name} logged a raw value: {record.getMessage()!r}"


def pii_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "routing.consumers" and "PII found" in r.getMessage()]


async def assert_no_raw_value_in_usage(*values: str) -> list[UsageRecord]:
    rows = await usage_rows()
    for row in rows:
        stored = orjson.dumps(model_to_dict(row), default=str).decode()
        for value in values:
            assert value not in stored
    return rows


# --- talking to the endpoints -------------------------------------------------------------------


async def send(path: str, body: dict[str, Any], *, key: str, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    return await post(body, key=key, path=path, extra_headers=headers)


def anthropic_events(body: bytes) -> list[dict[str, Any]]:
    events = []
    for block in body.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events


async def ask(
    endpoint: str,
    content: str,
    *,
    key: str,
    model: str = "fake-small",
    headers: list[tuple[bytes, bytes]] | None = None,
    **extra: Any,
) -> tuple[Reply, str]:
    """Send ``content`` as the user's message to one endpoint; the reply, and its answer text when it succeeded."""
    stream = endpoint.endswith("-stream")
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    if stream:
        body["stream"] = True
    if endpoint.startswith("messages"):
        body.setdefault("max_tokens", 256)
        reply = await send("/v1/messages", body, key=key, headers=headers)
        if reply.status != 200:
            return reply, ""
        if not stream:
            return reply, "".join(block["text"] for block in reply.json()["content"] if block["type"] == "text")
        deltas = [e["delta"] for e in anthropic_events(reply.body) if e["type"] == "content_block_delta"]
        return reply, "".join(d["text"] for d in deltas if d["type"] == "text_delta")
    reply = await send("/v1/chat/completions", body, key=key, headers=headers)
    if reply.status != 200:
        return reply, ""
    if not stream:
        return reply, reply.json()["choices"][0]["message"]["content"]
    chunks = data_chunks(sse_events(reply.body))
    return reply, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def sent_upstream(upstream: FakeUpstream) -> str:
    """The messages of the last request the fake upstream received, as JSON text."""
    last = (await upstream_stats(upstream))["last_request"]
    assert last is not None, "nothing reached the upstream"
    return json.dumps(last["body"]["messages"], ensure_ascii=False)


# --- each action on each endpoint ---------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_off_sends_and_answers_the_text_untouched_and_logs_nothing_about_it(
    endpoint: str, key: str, organization: Organization, upstream: FakeUpstream, logs: pytest.LogCaptureFixture
) -> None:
    await set_policy(organization, {"default": "off"})

    reply, answer = await ask(endpoint, PROMPT, key=key)

    assert reply.status == 200, reply.body
    assert answer == RAW_REPLY
    assert EMAIL in await sent_upstream(upstream)
    assert "x-muxer-pii" not in reply.headers
    assert pii_log_lines(logs) == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_log_counts_the_entities_and_sends_the_text_untouched(
    endpoint: str, key: str, organization: Organization, upstream: FakeUpstream, logs: pytest.LogCaptureFixture
) -> None:
    await set_policy(organization, {"default": "log"})

    reply, answer = await ask(endpoint, PROMPT, key=key)

    assert reply.status == 200, reply.body
    assert answer == RAW_REPLY
    sent = await sent_upstream(upstream)
    assert EMAIL in sent
    assert PHONE in sent
    assert reply.headers["x-muxer-pii"] == FOUND
    [line] = pii_log_lines(logs)
    assert line == f"request {reply.headers['x-request-id']}: PII found ({FOUND}); log: email, phone"
    assert_no_raw_value_logged(logs, *RAW)
    [row] = await assert_no_raw_value_in_usage(*RAW)
    assert row.pii_detections == {"email": 1, "phone": 1}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_mask_sends_placeholders_and_gives_the_client_the_values_back(
    endpoint: str, key: str, organization: Organization, upstream: FakeUpstream, logs: pytest.LogCaptureFixture
) -> None:
    await set_policy(organization, {"default": "mask"})

    reply, answer = await ask(endpoint, PROMPT, key=key)

    assert reply.status == 200, reply.body
    sent = await sent_upstream(upstream)
    assert MASKED in sent
    assert EMAIL not in sent
    assert PHONE not in sent
    assert answer == RESTORED_REPLY
    assert reply.headers["x-muxer-pii"] == FOUND
    [line] = pii_log_lines(logs)
    assert line.endswith(f"PII found ({FOUND}); mask: email, phone")
    assert_no_raw_value_logged(logs, *RAW)
    [row] = await assert_no_raw_value_in_usage(*RAW)
    assert row.status == "ok"
    assert row.pii_detections == {"email": 1, "phone": 1}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_block_refuses_with_pii_blocked_naming_only_the_types(
    endpoint: str, key: str, organization: Organization, upstream: FakeUpstream, logs: pytest.LogCaptureFixture
) -> None:
    await set_policy(organization, {"default": "log", "email": "block", "phone": "block"})

    reply, _ = await ask(endpoint, PROMPT, key=key)

    assert reply.status == 400
    message = (
        "This organization's PII policy blocks requests containing: email, phone. "
        "Remove them and send the request again."
    )
    if endpoint.startswith("messages"):
        assert reply.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": message, "code": "pii_blocked"},
            "request_id": reply.headers["x-request-id"],
        }
    else:
        assert reply.error == {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "pii_blocked",
        }
    assert reply.headers["x-muxer-pii"] == FOUND
    for value in RAW:
        assert value.encode() not in reply.body
    assert (await upstream_stats(upstream))["requests"] == 0
    assert await usage_rows() == []
    [line] = pii_log_lines(logs)
    assert line.endswith(f"PII found ({FOUND}); block: email, phone")
    assert_no_raw_value_logged(logs, *RAW)


# --- policies, headers and the paths around a call ----------------------------------------------


async def test_each_entity_gets_its_own_action(key: str, organization: Organization, upstream: FakeUpstream) -> None:
    await set_policy(organization, {"default": "mask", "phone": "log", "credit_card": "block"})

    reply, answer = await ask("chat", PROMPT, key=key)

    assert reply.status == 200
    sent = await sent_upstream(upstream)
    assert "Mail [EMAIL_1], call " + PHONE in sent
    assert EMAIL not in sent
    assert answer == RESTORED_REPLY
    assert reply.headers["x-muxer-pii"] == FOUND


async def test_a_blocked_type_refuses_only_when_it_is_present(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_policy(organization, {"default": "log", "credit_card": "block"})

    passed, _ = await ask("chat", PROMPT, key=key)
    refused, _ = await ask("chat", "Charge 4111 1111 1111 1111 please", key=key)

    assert passed.status == 200
    assert (refused.status, refused.error["code"]) == (400, "pii_blocked")
    assert refused.error["message"].startswith(
        "This organization's PII policy blocks requests containing: credit_card."
    )
    assert refused.headers["x-muxer-pii"] == "credit_card=1"


async def test_the_same_value_gets_the_same_placeholder_and_another_value_the_next_one(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_policy(organization, {"default": "mask"})
    body = {
        "model": "fake-small",
        "messages": [
            {"role": "system", "content": f"The account owner is {EMAIL}."},
            {"role": "user", "content": [{"type": "text", "text": f"Write to {EMAIL} and bob@example.org"}]},
        ],
        "user": EMAIL,
    }

    reply = await send("/v1/chat/completions", body, key=key)

    assert reply.status == 200
    last = (await upstream_stats(upstream))["last_request"]["body"]
    assert last["messages"] == [
        {"role": "system", "content": "The account owner is [EMAIL_1]."},
        {"role": "user", "content": [{"type": "text", "text": "Write to [EMAIL_1] and [EMAIL_2]"}]},
    ]
    assert last["user"] == "[EMAIL_1]"
    assert reply.headers["x-muxer-pii"] == "email=4"
    assert reply.json()["choices"][0]["message"]["content"] == f"Fake reply to: Write to {EMAIL} and bob@example.org"


async def test_tool_call_arguments_and_tool_results_are_masked(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_policy(organization, {"default": "mask"})
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": json.dumps({"email": EMAIL})},
    }
    body = {
        "model": "fake-small",
        "messages": [
            {"role": "user", "content": "Who is this?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": f"Ann, phone {PHONE}"},
            {"role": "user", "content": "Thanks"},
        ],
    }

    reply = await send("/v1/chat/completions", body, key=key)

    assert reply.status == 200
    sent = await sent_upstream(upstream)
    assert EMAIL not in sent
    assert PHONE not in sent
    messages = (await upstream_stats(upstream))["last_request"]["body"]["messages"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"email": "[EMAIL_1]"}'
    assert messages[2]["content"] == "Ann, phone [PHONE_1]"


async def test_the_client_may_keep_the_answer_masked(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_policy(organization, {"default": "mask"})

    reply, answer = await ask("chat", PROMPT, key=key, headers=[(b"x-muxer-pii-restore", b"false")])
    streamed, streamed_answer = await ask("chat-stream", PROMPT, key=key, headers=[(b"x-muxer-pii-restore", b"false")])

    assert (reply.status, streamed.status) == (200, 200)
    assert answer == streamed_answer == MASKED_REPLY


async def test_a_bad_restore_header_is_a_precise_400(key: str, upstream: FakeUpstream) -> None:
    reply, _ = await ask("chat", PROMPT, key=key, headers=[(b"x-muxer-pii-restore", b"maybe")])

    assert reply.status == 400
    assert reply.error["param"] == "X-Muxer-PII-Restore"
    assert (await upstream_stats(upstream))["requests"] == 0


async def test_retries_and_fallbacks_send_the_masked_request(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_policy(organization, {"default": "mask"})

    reply, answer = await ask(
        "chat",
        f"{PROMPT} [fake status=503 model=fake-small]",
        key=key,
        headers=[(b"x-muxer-fallbacks", b"fake-medium")],
    )

    assert reply.status == 200, reply.body
    assert reply.headers["x-muxer-model"] == "fake-medium"
    stats = await upstream_stats(upstream)
    assert stats["requests"] >= 2
    assert stats["last_request"]["body"]["model"] == "fake-medium"
    assert EMAIL not in json.dumps(stats["last_request"]["body"])
    assert answer == RESTORED_REPLY


async def test_a_cascade_judges_the_masked_answer_and_restores_the_one_it_sends(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_policy(organization, {"default": "mask"})

    reply, answer = await ask(
        "chat", f"Mail {EMAIL} now [fake model=fake-small refuse=1]", key=key, model="muxer/cascade"
    )

    assert reply.status == 200, reply.body
    assert reply.headers["x-muxer-cascade"].startswith("fake-small=0.10 (refusal);fake-medium=")
    assert answer == f"{REPLY_PREFIX}Mail {EMAIL} now"
    assert EMAIL not in await sent_upstream(upstream)
    rows = await assert_no_raw_value_in_usage(*RAW)
    assert [r.status for r in rows] == ["escalated", "ok"]


async def test_a_routed_request_is_routed_on_the_masked_text(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_policy(organization, {"default": "mask"})

    reply, answer = await ask("chat", PROMPT, key=key, model="auto")

    assert reply.status == 200
    assert answer == RESTORED_REPLY
    rows = await assert_no_raw_value_in_usage(*RAW)
    assert rows[-1].prompt_features, "a routed request keeps the hashed features of its (masked) prompt"


async def test_a_blocked_request_holds_no_budget_and_counts_no_spend(
    key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    budget = await in_thread(
        Budget.objects.create, organization=organization, scope="organization", period="daily", limit_usd=Decimal("1")
    )

    def usage() -> tuple[Decimal, Decimal]:
        found = budget_usage(Budget.objects.select_related("organization").get(pk=budget.pk))
        return found.spent_usd, found.reserved_usd

    # A request that passes first, so the budget's counter exists and shows what a hold would change.
    first, _ = await ask("chat", "Hello gateway", key=key)
    assert first.status == 200
    spent, reserved = await in_thread(usage)
    assert spent > 0
    assert reserved == 0
    await set_policy(organization, {"default": "block"})
    forget_cached_keys()  # the key's identity carries its organization's policy

    reply, _ = await ask("chat", PROMPT, key=key)

    assert (reply.status, reply.error["code"]) == (400, "pii_blocked")
    assert await in_thread(usage) == (spent, 0)
    assert len(await usage_rows()) == 1
    assert (await upstream_stats(upstream))["requests"] == 1


async def test_embeddings_are_masked_or_blocked_by_the_same_policy(
    embedding_key: str, organization: Organization, upstream: FakeUpstream
) -> None:
    await set_policy(organization, {"default": "mask", "credit_card": "block"})

    masked = await send(
        "/v1/embeddings", {"model": "text-embedding-3-small", "input": [PROMPT, "plain"]}, key=embedding_key
    )
    sent = (await upstream_stats(upstream))["last_request"]["body"]["input"]
    refused = await send(
        "/v1/embeddings", {"model": "text-embedding-3-small", "input": "card 4111 1111 1111 1111"}, key=embedding_key
    )

    assert masked.status == 200, masked.body
    assert sent == [MASKED, "plain"]
    assert masked.headers["x-muxer-pii"] == FOUND
    assert refused.status == 400
    assert (refused.error["code"], refused.error["param"]) == ("pii_blocked", "input")
    assert (await upstream_stats(upstream))["requests"] == 1


# --- placeholders split across stream chunks ----------------------------------------------------


@dataclass
class ChunkingUpstream:
    """An OpenAI-format upstream that echoes the last user message, streaming it a few characters at a time.

    With ``tools`` it answers with a call whose arguments are ``{"note": <the message>}``, streamed the same way.
    """

    chunk_chars: int = 3
    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        text = body["messages"][-1]["content"]
        tool = body.get("tools")
        head = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": f"Echo: {text}"}
            if tool:
                arguments = json.dumps({"note": text})
                message = {"role": "assistant", "content": None, "tool_calls": [self._call(arguments)]}
            return web.json_response(
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await event({"role": "assistant", "content": ""})
        if tool:
            arguments = json.dumps({"note": text})
            await event({"tool_calls": [{**self._call(""), "index": 0}]})
            for piece in self._pieces(arguments):
                await event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        else:
            for piece in self._pieces(f"Echo: {text}"):
                await event({"content": piece})
        await event({}, "tool_calls" if tool else "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _pieces(self, text: str) -> list[str]:
        return [text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)]

    @staticmethod
    def _call(arguments: str) -> dict[str, Any]:
        return {"id": "call_echo", "type": "function", "function": {"name": "save", "arguments": arguments}}


@pytest.fixture
async def chunking_upstream(
    catalog: None, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ChunkingUpstream]:
    """The chunking upstream serves the fake provider (fake-small and friends) for this test."""
    fake = ChunkingUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.setenv("MUXER_FAKE_BASE_URL", f"http://127.0.0.1:{port}/v1")
    forget_catalog()
    yield fake
    await runner.cleanup()


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("endpoint", ["chat-stream", "messages-stream"])
async def test_a_placeholder_split_across_chunks_is_restored_whole(
    endpoint: str,
    chunk_chars: int,
    key: str,
    organization: Organization,
    chunking_upstream: ChunkingUpstream,
) -> None:
    await set_policy(organization, {"default": "mask"})
    chunking_upstream.chunk_chars = chunk_chars

    reply, answer = await ask(endpoint, f"{PROMPT} [", key=key)

    assert reply.status == 200, reply.body
    [received] = chunking_upstream.received
    assert received["messages"][-1]["content"] == f"{MASKED} ["
    # The trailing "[" could have begun a placeholder: it is held back, then sent with the finish.
    assert answer == f"Echo: {PROMPT} ["


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_arguments_in_the_answer_are_restored_as_valid_json(
    stream: bool, key: str, organization: Organization, chunking_upstream: ChunkingUpstream
) -> None:
    await set_policy(organization, {"default": "mask"})
    tools = [{"type": "function", "function": {"name": "save", "parameters": {"type": "object"}}}]
    content = f"Keep {EMAIL} and {PRIVATE_KEY}"
    body = {"model": "fake-small", "messages": [{"role": "user", "content": content}], "tools": tools, "stream": stream}

    reply = await send("/v1/chat/completions", body, key=key)

    assert reply.status == 200, reply.body
    [received] = chunking_upstream.received
    assert received["messages"][0]["content"] == "Keep [EMAIL_1] and [SECRET_1]"
    if stream:
        chunks = data_chunks(sse_events(reply.body))
        calls = [call for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or ()]
        arguments = "".join(call["function"]["arguments"] for call in calls)
    else:
        arguments = reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"note": content}


# --- the stream restorer on its own -------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_the_stream_restorer_keeps_choices_apart_and_flushes_each_at_its_finish() -> None:
    restorer = guard([{"role": "user", "content": f"{EMAIL} {PHONE}"}], PIIPolicy(default=PIIAction.MASK)).restorer
    stream = CompletionStreamRestorer(restorer)
    chunks = [
        chunk({"content": "a [EMA"}, index=0),
        chunk({"content": "b [PHO"}, index=1),
        chunk({"content": "IL_1] ["}, index=0),
        chunk({"content": "NE_1]"}, index=1),
        chunk({}, "stop", index=0),
        chunk({}, "stop", index=1),
    ]
    for item in chunks:
        stream.feed(item)

    texts = {0: "", 1: ""}
    for item in chunks:
        choice = item["choices"][0]
        texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == {0: f"a {EMAIL} [", 1: f"b {PHONE}"}
