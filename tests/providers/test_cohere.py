"""The Cohere v2 adapter: golden translations both ways, streaming, errors, and the proxy end to end.

Golden fixtures for Cohere's side use the shapes of its API reference
(``/work/shared/PROVIDER_WIRE_FORMATS.md`` §7); the OpenAI side is checked
against the ``openai`` SDK's own types where a shape matters to clients.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.conf import settings
from django.db import connections
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pytest_django.fixtures import Settings as SettingsWrapper

from billing.models import UsageRecord, UsageStatus
from billing.usage import usage_drain
from muxer_project import redis as muxer_redis
from muxer_project.asgi import application
from providers.adapters import ProviderError, StreamProgress, Usage, adapter_for
from providers.adapters.cohere import (
    CohereAdapter,
    CohereChatStream,
    StreamTranslator,
    chat_body,
    chat_result,
    error_from_response,
    usage_from_cohere,
)
from providers.catalog import CatalogModel
from providers.http import close_http_client
from tests.conftest import FakeUpstream

MODEL_NAME = "command-r-08-2024"
COHERE_ID = "c14c80c3-18eb-4519-9460-6c92edd8cfb4"
CHAT_ID = "chatcmpl-c14c80c318eb451994606c92edd8cfb4"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
# "Hello gateway": 13 characters -> 4 billed input tokens; the reply is 5 words.
HELLO = "Hello gateway"
HELLO_REPLY = "Fake reply to: Hello gateway"


def catalog_model(base_url: str = "https://api.cohere.com/v2", credential: str | None = "co-test-key") -> CatalogModel:
    return CatalogModel(
        name=MODEL_NAME,
        kind="chat",
        provider="cohere",
        wire_format="cohere",
        base_url=base_url,
        credential=credential,
        input_price_per_mtok_usd=Decimal("0.15"),
        output_price_per_mtok_usd=Decimal("0.60"),
        cached_input_price_per_mtok_usd=None,
        context_window=128_000,
        max_output_tokens=4_000,
        supports_streaming=True,
        supports_tools=True,
        supports_vision=False,
        supports_json_mode=True,
        created=0,
    )


MODEL = catalog_model()


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def body_for(*messages: dict[str, Any], stream: bool = False, **params: Any) -> dict[str, Any]:
    return chat_body(MODEL, {"model": MODEL_NAME, "messages": list(messages), **params}, stream=stream)


def assert_rejected(error: ProviderError, message: str, code: str = "unsupported_parameter") -> None:
    assert (error.status, error.retryable, error.type, error.code) == (400, False, "invalid_request_error", code)
    assert error.message == message


@pytest.fixture(autouse=True)
async def _close_loop_clients() -> AsyncIterator[None]:
    """Each test has its own event loop; close the HTTP transport opened on it."""
    yield
    await close_http_client()


# --- the adapter is registered ------------------------------------------------------


def test_the_registry_serves_cohere_models_with_the_cohere_adapter() -> None:
    assert isinstance(adapter_for(MODEL), CohereAdapter)


def test_it_posts_to_the_chat_path_with_bearer_auth() -> None:
    adapter = CohereAdapter()

    assert adapter.url(MODEL) == "https://api.cohere.com/v2/chat"
    assert adapter.headers(MODEL, stream=False) == {
        "authorization": "Bearer co-test-key",
        "content-type": "application/json",
        "accept": "application/json",
    }
    assert adapter.headers(MODEL, stream=True)["accept"] == "text/event-stream"


# --- OpenAI request -> Cohere request (golden) -------------------------------------------


def test_a_plain_request_becomes_the_catalog_model_and_its_messages() -> None:
    assert body_for(user("Hi")) == {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]}


def test_a_stream_request_sets_stream_and_drops_stream_options() -> None:
    body = body_for(user("Hi"), stream=True, stream_options={"include_usage": True})

    assert body == {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "stream": True}


def test_system_and_developer_messages_become_one_leading_system_turn() -> None:
    body = body_for(
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        {"role": "developer", "content": [{"type": "text", "text": "Answer "}, {"type": "text", "text": "in French."}]},
    )

    assert body["messages"] == [
        {"role": "system", "content": "Be brief.\n\nAnswer in French."},
        {"role": "user", "content": "Hi"},
    ]


def test_user_text_and_image_parts_keep_their_shape() -> None:
    body = body_for(
        user(
            [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ]
        )
    )

    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]


def test_a_tool_loop_keeps_openai_shaped_calls_and_tool_results() -> None:
    body = body_for(
        user("Weather in Paris?"),
        {
            "role": "assistant",
            "content": "Let me look that up.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "assistant", "content": "It is 18C and sunny."},
        user("Thanks"),
    )

    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_plan": "Let me look that up.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "assistant", "content": "It is 18C and sunny."},
        {"role": "user", "content": "Thanks"},
    ]


def test_an_assistant_tool_call_without_text_has_no_tool_plan() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}

    body = body_for(user("Time?"), {"role": "assistant", "content": None, "tool_calls": [call]})

    assert body["messages"][1] == {"role": "assistant", "tool_calls": [call]}


def test_tool_result_text_parts_stay_text_parts() -> None:
    body = body_for({"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18C"}]})

    assert body["messages"] == [
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18C"}]}
    ]


def test_tools_are_sent_openai_shaped_and_auto_choice_is_omitted() -> None:
    body = body_for(user("Hi"), tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="auto")

    assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]
    assert "tool_choice" not in body


def test_a_tool_without_a_parameter_schema_gets_an_empty_object_schema() -> None:
    body = body_for(user("Hi"), tools=[{"type": "function", "function": {"name": "ping"}}])

    assert body["tools"] == [
        {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}
    ]


@pytest.mark.parametrize(("choice", "expected"), [("required", "REQUIRED"), ("none", "NONE")])
def test_tool_choice_required_and_none_are_cohere_enums(choice: str, expected: str) -> None:
    body = body_for(user("Hi"), tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=choice)

    assert body["tool_choice"] == expected
    assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]


def test_a_named_tool_choice_requires_a_call_with_only_that_tool_offered() -> None:
    body = body_for(
        user("Hi"), tools=[WEATHER_TOOL, TIME_TOOL], tool_choice={"type": "function", "function": {"name": "get_time"}}
    )

    assert body["tool_choice"] == "REQUIRED"
    assert body["tools"] == [TIME_TOOL]


def test_a_named_tool_choice_for_an_unknown_tool_is_a_400() -> None:
    with pytest.raises(ProviderError) as caught:
        body_for(user("Hi"), tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "nope"}})

    assert_rejected(caught.value, "'tool_choice' names 'nope', which is not in 'tools'.", "invalid_request_error")


def test_a_strict_tool_makes_cohere_tools_strict_and_leaves_the_flag_out_of_the_function() -> None:
    strict = {"type": "function", "function": {**TIME_TOOL["function"], "strict": True}}

    body = body_for(user("Hi"), tools=[WEATHER_TOOL, strict])

    assert body["strict_tools"] is True
    assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]


def test_sampling_parameters_are_renamed() -> None:
    body = body_for(
        user("Hi"),
        max_tokens=500,
        max_completion_tokens=100,
        stop="END",
        temperature=0.2,
        top_p=0.9,
        seed=7,
        frequency_penalty=0.5,
        presence_penalty=0,
    )

    assert body == {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "p": 0.9,
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.0,
    }


def test_a_stop_list_is_sent_as_stop_sequences() -> None:
    assert body_for(user("Hi"), stop=["END", "\n\n"])["stop_sequences"] == ["END", "\n\n"]


@pytest.mark.parametrize(("top_p", "p"), [(1, 0.99), (1.0, 0.99), (0, 0.01), (0.5, 0.5)])
def test_top_p_is_kept_within_coheres_range_for_p(top_p: float, p: float) -> None:
    assert body_for(user("Hi"), top_p=top_p)["p"] == p


@pytest.mark.parametrize("name", ["frequency_penalty", "presence_penalty"])
def test_a_negative_penalty_is_a_400_since_cohere_only_accepts_0_to_1(name: str) -> None:
    with pytest.raises(ProviderError) as caught:
        chat_body(MODEL, {"model": MODEL_NAME, "messages": [user("Hi")], name: -0.5}, stream=False)

    assert_rejected(caught.value, f"cohere accepts '{name}' between 0 and 1 only; got -0.5.", "invalid_request_error")


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True}},
            {"type": "json_object", "json_schema": {"type": "object"}},
        ),
        ({"type": "json_schema", "json_schema": {"name": "anything"}}, {"type": "json_object"}),
    ],
    ids=["json-object", "json-schema", "json-schema-without-schema"],
)
def test_json_mode_becomes_cohere_json_object(response_format: dict[str, Any], expected: dict[str, Any]) -> None:
    assert body_for(user("Hi"), response_format=response_format)["response_format"] == expected


def test_a_text_response_format_is_left_out() -> None:
    assert "response_format" not in body_for(user("Hi"), response_format={"type": "text"})


def test_parameters_without_a_cohere_equivalent_are_dropped() -> None:
    body = body_for(
        user("Hi"),
        user="end-user-1",
        n=1,
        logprobs=True,
        top_logprobs=2,
        parallel_tool_calls=False,
        reasoning_effort="low",
        metadata={"a": "b"},
        store=True,
        service_tier="auto",
        verbosity="low",
        prompt_cache_key="k",
        safety_identifier="s",
        prediction={"type": "content", "content": "x"},
        modalities=["text"],
    )

    assert body == {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n": 2}, "cohere does not support n > 1 (it returns one choice per request)."),
        ({"logit_bias": {"50256": -100}},
         "cohere does not support 'logit_bias' (token ids are specific to OpenAI's tokenizers)."),
        ({"functions": [{"name": "f"}]}, "cohere does not support the legacy 'functions' parameter; use 'tools'."),
        ({"function_call": "auto"}, "cohere does not support the legacy 'function_call' parameter; use 'tool_choice'."),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "cohere does not support audio output."),
        ({"modalities": ["text", "audio"]}, "cohere does not support audio output."),
        ({"web_search_options": {}}, "cohere does not support web search."),
    ],
    ids=["n", "logit-bias", "functions", "function-call", "audio", "audio-modality", "web-search"],
)  # fmt: skip
def test_parameters_that_would_change_the_answer_if_dropped_are_a_400(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ProviderError) as caught:
        body_for(user("Hi"), **params)

    assert_rejected(caught.value, message)


def test_an_audio_content_part_is_a_400() -> None:
    with pytest.raises(ProviderError) as caught:
        body_for(user([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]))

    assert_rejected(caught.value, "cohere does not support 'input_audio' content parts.")


def test_the_legacy_function_role_is_a_400() -> None:
    with pytest.raises(ProviderError) as caught:
        body_for(user("Hi"), {"role": "function", "name": "f", "content": "42"})

    assert_rejected(
        caught.value, "cohere does not support the legacy 'function' role; send tool results with role 'tool'."
    )


# --- Cohere response -> OpenAI response (golden) -------------------------------------------

DOC_TEXT_RESPONSE: dict[str, Any] = {
    "id": COHERE_ID,
    "finish_reason": "COMPLETE",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "LLMs are large language models."}]},
    "usage": {
        "billed_units": {"input_tokens": 5, "output_tokens": 10},
        "tokens": {"input_tokens": 71, "output_tokens": 10},
    },
}


def test_a_text_answer_becomes_a_chat_completion() -> None:
    result = chat_result(MODEL, DOC_TEXT_RESPONSE)

    body = result.body
    assert isinstance(body.pop("created"), int)
    assert body == {
        "id": CHAT_ID,
        "object": "chat.completion",
        "model": MODEL_NAME,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "LLMs are large language models.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 10,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
    ChatCompletion.model_validate({**body, "created": 0})


def test_the_gateway_bills_coheres_billed_units_not_its_template_inclusive_tokens() -> None:
    result = chat_result(MODEL, DOC_TEXT_RESPONSE)

    assert result.usage == Usage(input_tokens=5, output_tokens=10)


def test_text_items_are_joined_and_thinking_is_left_out() -> None:
    data = {
        **DOC_TEXT_RESPONSE,
        "message": {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "The user wants a definition."},
                {"type": "text", "text": "LLMs are "},
                {"type": "text", "text": "language models."},
            ],
        },
    }

    message = chat_result(MODEL, data).body["choices"][0]["message"]

    assert message == {"role": "assistant", "content": "LLMs are language models.", "refusal": None}


def test_a_tool_call_answer_has_openai_tool_calls_and_no_content() -> None:
    data = {
        "id": COHERE_ID,
        "finish_reason": "TOOL_CALL",
        "message": {
            "role": "assistant",
            "tool_plan": "I will look up the weather in Paris.",
            "tool_calls": [
                {"id": "get_weather_k88p0m8504w5", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "get_time_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        "usage": {"billed_units": {"input_tokens": 20, "output_tokens": 12},
                  "tokens": {"input_tokens": 900, "output_tokens": 40}},
    }  # fmt: skip

    body = chat_result(MODEL, data).body

    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "get_weather_k88p0m8504w5",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {"id": "get_time_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    ChatCompletion.model_validate(body)


def test_tool_call_arguments_given_as_an_object_become_a_json_string() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    data = {"id": COHERE_ID, "finish_reason": "TOOL_CALL", "message": {"role": "assistant", "tool_calls": [call]}}

    [converted] = chat_result(MODEL, data).body["choices"][0]["message"]["tool_calls"]

    assert converted["function"]["arguments"] == '{"city":"Paris"}'


@pytest.mark.parametrize(
    ("cohere", "openai"),
    [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length"), ("TOOL_CALL", "tool_calls")],
)
def test_finish_reasons_map_to_openai(cohere: str, openai: str) -> None:
    body = chat_result(MODEL, {**DOC_TEXT_RESPONSE, "finish_reason": cohere}).body

    assert body["choices"][0]["finish_reason"] == openai


def test_an_error_finish_is_a_retryable_502() -> None:
    with pytest.raises(ProviderError) as caught:
        chat_result(MODEL, {**DOC_TEXT_RESPONSE, "finish_reason": "ERROR"})

    error = caught.value
    assert (error.status, error.retryable, error.code) == (502, True, "upstream_error")
    assert error.message == "cohere failed generating the answer"


def test_a_timeout_finish_is_a_retryable_504() -> None:
    with pytest.raises(ProviderError) as caught:
        chat_result(MODEL, {**DOC_TEXT_RESPONSE, "finish_reason": "TIMEOUT"})

    error = caught.value
    assert (error.status, error.retryable, error.code) == (504, True, "upstream_timeout")
    assert error.message == "cohere timed out generating the answer"


def test_an_answer_without_usage_is_estimated_by_the_gateway() -> None:
    data = {key: value for key, value in DOC_TEXT_RESPONSE.items() if key != "usage"}

    result = chat_result(MODEL, data)

    assert result.usage == Usage(estimated=True)
    assert "usage" not in result.body


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"billed_units": {"input_tokens": 5, "output_tokens": 10},
          "tokens": {"input_tokens": 71, "output_tokens": 11}}, Usage(input_tokens=5, output_tokens=10)),
        ({"tokens": {"input_tokens": 71, "output_tokens": 11}}, Usage(input_tokens=71, output_tokens=11)),
        ({"billed_units": {"output_tokens": 10}, "tokens": {"input_tokens": 71, "output_tokens": 11}},
         Usage(input_tokens=71, output_tokens=10)),
        ({"billed_units": {"input_tokens": 5.0, "output_tokens": 9.6}}, Usage(input_tokens=5, output_tokens=10)),
        ({"billed_units": {"input_tokens": 50, "output_tokens": 1}, "cached_tokens": 32},
         Usage(input_tokens=50, output_tokens=1, cached_input_tokens=32)),
        ({"billed_units": {"input_tokens": 5, "output_tokens": 1}, "tokens": {"input_tokens": 71}, "cached_tokens": 64},
         Usage(input_tokens=5, output_tokens=1, cached_input_tokens=5)),
        ({"billed_units": {"search_units": 1}}, None),
        (None, None),
    ],
    ids=["billed-wins", "tokens-fallback", "per-field-fallback", "floats", "cached", "cached-within-billed",
         "no-token-counts", "absent"],
)  # fmt: skip
def test_usage_extraction(raw: Any, expected: Usage | None) -> None:
    assert usage_from_cohere(raw) == expected


# --- errors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapped:
    status: int
    retryable: bool
    code: str
    message: str
    retry_after: str | None = None


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (400, {"message": "invalid request: message must not be empty in a turn"}, {},
         Mapped(400, False, "invalid_request_error",
                "cohere rejected the request: invalid request: message must not be empty in a turn")),
        (400, {"id": "x", "message": "too many tokens: size limit exceeded by 11326 tokens."}, {},
         Mapped(400, False, "context_length_exceeded",
                "cohere rejected the request: too many tokens: size limit exceeded by 11326 tokens.")),
        (404, {"message": "model 'nope' not found"}, {},
         Mapped(400, False, "invalid_request_error", "cohere rejected the request: model 'nope' not found")),
        (422, b"not json", {}, Mapped(400, False, "invalid_request_error", "cohere rejected the request: HTTP 422")),
        (401, {"message": "invalid api token co-test-key"}, {},
         Mapped(502, False, "upstream_error", "cohere refused the gateway's credentials (HTTP 401).")),
        (402, {"message": "please add a payment method"}, {},
         Mapped(502, False, "upstream_error", "cohere refused the gateway's credentials (HTTP 402).")),
        (403, {"message": "forbidden"}, {},
         Mapped(502, False, "upstream_error", "cohere refused the gateway's credentials (HTTP 403).")),
        (429, {"message": "rate limited"}, {"retry-after": "12"},
         Mapped(503, True, "upstream_error", "cohere is rate limiting the gateway (HTTP 429).", "12")),
        (429, {"message": "rate limited"}, {},
         Mapped(503, True, "upstream_error", "cohere is rate limiting the gateway (HTTP 429).")),
        (498, {"message": "blocked request"}, {},
         Mapped(502, False, "upstream_error", "cohere refused the request (HTTP 498).")),
        (499, {"message": "request cancelled"}, {},
         Mapped(502, False, "upstream_error", "cohere refused the request (HTTP 499).")),
        (501, {"message": "not implemented"}, {},
         Mapped(502, False, "upstream_error", "cohere refused the request (HTTP 501).")),
        (500, {"message": "internal server error"}, {},
         Mapped(502, True, "upstream_error", "cohere failed with HTTP 500.")),
        (503, {"message": "service unavailable"}, {},
         Mapped(502, True, "upstream_error", "cohere failed with HTTP 503.")),
        (504, {"message": "gateway timeout"}, {},
         Mapped(504, True, "upstream_timeout", "cohere did not answer in time (HTTP 504).")),
    ],
    ids=["400", "400-too-many-tokens", "404", "422-unparsable", "401", "402", "403", "429-retry-after", "429",
         "498", "499", "501", "500", "503", "504"],
)  # fmt: skip
def test_error_mapping(status: int, body: Any, headers: dict[str, str], expected: Mapped) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)

    error = error_from_response(status, content, httpx.Headers(headers))

    assert Mapped(error.status, error.retryable, error.code, error.message, error.retry_after) == expected
    assert error.upstream_status == status


def test_a_credentials_error_never_echoes_coheres_text() -> None:
    error = error_from_response(401, b'{"message": "invalid api token co-test-key"}', httpx.Headers())

    assert "co-test-key" not in error.message
    assert "invalid api token" not in error.message


# --- streaming: Cohere events -> OpenAI chunks ----------------------------------------------

USAGE_END = {
    "billed_units": {"input_tokens": 5, "output_tokens": 2},
    "tokens": {"input_tokens": 71, "output_tokens": 2},
}
TEXT_EVENTS: list[dict[str, Any]] = [
    {"id": COHERE_ID, "type": "message-start",
     "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}},
    {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hel"}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "lo"}}}},
    {"type": "content-end", "index": 0},
    {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": USAGE_END}},
]  # fmt: skip


def expected_chunk(translator: StreamTranslator, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": translator.created,
        "model": MODEL_NAME,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def translate(events: list[dict[str, Any]]) -> tuple[StreamTranslator, list[dict[str, Any]]]:
    translator = StreamTranslator(MODEL_NAME, StreamProgress())
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    return translator, chunks


def test_a_text_stream_becomes_role_content_and_finish_chunks() -> None:
    translator, chunks = translate(TEXT_EVENTS)

    assert chunks == [
        expected_chunk(translator, {"role": "assistant", "content": "", "refusal": None}),
        expected_chunk(translator, {"content": "Hel"}),
        expected_chunk(translator, {"content": "lo"}),
        expected_chunk(translator, {}, "stop"),
    ]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)


def test_a_stream_reports_billed_usage_and_text_length_from_message_end() -> None:
    translator, _ = translate(TEXT_EVENTS)

    progress = translator.progress
    assert progress.usage == Usage(input_tokens=5, output_tokens=2)
    assert (progress.completion_chars, progress.finished, progress.error) == (5, True, None)


@pytest.mark.parametrize(
    ("cohere", "openai"),
    [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length"), ("TOOL_CALL", "tool_calls")],
)
def test_a_stream_maps_the_finish_reason(cohere: str, openai: str) -> None:
    _, chunks = translate([{"type": "message-end", "delta": {"finish_reason": cohere, "usage": USAGE_END}}])

    assert chunks[-1]["choices"][0]["finish_reason"] == openai


def test_thinking_content_is_not_streamed() -> None:
    events = [
        TEXT_EVENTS[0],
        {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}},
        {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"thinking": "Let me think"}}}},
        {"type": "content-end", "index": 0},
        {"type": "content-start", "index": 1, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
        {"type": "content-delta", "index": 1, "delta": {"message": {"content": {"text": "Answer"}}}},
        {"type": "content-end", "index": 1},
    ]

    translator, chunks = translate(events)

    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Answer"]
    assert translator.progress.completion_chars == 6


def test_tool_call_events_become_indexed_openai_fragments_and_the_plan_is_not_shown() -> None:
    events = [
        TEXT_EVENTS[0],
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will check the weather and time."}}},
        {"type": "tool-call-start", "index": 3, "delta": {"message": {"tool_calls": {
            "id": "get_weather_k88p", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}},
        {"type": "tool-call-delta", "index": 3,
         "delta": {"message": {"tool_calls": {"function": {"arguments": '{"ci'}}}}},
        {"type": "tool-call-delta", "index": 3,
         "delta": {"message": {"tool_calls": {"function": {"arguments": 'ty":"Paris"}'}}}}},
        {"type": "tool-call-end", "index": 3},
        {"type": "tool-call-start", "index": 5, "delta": {"message": {"tool_calls": {
            "id": "get_time_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}}}},
        {"type": "tool-call-end", "index": 5},
        {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": USAGE_END}},
    ]  # fmt: skip

    translator, chunks = translate(events)

    assert chunks == [
        expected_chunk(translator, {"role": "assistant", "content": "", "refusal": None}),
        expected_chunk(translator, {"tool_calls": [{"index": 0, "id": "get_weather_k88p", "type": "function",
                                                    "function": {"name": "get_weather", "arguments": ""}}]}),
        expected_chunk(translator, {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        expected_chunk(translator, {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]}),
        expected_chunk(translator, {"tool_calls": [{"index": 1, "id": "get_time_1", "type": "function",
                                                    "function": {"name": "get_time", "arguments": "{}"}}]}),
        expected_chunk(translator, {}, "tool_calls"),
    ]  # fmt: skip
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert translator.progress.completion_chars == 0


def test_an_error_at_message_end_is_an_error_event_and_keeps_the_usage() -> None:
    events = [
        *TEXT_EVENTS[:3],
        {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "internal error", "usage": USAGE_END}},
    ]

    translator, chunks = translate(events)

    assert chunks[-1] == {
        "error": {
            "message": "cohere failed mid-stream: internal error",
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }
    progress = translator.progress
    assert progress.error == {
        "message": "cohere failed mid-stream: internal error",
        "type": "upstream_error",
        "code": "upstream_error",
    }
    assert progress.usage == Usage(input_tokens=5, output_tokens=2)
    assert progress.finished is False


def test_a_timeout_at_message_end_is_an_upstream_timeout_error_event() -> None:
    _, chunks = translate([{"type": "message-end", "delta": {"finish_reason": "TIMEOUT"}}])

    assert chunks == [
        {
            "error": {
                "message": "cohere timed out mid-stream",
                "type": "upstream_error",
                "code": "upstream_timeout",
                "param": None,
            }
        }
    ]


def sse(events: list[dict[str, Any]], newline: bytes = b"\n") -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + newline + b"data: " + orjson.dumps(e) + newline + newline for e in events
    )


async def stream_over(raw: bytes) -> tuple[CohereChatStream, list[dict[str, Any]]]:
    stream = CohereChatStream(CohereAdapter(), MODEL, {"model": MODEL_NAME, "messages": [user("Hi")]})
    stream.response = httpx.Response(200, content=raw)
    return stream, [chunk async for chunk in stream.chunks()]


async def test_a_trailing_done_line_after_message_end_is_tolerated() -> None:
    _, plain = await stream_over(sse(TEXT_EVENTS))
    stream, chunks = await stream_over(sse(TEXT_EVENTS) + b"data: [DONE]\n\n")

    assert [c["choices"] for c in chunks] == [c["choices"] for c in plain]
    assert (stream.progress.finished, stream.progress.error) == (True, None)


async def test_crlf_framed_events_are_read_like_lf_framed_ones() -> None:
    _, plain = await stream_over(sse(TEXT_EVENTS))
    _, chunks = await stream_over(sse(TEXT_EVENTS, newline=b"\r\n"))

    assert [c["choices"] for c in chunks] == [c["choices"] for c in plain]


async def test_a_stream_cut_before_message_end_ends_with_an_error_event() -> None:
    stream, chunks = await stream_over(sse(TEXT_EVENTS[:3]))

    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Hel"},
    ]
    assert chunks[-1] == {
        "error": {
            "message": "cohere ended the stream before it finished.",
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }
    assert stream.progress.error is not None
    assert stream.progress.usage is None


# --- the adapter against the fake upstream's Cohere dialect -----------------------------------


def fake_model(upstream: FakeUpstream) -> CatalogModel:
    return catalog_model(base_url=f"{upstream.url}/cohere/v2", credential="test-cohere-key")


async def last_request(upstream: FakeUpstream) -> dict[str, Any]:
    stats = await asyncio.to_thread(upstream.stats)
    request: dict[str, Any] = stats["last_request"]
    return request


async def test_it_sends_the_translated_body_to_the_chat_path(upstream: FakeUpstream) -> None:
    await CohereAdapter().chat(
        fake_model(upstream),
        {"model": MODEL_NAME, "messages": [{"role": "system", "content": "Be brief."}, user(HELLO)], "top_p": 1},
    )

    sent = await last_request(upstream)
    assert (sent["method"], sent["path"]) == ("POST", "/cohere/v2/chat")
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["body"] == {
        "model": MODEL_NAME,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": HELLO}],
        "p": 0.99,
    }


async def test_every_translated_parameter_passes_the_fakes_strict_validation(upstream: FakeUpstream) -> None:
    request = {
        "model": MODEL_NAME,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            user([{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]),
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "system", "content": "Use Celsius."},
            user(HELLO),
        ],
        "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "ping", "strict": True}}],
        "tool_choice": "none",
        "max_tokens": 50, "stop": ["ZZZ"], "temperature": 1.5, "top_p": 0, "seed": 3,
        "frequency_penalty": 1, "presence_penalty": 0.1, "user": "u", "logprobs": False, "parallel_tool_calls": True,
    }  # fmt: skip

    result = await CohereAdapter().chat(fake_model(upstream), request)

    assert result.body["choices"][0]["message"]["content"] == HELLO_REPLY
    assert (await asyncio.to_thread(upstream.stats))["completed"] == 1


async def test_a_fake_text_answer_bills_billed_units(upstream: FakeUpstream) -> None:
    result = await CohereAdapter().chat(fake_model(upstream), {"model": MODEL_NAME, "messages": [user(HELLO)]})

    assert result.body["choices"][0]["message"] == {"role": "assistant", "content": HELLO_REPLY, "refusal": None}
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.usage == Usage(input_tokens=4, output_tokens=5)


async def test_the_fake_reports_more_tokens_than_billed_units_as_cohere_does(upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{upstream.url}/cohere/v2/chat",
            headers={"authorization": "Bearer test-cohere-key"},
            json={"model": MODEL_NAME, "messages": [user(HELLO)]},
        )

    assert reply.json()["usage"] == {
        "billed_units": {"input_tokens": 4, "output_tokens": 5},
        "tokens": {"input_tokens": 70, "output_tokens": 5},
        "cached_tokens": 0,
    }


async def test_a_fake_stop_sequence_ends_the_answer_with_stop(upstream: FakeUpstream) -> None:
    result = await CohereAdapter().chat(
        fake_model(upstream), {"model": MODEL_NAME, "messages": [user(HELLO)], "stop": "gate"}
    )

    assert result.body["choices"][0]["message"]["content"] == "Fake reply to: Hello"
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.usage.output_tokens == 4


async def test_a_fake_max_tokens_answer_ends_with_length(upstream: FakeUpstream) -> None:
    result = await CohereAdapter().chat(
        fake_model(upstream), {"model": MODEL_NAME, "messages": [user(HELLO)], "max_completion_tokens": 2}
    )

    assert result.body["choices"][0]["message"]["content"] == "Fake reply"
    assert result.body["choices"][0]["finish_reason"] == "length"


async def test_a_fake_named_tool_choice_calls_that_tool(upstream: FakeUpstream) -> None:
    request = {
        "model": MODEL_NAME,
        "messages": [user("What time is it?")],
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
    }

    result = await CohereAdapter().chat(fake_model(upstream), request)

    [call] = result.body["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_time", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("get_time_")
    assert result.body["choices"][0]["finish_reason"] == "tool_calls"
    sent = await last_request(upstream)
    assert (sent["body"]["tool_choice"], sent["body"]["tools"]) == ("REQUIRED", [TIME_TOOL])


async def collect(stream: Any) -> list[dict[str, Any]]:
    await stream.open()
    try:
        return [chunk async for chunk in stream.chunks()]
    finally:
        await stream.close()


async def test_a_fake_stream_arrives_as_openai_chunks_with_billed_usage(upstream: FakeUpstream) -> None:
    stream = CohereAdapter().stream(fake_model(upstream), {"model": MODEL_NAME, "messages": [user(HELLO)]})

    chunks = await collect(stream)

    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == HELLO_REPLY
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert len({c["id"] for c in chunks}) == 1
    assert stream.progress.usage == Usage(input_tokens=4, output_tokens=5)
    assert stream.progress.completion_chars == len(HELLO_REPLY)
    sent = await last_request(upstream)
    assert sent["body"]["stream"] is True
    assert sent["headers"]["accept"] == "text/event-stream"


async def test_a_fake_streamed_tool_call_reassembles_into_one_call(upstream: FakeUpstream) -> None:
    request = {"model": MODEL_NAME, "messages": [user("What is the weather?")], "tools": [WEATHER_TOOL]}

    chunks = await collect(CohereAdapter().stream(fake_model(upstream), request))

    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert {f["index"] for f in fragments} == {0}
    assert fragments[0]["function"]["name"] == "get_weather"
    assert "".join(f["function"]["arguments"] for f in fragments) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(not c["choices"][0]["delta"].get("content") for c in chunks)


async def test_a_fake_mid_stream_error_is_one_error_event(upstream: FakeUpstream) -> None:
    stream = CohereAdapter().stream(
        fake_model(upstream), {"model": MODEL_NAME, "messages": [user("[fake fail_after_chunks=3] hi")]}
    )

    chunks = await collect(stream)

    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Fake "},
    ]
    assert chunks[-1]["error"]["message"] == (
        "cohere failed mid-stream: internal server error, this has been reported to our developers"
    )
    assert stream.progress.error is not None
    assert (await asyncio.to_thread(upstream.stats))["streams_failed"] == 1


@pytest.mark.parametrize(
    ("directive", "status", "retryable", "retry_after"),
    [("status=429 retry_after=3", 503, True, "3"), ("status=401", 502, False, None),
     ("status=503", 502, True, None), ("status=498", 502, False, None), ("status=504", 504, True, None)],
    ids=["429", "401", "503", "498", "504"],
)  # fmt: skip
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
async def test_fake_errors_are_mapped_before_any_chunk(
    upstream: FakeUpstream, directive: str, status: int, retryable: bool, retry_after: str | None, streamed: bool
) -> None:
    request = {"model": MODEL_NAME, "messages": [user(f"[fake {directive}] hi")]}
    adapter = CohereAdapter()

    with pytest.raises(ProviderError) as caught:
        if streamed:
            await adapter.stream(fake_model(upstream), request).open()
        else:
            await adapter.chat(fake_model(upstream), request)

    error = caught.value
    assert (error.status, error.retryable, error.retry_after) == (status, retryable, retry_after)


async def test_a_request_the_fake_rejects_is_a_400_with_its_message(upstream: FakeUpstream) -> None:
    with pytest.raises(ProviderError) as caught:
        await CohereAdapter().chat(fake_model(upstream), {"model": MODEL_NAME, "messages": [user("[fake bogus=1] hi")]})

    assert_rejected(
        caught.value,
        "cohere rejected the request: Unknown fake directive 'bogus' in directive.",
        "invalid_request_error",
    )


async def test_the_fake_answers_cohere_shaped_errors_for_missing_auth(upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient() as client:
        reply = await client.post(f"{upstream.url}/cohere/v2/chat", json={"model": MODEL_NAME, "messages": []})

    assert reply.status_code == 401
    assert reply.json()["message"] == "no api key supplied"


# --- through the proxy ------------------------------------------------------------------------

PATH = "/v1/chat/completions"
TIMEOUT = 15.0
proxy_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def usage_stream(settings: SettingsWrapper) -> Iterator[str]:
    name = f"muxer:usage:test:{uuid.uuid4().hex}"
    settings.MUXER_USAGE_STREAM = name
    yield name
    if settings.REDIS_URL:
        muxer_redis.sync_redis().delete(name)


@pytest.fixture
def gateway_key(api_key: str, upstream: FakeUpstream, usage_stream: str) -> str:
    """A key for the proxy, with Cohere pointed at the fake and usage on this test's stream."""
    return api_key


