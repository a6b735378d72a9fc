"""The Anthropic adapter and the fake upstream's Anthropic dialect.

Golden fixtures first (OpenAI request -> the exact Anthropic request; documented
Anthropic responses and stream events -> the exact OpenAI answer), then the
adapter against the fake upstream, then the whole gateway in process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.conf import settings
from django.db import connections
from django.test import override_settings
from openai.types.chat import ChatCompletionFunctionToolParam
from pytest_django.fixtures import Settings as SettingsWrapper

from billing.models import UsageRecord, UsageStatus
from billing.usage import usage_drain
from muxer_project import redis as muxer_redis
from muxer_project.asgi import application
from providers.adapters import adapter_for
from providers.adapters.anthropic import (
    AnthropicAdapter,
    AnthropicChatStream,
    StreamTranslator,
    completion_from_message,
    error_from_response,
    messages_body,
    request_headers,
)
from providers.adapters.base import ProviderError, StreamProgress, Usage
from providers.catalog import CatalogModel
from providers.http import close_http_client
from tests.conftest import FakeUpstream, Gateway

MODEL = CatalogModel(
    name="claude-haiku-5-5",
    kind="chat",
    provider="anthropic",
    wire_format="anthropic",
    base_url="https://api.anthropic.com/v1",
    credential="sk-ant-test",
    input_price_per_mtok_usd=Decimal("0.10"),
    output_price_per_mtok_usd=Decimal("0.50"),
    cached_input_price_per_mtok_usd=Decimal("0.01"),
    context_window=1_000_000,
    max_output_tokens=128_000,
    supports_streaming=True,
    supports_tools=True,
    supports_vision=True,
    supports_json_mode=True,
    created=0,
)
CREATED = 1700000000
HELLO = "Hello gateway"
# 13 characters -> 4 input tokens; 5 words -> 5 output tokens.
HELLO_REPLY = "Fake reply to: Hello gateway"
WEATHER_SCHEMA: dict[str, object] = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": WEATHER_SCHEMA},
}
SDK_WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": WEATHER_SCHEMA},
}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": WEATHER_SCHEMA,
}


def chat(content: str = HELLO, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL.name, "messages": [{"role": "user", "content": content}], **extra}


def body_for(request: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    return messages_body(MODEL, request, stream=stream)


def refusal(request: dict[str, Any]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        body_for(request)
    assert caught.value.status == 400
    assert caught.value.retryable is False
    assert caught.value.type == "invalid_request_error"
    return caught.value


# --- OpenAI request -> Anthropic request ------------------------------------------


def test_it_sends_the_models_max_output_as_max_tokens_when_the_client_sets_none() -> None:
    assert body_for(chat()) == {
        "model": "claude-haiku-5-5",
        "max_tokens": 128_000,
        "messages": [{"role": "user", "content": "Hello gateway"}],
    }


def test_it_translates_a_whole_tool_conversation() -> None:
    request = {
        "model": "claude-haiku-5-5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                ],
            },
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "no data"}]},
            {"role": "user", "content": "Thanks!"},
        ],
        "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "get_time"}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stop": "END",
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "user-42",
        "max_completion_tokens": 300,
        "max_tokens": 500,
    }

    assert body_for(request) == {
        "model": "claude-haiku-5-5",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in English."}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "no data"}]},
                    {"type": "text", "text": "Thanks!"},
                ],
            },
        ],
        "tools": [
            ANTHROPIC_WEATHER_TOOL,
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
    }


def test_it_sends_a_single_system_message_as_a_string() -> None:
    request = {"model": MODEL.name, "messages": [{"role": "system", "content": "Be brief."}, *chat()["messages"]]}

    assert body_for(request)["system"] == "Be brief."


def test_it_merges_consecutive_same_role_turns() -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
        ],
    }

    assert body_for(request)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
    ]


def test_it_puts_tool_results_before_user_text_in_the_same_turn() -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "user", "content": "also this"},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "done"},
        ],
    }

    assert body_for(request)["messages"][1] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"},
            {"type": "text", "text": "also this"},
        ],
    }


def test_it_drops_empty_text_which_anthropic_rejects() -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "again"},
        ],
    }

    assert body_for(request)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}
    ]


def test_it_sends_a_pdf_file_part_as_a_document() -> None:
    part = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
    request = {"model": MODEL.name, "messages": [{"role": "user", "content": [part]}]}

    assert body_for(request)["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    ]


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        pytest.param("auto", None, {"type": "auto"}, id="auto"),
        pytest.param("required", None, {"type": "any"}, id="required-is-any"),
        pytest.param("none", None, {"type": "none"}, id="none"),
        pytest.param(
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
            id="named",
        ),
        pytest.param(None, False, {"type": "auto", "disable_parallel_tool_use": True}, id="no-parallel-alone"),
        pytest.param("none", False, {"type": "none"}, id="no-parallel-not-on-none"),
        pytest.param(
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            id="named-no-parallel",
        ),
        pytest.param(None, True, None, id="parallel-is-the-default"),
    ],
)
def test_it_maps_tool_choice(tool_choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    request = chat(tools=[WEATHER_TOOL])
    if tool_choice is not None:
        request["tool_choice"] = tool_choice
    if parallel is not None:
        request["parallel_tool_calls"] = parallel

    body = body_for(request)

    assert body["tools"] == [ANTHROPIC_WEATHER_TOOL]
    assert body.get("tool_choice") == expected


def test_it_drops_tool_choice_without_tools() -> None:
    assert body_for(chat(tool_choice="none", parallel_tool_calls=False)) == body_for(chat())


@pytest.mark.parametrize(("sent", "expected"), [(0, 0), (0.7, 0.7), (1.0, 1.0), (1.6, 1.0), (2, 1.0)])
def test_it_caps_temperature_at_anthropics_maximum(sent: float, expected: float) -> None:
    assert body_for(chat(temperature=sent))["temperature"] == expected


def test_it_sends_a_stop_list_as_stop_sequences() -> None:
    assert body_for(chat(stop=["END", "STOP"]))["stop_sequences"] == ["END", "STOP"]


def test_it_uses_max_tokens_when_max_completion_tokens_is_absent() -> None:
    assert body_for(chat(max_tokens=64))["max_tokens"] == 64


def test_it_sends_safety_identifier_as_the_user_id() -> None:
    assert body_for(chat(safety_identifier="hashed-7"))["metadata"] == {"user_id": "hashed-7"}


def test_it_drops_parameters_anthropic_has_no_use_for() -> None:
    request = chat(
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        logit_bias={"42": 3},
        store=True,
        metadata={"team": "a"},
        reasoning_effort="low",
        service_tier="auto",
        verbosity="low",
        prompt_cache_key="k",
        n=1,
        logprobs=False,
        stream_options={"include_usage": True},
    )

    assert body_for(request) == body_for(chat())


def test_it_asks_for_a_stream() -> None:
    assert body_for(chat(), stream=True) == {**body_for(chat()), "stream": True}


def test_it_sends_a_json_schema_as_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    request = chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})

    assert body_for(request)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_it_forces_a_synthetic_tool_for_json_object_mode() -> None:
    body = body_for(chat(response_format={"type": "json_object"}))

    assert body["tools"] == [
        {
            "name": "json_object",
            "description": "Give your whole reply as this tool's input: one JSON object.",
            "input_schema": {"type": "object"},
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "json_object"}


def test_it_sends_the_key_and_api_version_headers() -> None:
    assert request_headers(MODEL) == {
        "x-api-key": "sk-ant-test",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        pytest.param(chat(n=2), "Anthropic models return a single choice; 'n' must be 1.", id="n"),
        pytest.param(
            chat(logprobs=True),
            "Anthropic models do not return log probabilities; 'logprobs' is not supported.",
            id="logprobs",
        ),
        pytest.param(
            chat(functions=[{"name": "f"}]),
            "The deprecated 'functions' and 'function_call' are not supported here; use 'tools'.",
            id="functions",
        ),
        pytest.param(chat(modalities=["text", "audio"]), "Anthropic models do not produce audio.", id="audio-out"),
        pytest.param(
            chat(web_search_options={}),
            "'web_search_options' is not supported for Anthropic models.",
            id="web-search",
        ),
        pytest.param(
            chat(tools=[WEATHER_TOOL], response_format={"type": "json_object"}),
            "Anthropic models cannot combine 'tools' with response_format 'json_object'.",
            id="json-object-with-tools",
        ),
        pytest.param(
            chat(response_format={"type": "json_schema", "json_schema": {"name": "s"}}),
            "'response_format.json_schema.schema' must be a JSON Schema object.",
            id="json-schema-without-schema",
        ),
        pytest.param(
            {"model": MODEL.name, "messages": [{"role": "function", "name": "f", "content": "x"}]},
            "'messages[0]': the deprecated 'function' role is not supported here; use 'tool' messages.",
            id="function-role",
        ),
        pytest.param(
            {
                "model": MODEL.name,
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ],
            },
            "'messages[0].tool_calls[0].function.arguments' must be a JSON object in a string.",
            id="arguments-not-an-object",
        ),
        pytest.param(
            {
                "model": MODEL.name,
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/cat.png"}}]}
                ],
            },
            "'messages[0].content[0].image_url.url' must be a base64 data URL or an http(s) URL.",
            id="image-scheme",
        ),
        pytest.param(
            {
                "model": MODEL.name,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}],
                    }
                ],
            },
            "'messages[0].content[0].image_url.url' must be a base64 data URL (data:image/png;base64,...) "
            "or an http(s) URL.",
            id="image-not-base64",
        ),
        pytest.param(
            {
                "model": MODEL.name,
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ],
            },
            "'messages[0].content[0]': Anthropic models do not take audio input.",
            id="audio-in",
        ),
        pytest.param(
            {
                "model": MODEL.name,
                "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}],
            },
            "'messages[0].content[0].file': Anthropic models take files as inline 'file_data', not by 'file_id'.",
            id="file-by-id",
        ),
        pytest.param(
            {
                "model": MODEL.name,
                "messages": [
                    {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
                ],
            },
            "'messages[0].content[0]': Anthropic models take only text here, not 'image_url'.",
            id="image-in-system",
        ),
    ],
)
def test_it_refuses_what_it_cannot_translate_faithfully(request_body: dict[str, Any], message: str) -> None:
    assert refusal(request_body).message == message


# --- Anthropic response -> OpenAI response ----------------------------------------

DOCUMENTED_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-5-5",
    "content": [
        {"type": "text", "text": "Let me look that up. "},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "text", "text": "One moment."},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    },
}


def test_it_answers_a_documented_message_as_a_chat_completion() -> None:
    result = completion_from_message(DOCUMENTED_MESSAGE, model_name=MODEL.name, created=CREATED)

    assert result.body == {
        "id": "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": CREATED,
        "model": "claude-haiku-5-5",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me look that up. One moment.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_01A09q90qw90lq917835lq9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 25,
            "total_tokens": 35,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
    assert result.usage == Usage(input_tokens=10, output_tokens=25)


def test_it_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    message = {
        **DOCUMENTED_MESSAGE,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 25,
            "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 3000,
            "output_tokens_details": {"thinking_tokens": 7},
        },
    }

    result = completion_from_message(message, model_name=MODEL.name, created=CREATED)

    assert result.usage == Usage(input_tokens=3210, output_tokens=25, cached_input_tokens=3000, reasoning_tokens=7)
    assert result.body["usage"] == {
        "prompt_tokens": 3210,
        "completion_tokens": 25,
        "total_tokens": 3235,
        "prompt_tokens_details": {"cached_tokens": 3000, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 7, "audio_tokens": 0},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_it_maps_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    message = {**DOCUMENTED_MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}

    result = completion_from_message(message, model_name=MODEL.name, created=CREATED)

    assert result.body["choices"][0]["finish_reason"] == finish_reason


def test_it_leaves_content_null_for_a_reply_of_only_tool_calls_and_hides_thinking() -> None:
    message = {
        **DOCUMENTED_MESSAGE,
        "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        ],
    }

    reply = completion_from_message(message, model_name=MODEL.name, created=CREATED).body["choices"][0]["message"]

    assert reply == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
    }


def test_it_answers_json_object_mode_with_the_synthetic_tools_input_as_content() -> None:
    message = {
        **DOCUMENTED_MESSAGE,
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "json_object", "input": {"answer": 42}}],
    }

    result = completion_from_message(message, model_name=MODEL.name, created=CREATED, json_tool=True)

    assert result.body["choices"][0]["message"] == {"role": "assistant", "content": '{"answer":42}', "refusal": None}
    assert result.body["choices"][0]["finish_reason"] == "stop"


def test_it_marks_usage_estimated_when_anthropic_reports_none() -> None:
    message = {key: value for key, value in DOCUMENTED_MESSAGE.items() if key != "usage"}

    result = completion_from_message(message, model_name=MODEL.name, created=CREATED)

    assert result.usage == Usage(estimated=True)
    assert "usage" not in result.body


# --- Anthropic stream events -> OpenAI chunks ------------------------------------


def message_start(usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-5-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage
            or {"input_tokens": 25, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        },
    }


def openai_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-msg_01",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "claude-haiku-5-5",
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


ROLE_CHUNK = openai_chunk({"role": "assistant", "content": "", "refusal": None})
MESSAGE_STOP = {"type": "message_stop"}


def translate(events: list[dict[str, Any]], *, json_tool: bool = False) -> tuple[list[dict[str, Any]], StreamProgress]:
    progress = StreamProgress()
    translator = StreamTranslator(model_name=MODEL.name, created=CREATED, progress=progress, json_tool=json_tool)
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    return chunks, progress


def text_delta(index: int, text: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}


def json_delta(index: int, partial: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial},
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def message_delta(stop_reason: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage}


DOCUMENTED_TEXT_STREAM = [
    message_start(),
    block_start(0, {"type": "text", "text": ""}),
    {"type": "ping"},
    text_delta(0, "Hi"),
    text_delta(0, " there"),
    {"type": "content_block_stop", "index": 0},
    message_delta("end_turn", {"output_tokens": 15}),
    MESSAGE_STOP,
]


def test_it_streams_text_as_openai_chunks() -> None:
    chunks, progress = translate(DOCUMENTED_TEXT_STREAM)

    assert chunks == [
        ROLE_CHUNK,
        openai_chunk({"content": "Hi"}),
        openai_chunk({"content": " there"}),
        openai_chunk({}, "stop"),
    ]
    assert progress.completion_chars == 8
    assert progress.finished is True
    assert progress.error is None


def test_it_takes_stream_usage_from_message_start_and_message_delta() -> None:
    _, progress = translate(DOCUMENTED_TEXT_STREAM)

    assert progress.usage == Usage(input_tokens=25, output_tokens=15)


def test_it_reads_cumulative_usage_that_repeats_the_input_counts() -> None:
    events = [
        message_start({"input_tokens": 5, "output_tokens": 1, "cache_creation_input_tokens": 0}),
        block_start(0, {"type": "text", "text": ""}),
        text_delta(0, "ok"),
        message_delta(
            "max_tokens",
            {"input_tokens": 5, "cache_creation_input_tokens": 40, "cache_read_input_tokens": 900, "output_tokens": 2},
        ),
        MESSAGE_STOP,
    ]

    chunks, progress = translate(events)

    assert chunks[-1] == openai_chunk({}, "length")
    assert progress.usage == Usage(input_tokens=945, output_tokens=2, cached_input_tokens=900)


def test_it_has_no_usage_before_message_delta() -> None:
    _, progress = translate(DOCUMENTED_TEXT_STREAM[:5])

    assert progress.usage is None


def test_it_streams_tool_calls_as_indexed_fragments() -> None:
    events = [
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        text_delta(0, "Checking."),
        {"type": "content_block_stop", "index": 0},
        block_start(1, {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}),
        json_delta(1, ""),
        json_delta(1, '{"ci'),
        json_delta(1, 'ty": "Paris"}'),
        {"type": "content_block_stop", "index": 1},
        block_start(2, {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}),
        json_delta(2, "{}"),
        {"type": "content_block_stop", "index": 2},
        message_delta("tool_use", {"output_tokens": 40}),
        MESSAGE_STOP,
    ]

    chunks, progress = translate(events)

    assert chunks == [
        ROLE_CHUNK,
        openai_chunk({"content": "Checking."}),
        openai_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        openai_chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "toolu_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]
            }
        ),
        openai_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        openai_chunk({}, "tool_calls"),
    ]
    assert progress.completion_chars == len("Checking.")


def test_it_keeps_thinking_blocks_out_of_the_stream() -> None:
    events = [
        message_start(),
        block_start(0, {"type": "thinking", "thinking": ""}),
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
        {"type": "content_block_stop", "index": 0},
        block_start(1, {"type": "text", "text": ""}),
        text_delta(1, "Answer."),
        message_delta("end_turn", {"output_tokens": 9}),
        MESSAGE_STOP,
    ]

    chunks, _ = translate(events)

    assert chunks == [ROLE_CHUNK, openai_chunk({"content": "Answer."}), openai_chunk({}, "stop")]


def test_it_streams_json_object_mode_as_content() -> None:
    events = [
        message_start(),
        block_start(0, {"type": "tool_use", "id": "toolu_1", "name": "json_object", "input": {}}),
        json_delta(0, '{"answer"'),
        json_delta(0, ": 42}"),
        message_delta("tool_use", {"output_tokens": 6}),
        MESSAGE_STOP,
    ]

    chunks, progress = translate(events, json_tool=True)

    assert chunks == [
        ROLE_CHUNK,
        openai_chunk({"content": '{"answer"'}),
        openai_chunk({"content": ": 42}"}),
        openai_chunk({}, "stop"),
    ]
    assert progress.completion_chars == len('{"answer": 42}')


def test_it_turns_an_error_event_into_an_error_chunk_and_stops() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    progress = StreamProgress()
    translator = StreamTranslator(model_name=MODEL.name, created=CREATED, progress=progress)
    for event in DOCUMENTED_TEXT_STREAM[:4]:
        translator.feed(event)

    chunks = translator.feed(error)

    assert chunks == [
        {
            "error": {
                "message": "anthropic failed mid-stream: Overloaded",
                "type": "upstream_error",
                "code": "overloaded_error",
                "param": None,
            }
        }
    ]
    assert progress.error == {
        "message": "anthropic failed mid-stream: Overloaded",
        "type": "upstream_error",
        "code": "overloaded_error",
    }
    assert translator.done is True
    assert progress.usage is None


async def stream_of(raw: bytes) -> list[dict[str, Any]]:
    stream = AnthropicChatStream(AnthropicAdapter(), MODEL, chat())
    stream.response = httpx.Response(200, content=raw)
    return [event async for event in stream.events()]


async def test_it_parses_named_events_framed_with_crlf() -> None:
    raw = (
        b'event: message_start\r\ndata: {"type":"message_start","message":{"id":"msg_1"}}\r\n\r\n'
        b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
    )

    assert await stream_of(raw) == [{"type": "message_start", "message": {"id": "msg_1"}}, {"type": "ping"}]


async def test_it_joins_multi_line_data_and_falls_back_to_the_event_name() -> None:
    raw = b'event: content_block_stop\ndata: {"index":\ndata: 0}\n\n: a comment\n\ndata: not json\n\n'

    assert await stream_of(raw) == [{"index": 0, "type": "content_block_stop"}]


async def test_it_reports_a_stream_cut_before_message_stop() -> None:
    stream = AnthropicChatStream(AnthropicAdapter(), MODEL, chat())
    lines = [b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in DOCUMENTED_TEXT_STREAM]
    stream.response = httpx.Response(200, content=b"".join(lines[:4]))

    chunks = [chunk async for chunk in stream.chunks()]

    assert chunks[-1] == {
        "error": {
            "message": "anthropic ended the stream before the message was complete.",
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [ROLE_CHUNK["choices"][0]["delta"], {"content": "Hi"}]
    assert stream.progress.error is not None


# --- error mapping ----------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})


@pytest.mark.parametrize(
    ("status", "kind", "upstream_message", "expected"),
    [
        pytest.param(
            400,
            "invalid_request_error",
            "messages.0.content: Field required",
            (400, False, "invalid_request_error", "anthropic rejected the request: messages.0.content: Field required"),
            id="400",
        ),
        pytest.param(
            400,
            "invalid_request_error",
            "prompt is too long: 250000 tokens > 200000 maximum",
            (
                400,
                False,
                "context_length_exceeded",
                "anthropic rejected the request: prompt is too long: 250000 tokens > 200000 maximum",
            ),
            id="400-context-length",
        ),
        pytest.param(
            404,
            "not_found_error",
            "model: claude-nope",
            (400, False, "not_found_error", "anthropic rejected the request: model: claude-nope"),
            id="404",
        ),
        pytest.param(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
            (
                400,
                False,
                "request_too_large",
                "anthropic rejected the request: Request exceeds the maximum allowed number of bytes.",
            ),
            id="413",
        ),
        pytest.param(
            401,
            "authentication_error",
            "invalid x-api-key sk-ant-secret",
            (502, False, "upstream_error", "anthropic refused the gateway's credentials (HTTP 401)."),
            id="401",
        ),
        pytest.param(
            402,
            "billing_error",
            "Your credit balance is too low",
            (502, False, "upstream_error", "anthropic refused the gateway's credentials (HTTP 402)."),
            id="402",
        ),
        pytest.param(
            403,
            "permission_error",
            "no access",
            (502, False, "upstream_error", "anthropic refused the gateway's credentials (HTTP 403)."),
            id="403",
        ),
        pytest.param(
            429,
            "rate_limit_error",
            "slow down",
            (503, True, "upstream_error", "anthropic is rate limiting the gateway (HTTP 429)."),
            id="429",
        ),
        pytest.param(
            500,
            "api_error",
            "Internal server error",
            (502, True, "upstream_error", "anthropic failed with HTTP 500."),
            id="500",
        ),
        pytest.param(
            503,
            "api_error",
            "unavailable",
            (502, True, "upstream_error", "anthropic failed with HTTP 503."),
            id="503",
        ),
        pytest.param(
            504,
            "timeout_error",
            "Request timed out",
            (504, True, "upstream_timeout", "anthropic did not answer in time (HTTP 504)."),
            id="504",
        ),
        pytest.param(
            529,
            "overloaded_error",
            "Overloaded",
            (502, True, "upstream_error", "anthropic is overloaded (HTTP 529)."),
            id="529",
        ),
    ],
)
def test_it_maps_anthropic_errors(
    status: int, kind: str, upstream_message: str, expected: tuple[int, bool, str, str]
) -> None:
    error = error_from_response(status, anthropic_error(kind, upstream_message), httpx.Headers(), "anthropic")

    assert (error.status, error.retryable, error.code, error.message) == expected
    assert error.upstream_status == status


def test_it_passes_retry_after_on_a_429() -> None:
    headers = httpx.Headers({"retry-after": "17"})

    error = error_from_response(429, anthropic_error("rate_limit_error", "slow"), headers, "anthropic")

    assert error.retry_after == "17"


def test_it_maps_an_unreadable_error_body_by_status() -> None:
    error = error_from_response(400, b"<html>bad gateway</html>", httpx.Headers(), "anthropic")

    assert (error.status, error.code, error.message) == (
        400,
        "invalid_request_error",
        "anthropic rejected the request: HTTP 400",
    )


def test_it_registers_for_the_anthropic_wire_format() -> None:
    assert isinstance(adapter_for(MODEL), AnthropicAdapter)


# --- the adapter against the fake upstream ----------------------------------------


@pytest.fixture(autouse=True)
async def _close_loop_clients() -> AsyncIterator[None]:
    """Each async test has its own event loop; close the clients opened on it."""
    yield
    await close_http_client()
    client = muxer_redis._async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.reset()
    return fake_upstream


def on_fake(fake: FakeUpstream) -> CatalogModel:
    return dataclasses.replace(MODEL, base_url=f"{fake.url}/anthropic/v1", credential="test-anthropic-key")


async def stats(fake: FakeUpstream) -> dict[str, Any]:
    return await asyncio.to_thread(fake.stats)


async def collect(model: CatalogModel, request: dict[str, Any]) -> tuple[list[dict[str, Any]], StreamProgress]:
    stream = AnthropicAdapter().stream(model, request)
    await stream.open()
    try:
        chunks = [chunk async for chunk in stream.chunks()]
    finally:
        await stream.close()
    return chunks, stream.progress


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def test_it_posts_the_translated_request_to_the_messages_endpoint(fake: FakeUpstream) -> None:
    request = {"model": MODEL.name, "messages": [{"role": "system", "content": "Be brief."}, *chat()["messages"]]}

    await AnthropicAdapter().chat(on_fake(fake), request)

    last = (await stats(fake))["last_request"]
    assert (last["method"], last["path"]) == ("POST", "/anthropic/v1/messages")
    # The fake keeps no credentials in its stats; it answers only a request that has an x-api-key.
    assert "x-api-key" not in last["headers"]
    assert last["headers"]["anthropic-version"] == "2023-06-01"
    assert last["headers"]["content-type"] == "application/json"
    assert last["body"] == {
        "model": "claude-haiku-5-5",
        "max_tokens": 128_000,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello gateway"}],
    }


async def test_it_answers_in_openai_shape_with_the_fakes_usage(fake: FakeUpstream) -> None:
    before = time.time()

    result = await AnthropicAdapter().chat(on_fake(fake), chat())

    body = result.body
    assert body["id"].startswith("chatcmpl-msg_")
    assert before - 1 <= body["created"] <= time.time() + 1
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": HELLO_REPLY, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"]["prompt_tokens"] == 4
    assert body["usage"]["completion_tokens"] == 5
    assert result.usage == Usage(input_tokens=4, output_tokens=5)
    assert (await stats(fake))["completed"] == 1


async def test_it_answers_a_tool_call_from_the_fake(fake: FakeUpstream) -> None:
    result = await AnthropicAdapter().chat(on_fake(fake), chat("What is the weather in Paris?", tools=[WEATHER_TOOL]))

    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("toolu_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert choice["message"]["content"] is None


async def test_the_fake_accepts_a_translated_tool_loop_and_answers_with_text(fake: FakeUpstream) -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        ],
        "tools": [WEATHER_TOOL],
    }

    result = await AnthropicAdapter().chat(on_fake(fake), request)

    assert result.body["choices"][0]["message"]["content"] == "Fake reply to: What is the weather in Paris?"
    assert result.body["choices"][0]["finish_reason"] == "stop"


async def test_it_maps_a_stop_sequence_hit_to_stop(fake: FakeUpstream) -> None:
    result = await AnthropicAdapter().chat(on_fake(fake), chat(stop=["gateway"]))

    assert result.body["choices"][0]["message"]["content"] == "Fake reply to: Hello "
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.usage.output_tokens == 4


async def test_it_maps_max_tokens_to_length(fake: FakeUpstream) -> None:
    result = await AnthropicAdapter().chat(on_fake(fake), chat(max_completion_tokens=2))

    assert result.body["choices"][0]["message"]["content"] == "Fake reply"
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert (await stats(fake))["last_request"]["body"]["max_tokens"] == 2


async def test_it_streams_text_from_the_fake(fake: FakeUpstream) -> None:
    chunks, progress = await collect(on_fake(fake), chat())

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == [
        "Fake ",
        "reply ",
        "to: ",
        "Hello ",
        "gateway",
    ]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert len({c["id"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {"claude-haiku-5-5"}
    assert progress.usage == Usage(input_tokens=4, output_tokens=5)
    assert progress.completion_chars == len(HELLO_REPLY)
    assert progress.finished is True
    last = (await stats(fake))["last_request"]
    assert last["body"]["stream"] is True
    assert (await stats(fake))["streams_completed"] == 1


async def test_it_streams_a_tool_call_from_the_fake(fake: FakeUpstream) -> None:
    chunks, progress = await collect(on_fake(fake), chat("Weather in Paris?", tools=[WEATHER_TOOL]))

    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["id"].startswith("toolu_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert {call["index"] for call in calls} == {0}
    assert "".join(call["function"]["arguments"] for call in calls) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # The fake's chars/4 estimate of the call: ceil((11 + 17) / 4).
    assert progress.usage == Usage(input_tokens=5, output_tokens=7)


async def test_it_reports_a_mid_stream_error_event_from_the_fake(fake: FakeUpstream) -> None:
    # message_start, content_block_start, ping, two words; then the error event.
    chunks, progress = await collect(on_fake(fake), chat(f"{HELLO} [fake fail_after_chunks=5]"))

    assert text_of(chunks) == "Fake reply "
    assert chunks[-1] == {
        "error": {
            "message": "anthropic failed mid-stream: Overloaded",
            "type": "upstream_error",
            "code": "overloaded_error",
            "param": None,
        }
    }
    assert progress.error is not None
    assert progress.usage is None
    assert (await stats(fake))["streams_failed"] == 1


@pytest.mark.parametrize(
    ("directive", "status", "retryable", "retry_after"),
    [
        pytest.param("status=400", 400, False, None, id="400"),
        pytest.param("status=401", 502, False, None, id="401"),
        pytest.param("status=429 retry_after=3", 503, True, "3", id="429"),
        pytest.param("status=500", 502, True, None, id="500"),
        pytest.param("status=529", 502, True, None, id="529-overloaded"),
    ],
)
async def test_it_maps_the_fakes_injected_errors(
    fake: FakeUpstream, directive: str, status: int, retryable: bool, retry_after: str | None
) -> None:
    with pytest.raises(ProviderError) as caught:
        await AnthropicAdapter().chat(on_fake(fake), chat(f"{HELLO} [fake {directive}]"))

    assert (caught.value.status, caught.value.retryable, caught.value.retry_after) == (status, retryable, retry_after)
    assert caught.value.upstream_status == int(directive.split()[0].removeprefix("status="))


async def test_it_echoes_anthropics_reason_for_a_bad_request(fake: FakeUpstream) -> None:
    with pytest.raises(ProviderError) as caught:
        await AnthropicAdapter().chat(on_fake(fake), chat(f"{HELLO} [fake status=400]"))

    assert caught.value.message == "anthropic rejected the request: Injected fake bad request."


async def test_a_stream_refused_upfront_raises_before_any_chunk(fake: FakeUpstream) -> None:
    stream = AnthropicAdapter().stream(on_fake(fake), chat(f"{HELLO} [fake status=529]"))

    with pytest.raises(ProviderError) as caught:
        await stream.open()

    assert (caught.value.status, caught.value.retryable, caught.value.upstream_status) == (502, True, 529)
    assert (await stats(fake))["streams_started"] == 0


async def test_a_refused_translation_never_reaches_the_provider(fake: FakeUpstream) -> None:
    stream = AnthropicAdapter().stream(on_fake(fake), chat(n=3))

    with pytest.raises(ProviderError):
        await stream.open()

    assert (await stats(fake))["requests"] == 0


# --- the fake's own checks, as the real API makes them ---------------------------


def post_fake(fake: FakeUpstream, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"x-api-key": "k", "anthropic-version": "2023-06-01"} if headers is None else headers
    return httpx.post(f"{fake.url}/anthropic/v1/messages", json=body, headers=sent)


def anthropic_message(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-haiku-5-5", "max_tokens": 64, "messages": [{"role": "user", "content": HELLO}], **extra}


def test_the_fake_requires_an_api_key(fake: FakeUpstream) -> None:
    response = post_fake(fake, anthropic_message(), {"anthropic-version": "2023-06-01"})

    assert response.status_code == 401
    assert response.json()["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
    assert response.json()["request_id"] == response.headers["request-id"]


def test_the_fake_requires_the_version_header(fake: FakeUpstream) -> None:
    response = post_fake(fake, anthropic_message(), {"x-api-key": "k"})

    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


def test_the_fake_requires_max_tokens(fake: FakeUpstream) -> None:
    body = anthropic_message()
    del body["max_tokens"]

    response = post_fake(fake, body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "max_tokens: Field required"
    assert fake.stats()["errors"] == 1


def test_the_fake_refuses_openai_fields(fake: FakeUpstream) -> None:
    response = post_fake(fake, anthropic_message(n=1))

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "n: Extra inputs are not permitted"


def test_the_fake_refuses_a_temperature_above_one(fake: FakeUpstream) -> None:
    response = post_fake(fake, anthropic_message(temperature=1.5))

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "temperature: Input should be less than or equal to 1 and greater than or equal to 0"
    )


def test_the_fake_refuses_a_tool_result_after_user_text(fake: FakeUpstream) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "here"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"},
            ],
        },
    ]

    response = post_fake(fake, anthropic_message(messages=messages))

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "messages.2.content.1: `tool_result` blocks must come first in a user message."
    )


def test_the_fake_refuses_an_unanswered_tool_use(fake: FakeUpstream) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
        {"role": "user", "content": "never mind"},
    ]

    response = post_fake(fake, anthropic_message(messages=messages))

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1."
    )


def test_the_fake_answers_a_documented_message(fake: FakeUpstream) -> None:
    response = post_fake(fake, anthropic_message(system="Be brief."))

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_")
    del body["id"]
    assert body == {
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-5-5",
        "content": [{"type": "text", "text": HELLO_REPLY}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            # ceil((9 + 13) / 4)
            "input_tokens": 6,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard",
        },
    }
    assert response.headers["anthropic-ratelimit-requests-limit"] == "4000"


def test_the_fake_streams_named_events_in_the_documented_order(fake: FakeUpstream) -> None:
    response = post_fake(fake, anthropic_message(stream=True, messages=[{"role": "user", "content": "Hi"}]))

    assert response.headers["content-type"] == "text/event-stream"
    events = response.text.split("\n\n")
    assert events[-1] == ""
    names = [event.split("\n")[0] for event in events[:-1]]
    assert names == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
        "event: content_block_delta",
        "event: content_block_delta",
        "event: content_block_delta",
        "event: content_block_delta",
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ]
    data = [orjson.loads(event.split("\n")[1].removeprefix("data: ")) for event in events[:-1]]
    assert [d["type"] for d in data] == [name.removeprefix("event: ") for name in names]
    assert data[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 4},
    }


def test_the_fake_sends_retry_after_and_anthropics_429_body(fake: FakeUpstream) -> None:
    response = post_fake(
        fake, anthropic_message(messages=[{"role": "user", "content": "x [fake status=429 retry_after=7]"}])
    )

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_the_fake_answers_529_overloaded(fake: FakeUpstream) -> None:
    response = post_fake(
        fake, anthropic_message(), {"x-api-key": "k", "anthropic-version": "2023-06-01", "x-fake-status": "529"}
    )

    assert response.status_code == 529
    assert response.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}


# --- the whole gateway, in process ------------------------------------------------

PATH = "/v1/chat/completions"
TIMEOUT = 15.0


@pytest.fixture
def usage_stream(settings: SettingsWrapper) -> Iterator[str]:
    """A stream of this test's own, shared by the in-process consumer and the drain."""
    name = f"muxer:usage:test:anthropic:{time.monotonic_ns()}"
    settings.MUXER_USAGE_STREAM = name
    yield name
    if settings.REDIS_URL:
        muxer_redis.sync_redis().delete(name)


