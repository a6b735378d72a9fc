"""``POST /v1/chat/completions`` through the real ASGI application, in process.

The fake upstream is real (a subprocess speaking OpenAI's wire format); the
gateway runs in this process through Channels' ``HttpCommunicator``. Usage goes
to a per-test Redis stream when ``REDIS_URL`` is set (drained here), and
straight to the database otherwise.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from channels.testing import ApplicationCommunicator
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts import keys
from accounts.models import Organization, User
from billing.models import UsageRecord, UsageStatus
from billing.usage import usage_pending
from muxer_project.asgi import application
from providers.catalog import forget_catalog
from providers.models import Model
from tests.conftest import FakeUpstream, free_port
from tests.routing.harness import (
    HELLO,
    HELLO_REPLY,
    PATH,
    TIMEOUT,
    Reply,
    assert_nothing_recorded,
    audit_count,
    chat,
    data_chunks,
    in_thread,
    post,
    request_headers,
    sse_events,
    upstream_stats,
    usage_rows,
)

pytestmark = pytest.mark.django_db(transaction=True)


# --- validation: 400 before anything is routed or recorded ----------------------

BAD_BODIES = [
    pytest.param(b"{not json", None, "The request body is not valid JSON", id="malformed-json"),
    pytest.param(b'[{"model": "fake-small"}]', None, "The request body must be a JSON object.", id="json-array"),
    pytest.param(b"", None, "The request body is empty; send a JSON object.", id="empty-body"),
    pytest.param(b"   \n", None, "The request body is empty; send a JSON object.", id="blank-body"),
    pytest.param({"model": "fake-small"}, "messages", "'messages' is required.", id="messages-missing"),
    pytest.param(
        {"model": "fake-small", "messages": []},
        "messages",
        "'messages' must be a non-empty array.",
        id="messages-empty",
    ),
    pytest.param(
        {"model": "fake-small", "messages": "hi"},
        "messages",
        "'messages' must be a non-empty array.",
        id="messages-str",
    ),
    pytest.param(
        {"model": "fake-small", "messages": [{"role": "wizard", "content": "hi"}]},
        "messages[0].role",
        "'messages[0].role' must be one of ['assistant', 'developer', 'function', 'system', 'tool', 'user'].",
        id="bad-role",
    ),
    pytest.param(chat(temperature="0.5"), "temperature", "'temperature' must be a number.", id="temperature-str"),
    pytest.param(
        chat(temperature=2.5), "temperature", "'temperature' must be between 0 and 2; got 2.5.", id="temperature-range"
    ),
    pytest.param(chat(max_tokens=0), "max_tokens", "'max_tokens' must be a positive integer.", id="max-tokens-zero"),
    pytest.param(chat(max_tokens=True), "max_tokens", "'max_tokens' must be a positive integer.", id="max-tokens-bool"),
    pytest.param(chat(stream="true"), "stream", "'stream' must be a boolean.", id="stream-str"),
    pytest.param(chat(frobnicate=1), "frobnicate", "Unrecognized request argument supplied: frobnicate", id="unknown"),
    pytest.param({"messages": [{"role": "user", "content": "hi"}]}, "model", "'model' is required.", id="no-model"),
    pytest.param(chat(tools=["get_weather"]), "tools[0]", "'tools[0]' must be", id="tool-not-an-object"),
]


@pytest.mark.parametrize(("body", "param", "message"), BAD_BODIES)
async def test_it_rejects_an_invalid_body_with_the_offending_param(
    body: Any, param: str | None, message: str, api_key: str, upstream: FakeUpstream
) -> None:
    audit_before = await audit_count()
    reply = await post(body, key=api_key)

    assert reply.status == 400
    assert reply.headers["content-type"] == "application/json"
    assert reply.error["type"] == "invalid_request_error"
    assert reply.error["code"] == "invalid_request_error"
    assert reply.error["param"] == param
    assert reply.error["message"].startswith(message)
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_it_refuses_a_body_over_the_limit_from_its_content_length_before_reading_it(
    api_key: str, settings: SettingsWrapper
) -> None:
    audit_before = await audit_count()
    settings.MUXER_MAX_BODY_BYTES = 64
    body = orjson.dumps(chat("x" * 100))
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": PATH,
            "query_string": b"",
            "headers": request_headers(api_key, body, content_length=True),
        },
    )
    # No body is sent at all: the header alone must be enough to answer.
    start = await communicator.receive_output(timeout=TIMEOUT)
    end = await communicator.receive_output(timeout=TIMEOUT)
    await communicator.wait(timeout=TIMEOUT)

    assert start["status"] == 413
    assert orjson.loads(end["body"]) == {
        "error": {
            "message": "The request body is larger than the gateway's limit of 64 bytes.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }
    await assert_nothing_recorded(audit_before)


async def test_it_refuses_a_body_over_the_limit_without_a_content_length(
    api_key: str, settings: SettingsWrapper
) -> None:
    audit_before = await audit_count()
    settings.MUXER_MAX_BODY_BYTES = 64

    reply = await post(chat("x" * 100), key=api_key, content_length=False)

    assert reply.status == 413
    assert reply.error["code"] == "request_too_large"
    assert reply.error["type"] == "invalid_request_error"
    assert reply.error["message"] == "The request body is larger than the gateway's limit of 64 bytes."
    await assert_nothing_recorded(audit_before)


async def test_it_accepts_a_body_exactly_at_the_limit(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    body = orjson.dumps(chat())
    settings.MUXER_MAX_BODY_BYTES = len(body)

    reply = await post(body, key=api_key)

    assert reply.status == 200


async def test_it_answers_405_with_an_allow_header_to_get(api_key: str) -> None:
    audit_before = await audit_count()
    reply = await post(b"", key=api_key, method="GET")

    assert reply.status == 405
    assert reply.headers["allow"] == "POST"
    assert reply.error == {
        "message": "GET is not allowed here; use POST.",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    await assert_nothing_recorded(audit_before)


# --- routing refusals -----------------------------------------------------------


async def test_it_answers_404_for_an_unknown_model(api_key: str, upstream: FakeUpstream) -> None:
    audit_before = await audit_count()
    reply = await post(chat(model="no-such-model"), key=api_key)

    assert reply.status == 404
    assert reply.error == {
        "message": "The model 'no-such-model' does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_it_answers_403_for_a_model_the_key_may_not_use(limited_key: str, upstream: FakeUpstream) -> None:
    audit_before = await audit_count()

    reply = await post(chat(model="fake-small"), key=limited_key)

    assert reply.status == 403
    assert reply.error == {
        "message": "This API key may not use the model 'fake-small'.",
        "type": "invalid_request_error",
        "param": None,
        "code": "permission_denied",
    }
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_it_answers_400_for_a_provider_without_credentials(api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    audit_before = await audit_count()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    forget_catalog()

    reply = await post(chat(model="gpt-4o-mini"), key=api_key)

    assert reply.status == 400
    assert reply.error == {
        "message": "The model 'gpt-4o-mini' is not available on this gateway: 'openai' is not configured.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_available",
    }
    await assert_nothing_recorded(audit_before)


async def test_it_serves_a_provider_model_once_the_provider_has_a_key(
    api_key: str, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai")
    monkeypatch.setenv("MUXER_OPENAI_BASE_URL", upstream.base_url)
    forget_catalog()

    reply = await post(chat(model="gpt-4o-mini"), key=api_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-provider"] == "openai"
    # 4 prompt tokens at $0.15/M + 5 completion tokens at $0.60/M.
    assert reply.headers["x-muxer-cost-usd"] == "0.0000036000"
    assert (await upstream_stats(upstream))["last_request"]["body"]["model"] == "gpt-4o-mini"


# --- authentication -------------------------------------------------------------


async def assert_unauthorized(reply: Reply, message: str, *secrets: str) -> None:
    assert reply.status == 401
    assert reply.error == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    for secret in secrets:
        assert secret.encode() not in reply.body
        assert all(secret not in value for value in reply.headers.values())


async def test_it_answers_401_without_a_key(catalog: None, upstream: FakeUpstream) -> None:
    reply = await post(chat(), key=None)

    await assert_unauthorized(
        reply, "You didn't provide an API key. Send it in the Authorization header as 'Bearer mm_live_...'."
    )
    assert (await upstream_stats(upstream))["requests"] == 0
    assert await usage_rows() == []


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("sk-proj-not-a-muxer-key-0123456789", id="foreign-format"),
        pytest.param("mm_live_" + "A" * 38, id="bad-checksum"),
        pytest.param("mm_live_short", id="too-short"),
    ],
)
async def test_it_answers_401_for_a_malformed_key_without_echoing_it(token: str, catalog: None) -> None:
    audit_before = await audit_count()
    reply = await post(chat(), key=token)

    await assert_unauthorized(reply, "The API key is malformed. ModelMuxer keys look like 'mm_live_...'.", token)
    await assert_nothing_recorded(audit_before)


async def test_it_answers_401_for_a_non_bearer_authorization(api_key: str) -> None:
    audit_before = await audit_count()
    reply = await post(chat(), key=None, authorization=f"Basic {api_key}".encode())

    await assert_unauthorized(reply, "The Authorization header must be 'Bearer <API key>'.", api_key)
    await assert_nothing_recorded(audit_before)


async def test_it_answers_401_for_an_unknown_key_without_echoing_it(catalog: None, upstream: FakeUpstream) -> None:
    audit_before = await audit_count()
    unknown = keys.generate_key()

    reply = await post(chat(), key=unknown)

    await assert_unauthorized(reply, "Incorrect API key provided.", unknown)
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_it_answers_401_for_a_key_with_the_right_prefix_but_wrong_secret(api_key: str) -> None:
    audit_before = await audit_count()
    body = api_key[: keys.KEY_LENGTH - keys.CHECKSUM_LENGTH - 1]
    body += "b" if api_key[len(body)] != "b" else "c"
    forged = body + keys._checksum(body)
    assert keys.lookup_prefix(forged) == keys.lookup_prefix(api_key)

    reply = await post(chat(), key=forged)

    await assert_unauthorized(reply, "Incorrect API key provided.", forged, api_key)
    await assert_nothing_recorded(audit_before)


async def test_it_answers_401_for_a_revoked_key(revoked_key: str, upstream: FakeUpstream) -> None:
    audit_before = await audit_count()

    reply = await post(chat(), key=revoked_key)

    await assert_unauthorized(reply, "This API key has been revoked.", revoked_key)
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_it_answers_401_for_an_expired_key(expired_key: str, upstream: FakeUpstream) -> None:
    audit_before = await audit_count()

    reply = await post(chat(), key=expired_key)

    await assert_unauthorized(reply, "This API key has expired.", expired_key)
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


# --- success ----------------------------------------------------------------------


async def test_it_answers_a_chat_completion_with_the_upstreams_reply(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(), key=api_key)

    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "fake-small"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": HELLO_REPLY, "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (4, 5)


async def test_it_sends_muxer_headers_naming_model_provider_and_route(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(), key=api_key)

    assert reply.headers["x-muxer-model"] == "fake-small"
    assert reply.headers["x-muxer-provider"] == "fake"
    assert reply.headers["x-muxer-route-reason"] == "explicit"
    assert float(reply.headers["x-muxer-overhead-ms"]) >= 0


async def test_it_records_one_usage_row_keyed_by_the_request_id(
    api_key: str, upstream: FakeUpstream, organization: Organization, owner: User
) -> None:
    reply = await post(chat(), key=api_key)

    [row] = await usage_rows()
    assert reply.headers["x-request-id"].startswith("req_")
    assert row.request_id == reply.headers["x-request-id"]
    assert row.organization_id == organization.pk
    assert row.user_id == owner.pk
    assert (row.model, row.provider) == ("fake-small", "fake")
    assert (row.input_tokens, row.output_tokens, row.cached_input_tokens, row.reasoning_tokens) == (4, 5, 0, 0)
    assert (row.status, row.http_status, row.error_code) == (UsageStatus.OK, 200, "")
    assert row.stream is False
    assert row.usage_estimated is False


async def test_the_cost_header_is_the_recorded_cost_and_the_catalog_price(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(), key=api_key)

    header = Decimal(reply.headers["x-muxer-cost-usd"])
    [row] = await usage_rows()
    prices = await in_thread(Model.objects.get, name="fake-small")
    expected = (4 * prices.input_price_per_mtok_usd + 5 * prices.output_price_per_mtok_usd) / Decimal(1_000_000)
    assert reply.headers["x-muxer-cost-usd"] == "0.0000001400"
    assert header == expected == Decimal("0.00000014")
    assert row.cost_usd == header


async def test_it_forwards_the_catalog_model_name_and_drops_stream_flags(api_key: str, upstream: FakeUpstream) -> None:
    await post(chat(stream=False, temperature=0.2), key=api_key)

    last = (await upstream_stats(upstream))["last_request"]
    assert (last["method"], last["path"]) == ("POST", "/v1/chat/completions")
    assert last["body"] == {"model": "fake-small", "messages": [{"role": "user", "content": HELLO}], "temperature": 0.2}


async def test_auto_picks_the_cheapest_configured_model(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(model="auto"), key=api_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-model"] == "fake-small"
    assert reply.headers["x-muxer-route-reason"].startswith("hybrid: ")
    assert reply.json()["model"] == "fake-small"
    assert (await upstream_stats(upstream))["last_request"]["body"]["model"] == "fake-small"
    [row] = await usage_rows()
    assert row.model == "fake-small"


async def test_auto_picks_among_the_models_the_key_may_use(limited_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat(model="auto"), key=limited_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-model"] == "fake-large"


@pytest.mark.redis
async def test_with_redis_the_proxy_queues_usage_instead_of_writing_it(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    reply = await post(chat(), key=api_key)

    assert await in_thread(usage_pending) == 1
    assert await in_thread(UsageRecord.objects.count) == 0
    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert await in_thread(usage_pending) == 0


# --- streaming ----------------------------------------------------------------------


async def test_a_stream_is_framed_as_server_sent_events_ending_in_done(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("Stream this please", stream=True), key=api_key)

    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.headers["cache-control"] == "no-cache"
    events = sse_events(reply.body)
    assert events[-1] == b"data: [DONE]"
    chunks = data_chunks(events)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Fake reply to: Stream this please"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"fake-small"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_stream_without_include_usage_carries_no_usage(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("Stream this please", stream=True), key=api_key)

    chunks = data_chunks(sse_events(reply.body))
    assert chunks
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


async def test_a_stream_with_include_usage_ends_with_a_usage_chunk(api_key: str, upstream: FakeUpstream) -> None:
    body = chat("Stream this please", stream=True, stream_options={"include_usage": True})

    reply = await post(body, key=api_key)

    chunks = data_chunks(sse_events(reply.body))
    *content, last = chunks
    assert all(c["usage"] is None for c in content)
    assert last["choices"] == []
    assert last["model"] == "fake-small"
    # "Stream this please": 18 characters -> 5 prompt tokens; the reply is 6 words.
    assert (last["usage"]["prompt_tokens"], last["usage"]["completion_tokens"], last["usage"]["total_tokens"]) == (
        5,
        6,
        11,
    )


async def test_the_gateway_always_asks_the_upstream_for_stream_usage(api_key: str, upstream: FakeUpstream) -> None:
    await post(chat("Stream this please", stream=True), key=api_key)

    body = (await upstream_stats(upstream))["last_request"]["body"]
    assert body["model"] == "fake-small"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_a_stream_records_the_reported_usage_and_its_cost(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("Stream this please", stream=True), key=api_key)

    events = sse_events(reply.body)
    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.status, row.http_status, row.stream) == (UsageStatus.OK, 200, True)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (5, 6, False)
    # 5 x $0.01/M + 6 x $0.02/M, announced in an SSE comment just before [DONE].
    assert row.cost_usd == Decimal("0.00000017")
    assert events[-2] == b": x-muxer-cost-usd=0.0000001700"


# --- upstream failures --------------------------------------------------------------


async def test_an_upstream_5xx_becomes_a_502_and_an_error_usage_row(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("[fake status=503] hi"), key=api_key)

    assert reply.status == 502
    assert reply.error == {
        "message": "fake failed with HTTP 503.",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_error",
    }
    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.status, row.http_status, row.error_code) == (UsageStatus.ERROR, 502, "upstream_error")
    assert (row.input_tokens, row.output_tokens, row.cost_usd) == (0, 0, Decimal(0))


async def test_an_upstream_5xx_on_a_stream_is_a_json_502_not_an_event_stream(
    api_key: str, upstream: FakeUpstream
) -> None:
    reply = await post(chat("[fake status=503] hi", stream=True), key=api_key)

    assert reply.status == 502
    assert reply.headers["content-type"] == "application/json"
    assert reply.error["code"] == "upstream_error"
    [row] = await usage_rows()
    assert (row.status, row.http_status, row.stream) == (UsageStatus.ERROR, 502, True)


async def test_an_upstream_429_becomes_a_503_with_its_retry_after(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("[fake status=429 retry_after=7] hi"), key=api_key)

    assert reply.status == 503
    assert reply.headers["retry-after"] == "7"
    assert reply.error == {
        "message": "fake is rate limiting the gateway (HTTP 429).",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_error",
    }
    [row] = await usage_rows()
    assert (row.status, row.http_status) == (UsageStatus.ERROR, 503)


async def test_an_upstream_400_is_passed_on_with_the_providers_message(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("[fake status=400] hi"), key=api_key)

    assert reply.status == 400
    assert reply.error == {
        "message": "fake rejected the request: Injected fake bad request.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request_error",
    }
    [row] = await usage_rows()
    assert (row.status, row.http_status) == (UsageStatus.ERROR, 400)


async def test_an_upstream_401_is_a_502_that_hides_the_providers_message(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("[fake status=401] hi"), key=api_key)

    assert reply.status == 502
    assert reply.error == {
        "message": "fake refused the gateway's credentials (HTTP 401).",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_error",
    }
    assert b"Incorrect API key" not in reply.body
    assert b"sk-fake" not in reply.body
    [row] = await usage_rows()
    assert (row.status, row.http_status) == (UsageStatus.ERROR, 502)


async def test_a_mid_stream_failure_forwards_the_error_event_and_records_an_error(
    api_key: str, upstream: FakeUpstream
) -> None:
    prompt = "[fake fail_after_chunks=2] hi"

    reply = await post(chat(prompt, stream=True), key=api_key)

    assert reply.status == 200  # the response had begun when the upstream failed
    events = sse_events(reply.body)
    assert b"data: [DONE]" not in events
    assert not any(e.startswith(b": x-muxer-cost-usd") for e in events)
    *content, failure = data_chunks(events)
    assert [c["choices"][0]["delta"] for c in content] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Fake "},
    ]
    assert failure == {
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    }
    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.status, row.http_status, row.error_code) == (UsageStatus.ERROR, 502, "server_error")
    # No usage came from upstream: estimated from 29 prompt characters (+4 per message) and "Fake ".
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (12, 2, True)
    assert row.stream is True


async def test_an_unreachable_upstream_is_a_502_and_an_error_usage_row(
    api_key: str, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUXER_FAKE_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    forget_catalog()

    reply = await post(chat(), key=api_key)

    assert reply.status == 502
    assert reply.error["type"] == "upstream_error"
    assert reply.error["code"] == "upstream_error"
    assert reply.error["message"] == "Could not reach fake: ClientConnectorError."
    assert (await upstream_stats(upstream))["requests"] == 0
    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.status, row.http_status, row.error_code) == (UsageStatus.ERROR, 502, "upstream_error")


async def test_an_upstream_that_does_not_answer_in_time_is_a_504(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_UPSTREAM_TIMEOUT_SECONDS = 0.2

    reply = await post(chat("[fake latency_ms=2000] hi"), key=api_key)

    assert reply.status == 504
    assert reply.error == {
        "message": "fake did not answer in time.",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_timeout",
    }
    [row] = await usage_rows()
    assert (row.status, row.http_status, row.error_code) == (UsageStatus.ERROR, 504, "upstream_timeout")