@pytest.fixture(autouse=True)
async def _close_redis_client() -> AsyncIterator[None]:
    yield
    client = muxer_redis._async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def post(key: str, **body: Any) -> Reply:
    raw = orjson.dumps({"model": MODEL_NAME, **body})
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]
    communicator = HttpCommunicator(application, "POST", PATH, body=raw, headers=headers)
    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(timeout=TIMEOUT)
    return Reply(
        status=response["status"],
        headers={name.decode(): value.decode() for name, value in response["headers"]},
        body=response["body"],
    )


def _drained_usage() -> list[UsageRecord]:
    try:
        if settings.REDIS_URL:
            while usage_drain(block_ms=0):
                pass
        return list(UsageRecord.objects.order_by("id"))
    finally:
        connections.close_all()


async def usage_rows() -> list[UsageRecord]:
    return await sync_to_async(_drained_usage)()


def data_chunks(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(event[6:]) for event in body.split(b"\n\n") if event.startswith(b"data: {")]


@proxy_db
async def test_the_proxy_answers_from_cohere_in_openai_shape(gateway_key: str) -> None:
    reply = await post(gateway_key, messages=[user(HELLO)])

    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL_NAME
    assert body["choices"][0]["message"] == {"role": "assistant", "content": HELLO_REPLY, "refusal": None}
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (4, 5)
    assert (reply.headers["x-muxer-provider"], reply.headers["x-muxer-model"]) == ("cohere", MODEL_NAME)