async def post(body: dict[str, Any], key: str) -> tuple[int, dict[str, str], bytes]:
    raw = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
        (b"authorization", f"Bearer {key}".encode()),
    ]
    communicator = HttpCommunicator(application, "POST", PATH, body=raw, headers=headers)
    response = await communicator.get_response(timeout=TIMEOUT)
    # The consumer records usage after the response is complete; let it finish.
    await communicator.wait(timeout=TIMEOUT)
    return (
        response["status"],
        {name.decode(): value.decode() for name, value in response["headers"]},
        response["body"],
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


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(event[6:]) for event in body.split(b"\n\n") if event.startswith(b"data: {")]


proxy = pytest.mark.django_db(transaction=True)


@proxy
async def test_the_gateway_answers_through_anthropic_in_openai_shape(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    status, headers, raw = await post(chat(), api_key)

    assert status == 200
    body = orjson.loads(raw)
    assert body["object"] == "chat.completion"
    assert body["model"] == "claude-haiku-5-5"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": HELLO_REPLY, "refusal": None}
    assert body["usage"]["prompt_tokens"] == 4
    assert body["usage"]["completion_tokens"] == 5
    assert headers["x-muxer-provider"] == "anthropic"
    assert headers["x-muxer-model"] == "claude-haiku-5-5"
    # 4 input tokens at $0.10/M + 5 output tokens at $0.50/M.
    assert headers["x-muxer-cost-usd"] == "0.0000029000"
    last = (await stats(upstream))["last_request"]
    assert last["path"] == "/anthropic/v1/messages"
    assert last["headers"]["anthropic-version"] == "2023-06-01"
    [row] = await usage_rows()
    assert (row.provider, row.model, row.status, row.http_status) == ("anthropic", "claude-haiku-5-5", "ok", 200)
    assert (row.input_tokens, row.output_tokens, row.cached_input_tokens) == (4, 5, 0)
    assert row.cost_usd == Decimal("0.0000029000")
    assert row.usage_estimated is False
    assert row.stream is False


@proxy
async def test_the_gateway_streams_through_anthropic_in_openai_shape(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    status, headers, raw = await post(chat(stream=True, stream_options={"include_usage": True}), api_key)

    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["x-muxer-provider"] == "anthropic"
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = sse_chunks(raw)
    assert text_of(chunks) == HELLO_REPLY
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 4
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "claude-haiku-5-5" for c in chunks)
    [row] = await usage_rows()
    assert (row.provider, row.status, row.stream) == ("anthropic", UsageStatus.OK, True)
    assert (row.input_tokens, row.output_tokens) == (4, 5)
    assert row.cost_usd == Decimal("0.0000029000")
    assert row.usage_estimated is False


@proxy
async def test_the_gateway_streams_an_anthropic_tool_call(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    status, _, raw = await post(chat("Weather in Paris?", stream=True, tools=[WEATHER_TOOL]), api_key)

    assert status == 200
    chunks = sse_chunks(raw)
    fragments = [c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"]]
    calls = [fragment[0] for fragment in fragments if fragment]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(call["function"]["arguments"] for call in calls) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    [row] = await usage_rows()
    assert (row.input_tokens, row.output_tokens) == (5, 7)


@proxy
async def test_the_gateway_passes_anthropics_bad_request_to_the_client(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    status, _, raw = await post(chat(f"{HELLO} [fake status=400]"), api_key)

    assert status == 400
    assert orjson.loads(raw)["error"] == {
        "message": "anthropic rejected the request: Injected fake bad request.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request_error",
    }
    assert (await stats(upstream))["requests"] == 1
    [row] = await usage_rows()
    assert (row.provider, row.status, row.http_status, row.cost_usd) == ("anthropic", "error", 400, Decimal(0))


@proxy
async def test_the_gateway_retries_when_anthropic_is_overloaded(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    status, headers, raw = await post(chat(f"{HELLO} [fake status=529 times=1]"), api_key)

    assert status == 200
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == HELLO_REPLY
    assert headers["x-muxer-attempts"] == "2"
    assert (await stats(upstream))["errors"] == 1


@proxy
async def test_the_gateway_records_an_anthropic_mid_stream_error(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    status, _, raw = await post(chat(f"{HELLO} [fake fail_after_chunks=5]", stream=True), api_key)

    assert status == 200
    assert not raw.endswith(b"data: [DONE]\n\n")
    chunks = sse_chunks(raw)
    assert chunks[-1]["error"]["code"] == "overloaded_error"
    assert text_of(chunks[:-1]) == "Fake reply "
    [row] = await usage_rows()
    assert (row.status, row.http_status, row.error_code) == ("error", 502, "overloaded_error")
    assert row.usage_estimated is True


@proxy
async def test_the_gateway_refuses_n_above_one_for_anthropic_without_calling_it(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    status, _, raw = await post(chat(n=2), api_key)

    assert status == 400
    assert orjson.loads(raw)["error"]["message"] == "Anthropic models return a single choice; 'n' must be 1."
    assert (await stats(upstream))["requests"] == 0


# --- the official OpenAI SDK against a live gateway --------------------------------


def wait_for_usage(gateway: Gateway, *, count: int, timeout: float = 10.0) -> list[UsageRecord]:
    deadline = time.monotonic() + timeout
    while True:
        if settings.REDIS_URL:
            with override_settings(MUXER_USAGE_STREAM=gateway.usage_stream):
                usage_drain(block_ms=100)
        rows = list(UsageRecord.objects.order_by("created_at"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@proxy
def test_the_openai_sdk_cannot_tell_an_anthropic_tool_call_stream(
    gateway: Gateway, api_key: str, fake_upstream: FakeUpstream
) -> None:
    if settings.REDIS_URL:
        # Events other tests left on the live gateway's stream name keys that are gone by now.
        muxer_redis.sync_redis().delete(gateway.usage_stream)
    client = openai.OpenAI(api_key=api_key, base_url=f"{gateway.url}/v1", max_retries=0)

    stream = client.chat.completions.create(
        model="claude-haiku-5-5",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[SDK_WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    assert "".join(call.function.arguments or "" for call in calls if call.function) == '{"city": "Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (8, 7)
    [row] = wait_for_usage(gateway, count=1)
    assert (row.provider, row.model, row.output_tokens) == ("anthropic", "claude-haiku-5-5", 7)