@proxy_db
async def test_the_proxy_records_billed_units_at_the_catalog_price(gateway_key: str) -> None:
    reply = await post(gateway_key, messages=[user(HELLO)])

    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.model, row.provider) == (MODEL_NAME, "cohere")
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (4, 5, False)
    assert (row.status, row.http_status, row.stream) == (UsageStatus.OK, 200, False)
    # 4 x $0.15/M + 5 x $0.60/M; billing usage.tokens (4 + 66 input) would be $0.0000135.
    assert row.cost_usd == Decimal("0.0000036")
    assert reply.headers["x-muxer-cost-usd"] == "0.0000036000"


@proxy_db
async def test_the_proxy_streams_cohere_as_openai_chunks_with_the_usage_chunk(gateway_key: str) -> None:
    reply = await post(
        gateway_key, messages=[user("Stream this please")], stream=True, stream_options={"include_usage": True}
    )

    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.headers["x-muxer-provider"] == "cohere"
    assert reply.body.endswith(b"data: [DONE]\n\n")
    *content, usage_chunk = data_chunks(reply.body)
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in content) == "Fake reply to: Stream this please"
    )
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert {c["model"] for c in content} == {MODEL_NAME}
    # "Stream this please": 18 characters -> 5 billed input tokens; the reply is 6 words.
    assert usage_chunk["usage"]["prompt_tokens"] == 5
    assert usage_chunk["usage"]["completion_tokens"] == 6
    [row] = await usage_rows()
    assert (row.provider, row.input_tokens, row.output_tokens, row.stream) == ("cohere", 5, 6, True)
    assert row.cost_usd == Decimal("0.00000435")
    assert b": x-muxer-cost-usd=0.0000043500\n\n" in reply.body


@proxy_db
async def test_the_proxy_streams_a_cohere_tool_call(gateway_key: str) -> None:
    reply = await post(gateway_key, messages=[user("What is the weather?")], tools=[WEATHER_TOOL], stream=True)

    chunks = data_chunks(reply.body)
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert fragments[0]["function"]["name"] == "get_weather"
    assert "".join(f["function"]["arguments"] for f in fragments) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@proxy_db
async def test_a_cohere_429_reaches_the_client_as_a_503_with_retry_after(
    gateway_key: str, settings: SettingsWrapper
) -> None:
    settings.MUXER_RETRY_ATTEMPTS_PER_MODEL = 1

    reply = await post(gateway_key, messages=[user("[fake status=429 retry_after=7] hi")])

    assert reply.status == 503
    assert reply.headers["retry-after"] == "7"
    assert reply.json()["error"]["message"] == "cohere is rate limiting the gateway (HTTP 429)."
    [row] = await usage_rows()
    assert (row.provider, row.status, row.http_status) == ("cohere", UsageStatus.ERROR, 503)


@proxy_db
async def test_a_cohere_401_is_a_502_without_coheres_text(gateway_key: str, settings: SettingsWrapper) -> None:
    settings.MUXER_RETRY_ATTEMPTS_PER_MODEL = 1

    reply = await post(gateway_key, messages=[user("[fake status=401] hi")])

    assert reply.status == 502
    assert reply.json()["error"]["message"] == "cohere refused the gateway's credentials (HTTP 401)."
    assert b"invalid api token" not in reply.body


@proxy_db
async def test_a_cohere_400_is_passed_on_with_coheres_message(gateway_key: str) -> None:
    reply = await post(gateway_key, messages=[user("[fake status=400] hi")])

    assert reply.status == 400
    assert reply.json()["error"] == {
        "message": "cohere rejected the request: invalid request: injected fake bad request.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request_error",
    }


@proxy_db
async def test_an_unsupported_parameter_is_a_400_before_cohere_is_called(
    gateway_key: str, upstream: FakeUpstream
) -> None:
    reply = await post(gateway_key, messages=[user(HELLO)], n=2)

    assert reply.status == 400
    assert reply.json()["error"]["message"] == "cohere does not support n > 1 (it returns one choice per request)."
    assert (await asyncio.to_thread(upstream.stats))["requests"] == 0


@proxy_db
async def test_a_cohere_mid_stream_error_is_forwarded_and_recorded(gateway_key: str) -> None:
    reply = await post(gateway_key, messages=[user("[fake fail_after_chunks=3] hi")], stream=True)

    assert reply.status == 200
    assert b"data: [DONE]" not in reply.body
    *content, failure = data_chunks(reply.body)
    assert [c["choices"][0]["delta"] for c in content] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Fake "},
    ]
    assert failure == {
        "error": {
            "message": "cohere failed mid-stream: internal server error, this has been reported to our developers",
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }
    [row] = await usage_rows()
    assert (row.status, row.http_status, row.error_code, row.stream) == (UsageStatus.ERROR, 502, "upstream_error", True)
    assert row.usage_estimated is True


@proxy_db
async def test_a_cohere_stream_failing_before_any_content_is_retried_and_then_a_json_502(
    gateway_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_RETRY_ATTEMPTS_PER_MODEL = 2
    settings.MUXER_RETRY_BASE_DELAY_SECONDS = 0.01

    reply = await post(gateway_key, messages=[user("[fake fail_after_chunks=0] hi")], stream=True)

    assert reply.status == 502
    assert reply.headers["content-type"] == "application/json"
    assert (await asyncio.to_thread(upstream.stats))["requests"] == 2
