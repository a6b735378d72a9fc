"""The Gemini adapter and the fake upstream's Gemini dialect.

Golden fixtures first (OpenAI request -> the exact ``generateContent`` body;
documented Gemini answers and stream events -> the exact OpenAI answer and
chunks), then error mapping, then the adapter against the fake upstream, then
the whole gateway in process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from billing.models import UsageStatus
from muxer_project import redis as muxer_redis
from providers.adapters import adapter_for
from providers.adapters.base import ChatResult, ProviderError, StreamProgress, Usage
from providers.adapters.gemini import (
    SKIP_THOUGHT_SIGNATURE,
    ChunkTranslator,
    GeminiAdapter,
    GeminiChatStream,
    error_from_response,
    gemini_request,
    openai_completion,
)
from providers.catalog import CatalogModel
from providers.fake_wire.gemini import take_dialect_directives
from providers.http import close_http_client
from tests.conftest import FakeUpstream
from tests.routing.harness import data_chunks, post, sse_events, upstream_stats, usage_rows

MODEL = CatalogModel(
    name="gemini-2.5-flash",
    kind="chat",
    provider="gemini",
    wire_format="gemini",
    base_url="https://generativelanguage.googleapis.com/v1beta",
    credential="test-gemini-key",
    input_price_per_mtok_usd=Decimal("0.30"),
    output_price_per_mtok_usd=Decimal("2.50"),
    cached_input_price_per_mtok_usd=Decimal("0.03"),
    context_window=1_048_576,
    max_output_tokens=65_536,
    supports_streaming=True,
    supports_tools=True,
    supports_vision=True,
    supports_json_mode=True,
    created=0,
)
GEMINI_3 = dataclasses.replace(MODEL, name="gemini-3.8-flash")
HELLO = "Hello gateway"
# 13 characters -> 4 prompt tokens; 5 words -> 5 completion tokens.
HELLO_REPLY = "Fake reply to: Hello gateway"
KEY_SHA256 = hashlib.sha256(b"test-gemini-key").hexdigest()
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": WEATHER_SCHEMA},
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}
WEATHER_DECLARATION = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parametersJsonSchema": WEATHER_SCHEMA,
}


def chat(content: Any = HELLO, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL.name, "messages": [{"role": "user", "content": content}], **extra}


def refusal(request: dict[str, Any], model: CatalogModel = MODEL) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        gemini_request(model, request)
    assert (caught.value.status, caught.value.retryable, caught.value.type) == (400, False, "invalid_request_error")
    return caught.value


# --- OpenAI request -> Gemini request ---------------------------------------------------


def test_a_plain_user_message_becomes_one_user_turn() -> None:
    assert gemini_request(MODEL, chat()) == {"contents": [{"role": "user", "parts": [{"text": "Hello gateway"}]}]}


def test_system_and_developer_messages_become_the_system_instruction() -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "hi"},
        ],
    }

    assert gemini_request(MODEL, request) == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]},
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
    }


def test_assistant_turns_are_model_turns_and_consecutive_turns_of_one_role_merge() -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
            {"role": "assistant", "content": "four"},
            {"role": "assistant", "content": [{"type": "text", "text": "five"}]},
            {"role": "user", "content": "six"},
        ],
    }

    assert gemini_request(MODEL, request)["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}, {"text": "three"}]},
        {"role": "model", "parts": [{"text": "four"}, {"text": "five"}]},
        {"role": "user", "parts": [{"text": "six"}]},
    ]


def test_an_image_data_url_becomes_inline_data() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
    ]

    assert gemini_request(MODEL, chat(content))["contents"] == [
        {
            "role": "user",
            "parts": [{"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}],
        }
    ]


def test_an_image_url_becomes_file_data_with_the_type_its_name_implies() -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg?size=large"}}]

    assert gemini_request(MODEL, chat(content))["contents"][0]["parts"] == [
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg?size=large"}}
    ]


def test_an_image_url_without_a_known_type_is_sent_without_one() -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/image"}}]

    assert gemini_request(MODEL, chat(content))["contents"][0]["parts"] == [
        {"fileData": {"fileUri": "https://example.com/image"}}
    ]


def test_input_audio_becomes_inline_data() -> None:
    content = [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]

    assert gemini_request(MODEL, chat(content))["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}}
    ]


def test_a_data_url_that_is_not_base64_is_refused() -> None:
    content = [{"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}]

    error = refusal(chat(content))

    assert error.message == (
        "messages[0].content[0]: only base64 data URLs (data:<type>;base64,...) can be sent to gemini."
    )


def test_a_whole_tool_conversation_becomes_function_calls_and_responses() -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_b", "content": "14:00"},
            {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "Sunny"}]},
            {"role": "assistant", "content": "Sunny, 14:00."},
        ],
    }

    assert gemini_request(MODEL, request)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_time", "response": {"result": "14:00"}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "Sunny"}}},
            ],
        },
        {"role": "model", "parts": [{"text": "Sunny, 14:00."}]},
    ]


def test_gemini_3_replays_each_model_turns_first_call_with_the_skip_signature() -> None:
    request = {
        "model": GEMINI_3.name,
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": "14:00"},
        ],
    }

    model_turn = gemini_request(GEMINI_3, request)["contents"][1]

    assert model_turn == {
        "role": "model",
        "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": SKIP_THOUGHT_SIGNATURE},
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    assert SKIP_THOUGHT_SIGNATURE == "skip_thought_signature_validator"


def test_a_tool_result_for_an_unknown_call_is_refused() -> None:
    request = {
        "model": MODEL.name,
        "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}],
    }

    assert refusal(request).message == "messages[1]: tool_call_id 'call_x' matches no earlier tool call."


def test_tool_call_arguments_that_are_not_a_json_object_are_refused() -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]},
        ],
    }

    assert refusal(request).message == (
        "messages[1].tool_calls[0]: gemini needs a tool call's arguments to be a JSON object."
    )


def test_an_empty_assistant_turn_is_left_out() -> None:
    request = {
        "model": MODEL.name,
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "b"},
        ],
    }

    assert gemini_request(MODEL, request)["contents"] == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}]


def test_tools_become_function_declarations_with_full_json_schema() -> None:
    body = gemini_request(MODEL, chat(tools=[WEATHER_TOOL, TIME_TOOL]))

    assert body["tools"] == [{"functionDeclarations": [WEATHER_DECLARATION, {"name": "get_time"}]}]
    assert "toolConfig" not in body


@pytest.mark.parametrize(
    ("tool_choice", "config"),
    [
        pytest.param("auto", {"mode": "AUTO"}, id="auto"),
        pytest.param("required", {"mode": "ANY"}, id="required"),
        pytest.param("none", {"mode": "NONE"}, id="none"),
        pytest.param(
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
            id="named",
        ),
        pytest.param(
            {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [TIME_TOOL]}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
            id="allowed-required",
        ),
    ],
)
def test_tool_choice_becomes_the_function_calling_config(tool_choice: Any, config: dict[str, Any]) -> None:
    body = gemini_request(MODEL, chat(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=tool_choice))

    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_allowed_tools_in_auto_mode_declares_only_those_tools() -> None:
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [TIME_TOOL]}}

    body = gemini_request(MODEL, chat(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=choice))

    assert body["tools"] == [{"functionDeclarations": [{"name": "get_time"}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


def test_legacy_functions_become_declarations_and_function_call_the_config() -> None:
    body = gemini_request(MODEL, chat(functions=[WEATHER_TOOL["function"]], function_call={"name": "get_weather"}))

    assert body["tools"] == [{"functionDeclarations": [WEATHER_DECLARATION]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_sampling_options_become_the_generation_config() -> None:
    request = chat(
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        max_completion_tokens=100,
        stop="END",
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0,
    )

    assert gemini_request(MODEL, request)["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 100,
        "stopSequences": ["END"],
        "seed": 7,
        "presencePenalty": 0.5,
    }


def test_a_stop_list_is_sent_as_is() -> None:
    assert gemini_request(MODEL, chat(stop=["a", "b"]))["generationConfig"] == {"stopSequences": ["a", "b"]}


def test_json_object_mode_asks_for_json() -> None:
    body = gemini_request(MODEL, chat(response_format={"type": "json_object"}))

    assert body["generationConfig"] == {"responseMimeType": "application/json"}


def test_a_json_schema_becomes_the_response_json_schema() -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_SCHEMA, "strict": True}}

    body = gemini_request(MODEL, chat(response_format=response_format))

    assert body["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": WEATHER_SCHEMA}


def test_options_gemini_lacks_are_dropped() -> None:
    request = chat(
        response_format={"type": "text"},
        logprobs=True,
        top_logprobs=2,
        logit_bias={"1": 2},
        user="u-1",
        parallel_tool_calls=False,
        reasoning_effort="low",
        metadata={"a": "b"},
        n=1,
    )

    assert gemini_request(MODEL, request) == {"contents": [{"role": "user", "parts": [{"text": "Hello gateway"}]}]}


def test_more_than_one_choice_is_refused() -> None:
    assert refusal(chat(n=2)).message == "gemini models answer with one choice here; 'n' must be 1."


def test_the_adapter_posts_to_generate_content_with_the_key_header() -> None:
    adapter = GeminiAdapter()

    assert adapter.url(MODEL, stream=False) == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert adapter.url(MODEL, stream=True) == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert adapter.headers(MODEL) == {"content-type": "application/json", "x-goog-api-key": "test-gemini-key"}


def test_the_registry_serves_gemini_models_with_this_adapter() -> None:
    assert isinstance(adapter_for(MODEL), GeminiAdapter)


# --- Gemini answer -> OpenAI answer -----------------------------------------------------


def answer(*parts: dict[str, Any], finish: str = "STOP", **usage: int) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": list(parts)}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage or {"promptTokenCount": 8, "candidatesTokenCount": 3, "totalTokenCount": 11},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1",
    }


def completion(data: dict[str, Any]) -> ChatResult:
    result = openai_completion(MODEL, data)
    assert result.body["created"] == pytest.approx(time.time(), abs=5)
    return result


def test_a_text_answer_becomes_a_chat_completion_without_the_thoughts() -> None:
    data = answer(
        {"text": "Let me think.", "thought": True},
        {"text": "Hello "},
        {"text": "there."},
        promptTokenCount=8,
        candidatesTokenCount=3,
        thoughtsTokenCount=14,
        cachedContentTokenCount=2,
        totalTokenCount=25,
    )

    result = completion(data)

    assert {k: v for k, v in result.body.items() if k != "created"} == {
        "id": "chatcmpl-resp-1",
        "object": "chat.completion",
        "model": "gemini-2.5-flash",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 8,
            "completion_tokens": 17,
            "total_tokens": 25,
            "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 14, "audio_tokens": 0},
        },
    }
    assert result.usage == Usage(input_tokens=8, output_tokens=17, cached_input_tokens=2, reasoning_tokens=14)


def test_function_calls_become_tool_calls_with_ids_and_json_arguments() -> None:
    data = answer(
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time"}},
    )

    choice = completion(data).body["choices"][0]

    calls = choice["message"]["tool_calls"]
    assert [call["id"][:5] for call in calls] == ["call_", "call_"]
    assert calls[0]["id"] != calls[1]["id"]
    assert [{k: v for k, v in call.items() if k != "id"} for call in calls] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert choice["message"]["content"] is None
    assert choice["finish_reason"] == "tool_calls"


def test_text_beside_a_function_call_is_kept() -> None:
    data = answer({"text": "Checking."}, {"functionCall": {"name": "get_weather", "args": {}}})

    message = completion(data).body["choices"][0]["message"]

    assert message["content"] == "Checking."
    assert len(message["tool_calls"]) == 1


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("IMAGE_PROHIBITED_CONTENT", "content_filter"),
        ("IMAGE_RECITATION", "content_filter"),
    ],
)
def test_finish_reasons_map_to_openais(reason: str, expected: str) -> None:
    assert completion(answer({"text": "x"}, finish=reason)).body["choices"][0]["finish_reason"] == expected


@pytest.mark.parametrize(
    "reason",
    [
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "OTHER",
        "NO_IMAGE",
        "IMAGE_OTHER",
        "FINISH_REASON_UNSPECIFIED",
    ],
)
def test_finish_reasons_without_an_openai_counterpart_are_a_retryable_502(reason: str) -> None:
    with pytest.raises(ProviderError) as caught:
        openai_completion(MODEL, answer({"text": "x"}, finish=reason))

    assert (caught.value.status, caught.value.retryable) == (502, True)
    assert caught.value.message == f"gemini stopped without an answer ({reason})."


def test_an_unsupported_language_is_the_clients_400() -> None:
    with pytest.raises(ProviderError) as caught:
        openai_completion(MODEL, answer({"text": "x"}, finish="LANGUAGE"))

    assert (caught.value.status, caught.value.retryable) == (400, False)


def test_a_blocked_prompt_is_an_empty_content_filter_answer() -> None:
    data = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-2",
    }

    result = completion(data)

    assert result.body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": "content_filter",
        }
    ]
    assert result.usage == Usage(input_tokens=9)


def test_an_answer_without_usage_leaves_usage_to_be_estimated() -> None:
    data = answer({"text": "x"})
    del data["usageMetadata"], data["responseId"]

    result = completion(data)

    assert result.usage == Usage(estimated=True)
    assert "usage" not in result.body
    assert result.body["id"].startswith("chatcmpl-")


# --- Gemini stream events -> OpenAI chunks ----------------------------------------------


def translator() -> tuple[ChunkTranslator, StreamProgress]:
    progress = StreamProgress()
    return ChunkTranslator(MODEL, progress), progress


def deltas(chunks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    return [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks]


# The documented two-event example, usage running totals, the first without candidatesTokenCount.
DOC_EVENTS = [
    {
        "candidates": [{"content": {"parts": [{"text": "1\n2\n"}], "role": "model"}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "Whml",
    },
    {
        "candidates": [
            {"content": {"parts": [{"text": "3\n4\n5"}], "role": "model"}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 8, "totalTokenCount": 16},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "Whml",
    },
]


def test_text_events_become_a_role_delta_text_deltas_and_a_finish_chunk() -> None:
    stream, progress = translator()

    chunks = [chunk for event in DOC_EVENTS for chunk in stream.translate(event)] + stream.end()

    assert deltas(chunks) == [
        ({"role": "assistant", "content": "", "refusal": None}, None),
        ({"content": "1\n2\n"}, None),
        ({"content": "3\n4\n5"}, None),
        ({}, "stop"),
    ]
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == {
        ("chatcmpl-Whml", "chat.completion.chunk", "gemini-2.5-flash")
    }
    assert len({c["created"] for c in chunks}) == 1
    assert (progress.completion_chars, progress.finished, progress.error) == (9, True, None)


def test_stream_usage_is_the_last_running_total() -> None:
    stream, progress = translator()

    stream.translate(DOC_EVENTS[0])
    assert progress.usage == Usage(input_tokens=8, output_tokens=0)
    stream.translate(DOC_EVENTS[1])
    assert progress.usage == Usage(input_tokens=8, output_tokens=8)


def test_stream_thoughts_count_as_reasoning_and_their_text_is_not_sent() -> None:
    stream, progress = translator()
    event = {
        "candidates": [{"content": {"parts": [{"text": "hmm", "thought": True}], "role": "model"}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 8, "thoughtsTokenCount": 5, "cachedContentTokenCount": 4},
    }

    chunks = stream.translate(event)

    assert deltas(chunks) == [({"role": "assistant", "content": "", "refusal": None}, None)]
    assert progress.usage == Usage(input_tokens=8, output_tokens=5, cached_input_tokens=4, reasoning_tokens=5)


def test_stream_function_calls_become_one_whole_tool_call_delta_each() -> None:
    stream, _ = translator()
    event = {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        {"functionCall": {"name": "get_time", "args": {}}},
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 6, "totalTokenCount": 14},
    }

    chunks = stream.translate(event)

    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:3]]
    assert [call[0]["id"][:5] for call in calls] == ["call_", "call_"]
    assert [[{k: v for k, v in call[0].items() if k != "id"}] for call in calls] == [
        [{"index": 0, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
        [{"index": 1, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
    ]
    assert deltas(chunks[3:]) == [({}, "tool_calls")]


def test_a_stream_blocked_for_safety_after_some_text_ends_with_content_filter() -> None:
    stream, _ = translator()
    text_event = {"candidates": [{"content": {"parts": [{"text": "Once"}], "role": "model"}, "index": 0}]}
    blocked = {"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": []}]}

    chunks = stream.translate(text_event) + stream.translate(blocked)

    assert deltas(chunks)[1:] == [({"content": "Once"}, None), ({}, "content_filter")]


def test_a_blocked_prompt_in_a_stream_is_a_content_filter_finish() -> None:
    stream, progress = translator()
    event = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7}}

    chunks = stream.translate(event) + stream.end()

    assert deltas(chunks) == [({"role": "assistant", "content": "", "refusal": None}, None), ({}, "content_filter")]
    assert progress.usage == Usage(input_tokens=7)
    assert progress.finished is True


def test_a_mid_stream_error_event_becomes_an_error_chunk_and_ends_the_stream() -> None:
    stream, progress = translator()
    stream.translate(DOC_EVENTS[0])

    chunks = stream.translate(
        {"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}
    )

    expected = {
        "message": "gemini failed mid-stream: An internal error has occurred.",
        "type": "upstream_error",
        "code": "upstream_error",
    }
    assert chunks == [{"error": {**expected, "param": None}}]
    assert progress.error == expected
    assert stream.translate(DOC_EVENTS[1]) == []
    assert stream.end() == []


def test_a_failed_finish_reason_mid_stream_is_an_error_chunk() -> None:
    stream, progress = translator()
    event = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "MALFORMED_FUNCTION_CALL"}]}

    chunks = stream.translate(event)

    assert deltas(chunks[:2]) == [
        ({"role": "assistant", "content": "", "refusal": None}, None),
        ({"content": "x"}, None),
    ]
    assert chunks[2] == {
        "error": {
            "message": "gemini stopped without an answer (MALFORMED_FUNCTION_CALL).",
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }
    assert progress.error is not None


def test_a_stream_that_ends_before_its_finish_reason_is_an_error() -> None:
    stream, progress = translator()
    stream.translate(DOC_EVENTS[0])

    assert stream.end() == [
        {
            "error": {
                "message": "gemini ended the stream before finishing.",
                "type": "upstream_error",
                "code": "upstream_error",
                "param": None,
            }
        }
    ]
    assert progress.finished is False


async def test_the_stream_reader_accepts_crlf_framed_events() -> None:
    body = b"".join(b"data: " + orjson.dumps(event) + b"\r\n\r\n" for event in DOC_EVENTS)
    stream = GeminiChatStream(GeminiAdapter(), MODEL, chat())
    stream.response = httpx.Response(200, content=body)

    chunks = [chunk async for chunk in stream.chunks()]

    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "1\n2\n", "3\n4\n5", None]
    assert stream.progress.usage == Usage(input_tokens=8, output_tokens=8)


async def test_the_stream_reader_accepts_data_fields_without_a_space() -> None:
    body = b"".join(b"data:" + orjson.dumps(event) + b"\n\n" for event in DOC_EVENTS)
    stream = GeminiChatStream(GeminiAdapter(), MODEL, chat())
    stream.response = httpx.Response(200, content=body)

    chunks = [chunk async for chunk in stream.chunks()]

    assert text_of(chunks) == "1\n2\n3\n4\n5"


async def test_the_stream_reader_takes_a_last_event_without_its_blank_line() -> None:
    body = b"data: " + orjson.dumps(DOC_EVENTS[0]) + b"\n\ndata: " + orjson.dumps(DOC_EVENTS[1])
    stream = GeminiChatStream(GeminiAdapter(), MODEL, chat())
    stream.response = httpx.Response(200, content=body)

    chunks = [chunk async for chunk in stream.chunks()]

    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert stream.progress.error is None


# --- errors -----------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def mapped(status: int, body: bytes, headers: dict[str, str] | None = None) -> ProviderError:
    return error_from_response(status, body, httpx.Headers(headers or {}), "gemini")


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def test_an_invalid_argument_is_the_clients_400_with_geminis_message() -> None:
    error = mapped(400, google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."))

    assert (error.status, error.retryable, error.code, error.type) == (
        400,
        False,
        "invalid_request_error",
        "invalid_request_error",
    )
    assert error.message == "gemini rejected the request: Request contains an invalid argument."


def test_an_invalid_api_key_is_a_502_that_hides_geminis_text() -> None:
    body = google_error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"},
    )

    error = mapped(400, body)

    assert (error.status, error.retryable, error.upstream_status) == (502, False, 400)
    assert error.message == "gemini refused the gateway's credentials (HTTP 400)."


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_a_502_that_hides_geminis_text(status: int) -> None:
    error = mapped(status, google_error(status, "PERMISSION_DENIED", "The caller does not have permission"))

    assert (error.status, error.retryable) == (502, False)
    assert error.message == f"gemini refused the gateway's credentials (HTTP {status})."


def test_a_failed_precondition_is_the_gateways_account_not_the_request() -> None:
    body = google_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use.")

    error = mapped(400, body)

    assert (error.status, error.retryable) == (502, False)
    assert error.message == "gemini will not serve the gateway's account (HTTP 400 FAILED_PRECONDITION)."


@pytest.mark.parametrize(("delay", "retry_after"), [("22s", "22"), ("1.5s", "2"), ("0.2s", "1")])
def test_a_rate_limit_is_a_retryable_503_waiting_the_retry_delay(delay: str, retry_after: str) -> None:
    body = google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota.",
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        retry_info(delay),
    )

    error = mapped(429, body)

    assert (error.status, error.retryable, error.retry_after) == (503, True, retry_after)
    assert error.message == "gemini is rate limiting the gateway (HTTP 429)."


def test_a_rate_limit_without_retry_info_falls_back_to_a_retry_after_header() -> None:
    error = mapped(429, google_error(429, "RESOURCE_EXHAUSTED", "quota"), {"retry-after": "5"})

    assert error.retry_after == "5"


@pytest.mark.parametrize(("status", "name"), [(500, "INTERNAL"), (503, "UNAVAILABLE")])
def test_server_errors_and_overload_are_a_retryable_502(status: int, name: str) -> None:
    error = mapped(status, google_error(status, name, "The model is overloaded. Please try again later."))

    assert (error.status, error.retryable, error.upstream_status) == (502, True, status)
    assert error.message == f"gemini failed with HTTP {status}."


def test_a_deadline_exceeded_is_an_upstream_timeout() -> None:
    error = mapped(504, google_error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."))

    assert (error.status, error.retryable, error.code) == (504, True, "upstream_timeout")


def test_an_error_inside_a_json_array_is_read() -> None:
    body = b"[" + google_error(404, "NOT_FOUND", "models/x is not found") + b"]"

    assert mapped(404, body).message == "gemini rejected the request: models/x is not found"


def test_an_error_body_that_is_not_json_still_maps_by_status() -> None:
    error = mapped(502, b"<html>Bad Gateway</html>")

    assert (error.status, error.retryable) == (502, True)


# --- the fake's dialect directives -----------------------------------------------------


def test_dialect_directive_keys_are_taken_out_and_shared_ones_left() -> None:
    text, found = take_dialect_directives("hi [fake gemini_block=prompt status=503] there", "m")

    assert (text, found) == ("hi [fake status=503] there", {"gemini_block": "prompt"})


def test_a_directive_scoped_to_another_model_does_not_apply_its_dialect_keys() -> None:
    text, found = take_dialect_directives("[fake gemini_block=safety model=other]hi", "m")

    assert (text, found) == ("[fake model=other]hi", {})


# --- the adapter against the fake upstream -------------------------------------------------


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


def on_fake(fake: FakeUpstream, model: CatalogModel = MODEL) -> CatalogModel:
    return dataclasses.replace(model, base_url=f"{fake.url}/gemini/v1beta")


async def last_request(fake: FakeUpstream) -> dict[str, Any]:
    request: dict[str, Any] = (await asyncio.to_thread(fake.stats))["last_request"]
    return request


async def stream_all(model: CatalogModel, request: dict[str, Any]) -> tuple[list[dict[str, Any]], StreamProgress]:
    stream = GeminiAdapter().stream(model, request)
    await stream.open()
    try:
        chunks = [chunk async for chunk in stream.chunks()]
    finally:
        await stream.close()
    return chunks, stream.progress


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def chat_error(model: CatalogModel, request: dict[str, Any]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await GeminiAdapter().chat(model, request)
    return caught.value


async def test_the_adapter_sends_the_translated_request_to_generate_content(fake: FakeUpstream) -> None:
    request = {
        "model": MODEL.name,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": HELLO}],
        "temperature": 0.5,
    }

    await GeminiAdapter().chat(on_fake(fake), request)

    last = await last_request(fake)
    assert (last["method"], last["path"]) == ("POST", "/gemini/v1beta/models/gemini-2.5-flash:generateContent")
    assert last["credential_sha256"] == KEY_SHA256
    assert last["headers"]["content-type"] == "application/json"
    assert last["body"] == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": HELLO}]}],
        "generationConfig": {"temperature": 0.5},
    }


async def test_the_adapter_answers_with_the_fakes_reply_and_usage(fake: FakeUpstream) -> None:
    result = await GeminiAdapter().chat(on_fake(fake), chat())

    assert result.body["choices"][0]["message"] == {"role": "assistant", "content": HELLO_REPLY, "refusal": None}
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.body["model"] == "gemini-2.5-flash"
    assert result.usage == Usage(input_tokens=4, output_tokens=5)
    assert (await asyncio.to_thread(fake.stats))["completed"] == 1


async def test_the_adapter_maps_max_output_tokens_to_length(fake: FakeUpstream) -> None:
    result = await GeminiAdapter().chat(on_fake(fake), chat(max_tokens=2))

    assert result.body["choices"][0]["message"]["content"] == "Fake reply"
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert (await last_request(fake))["body"]["generationConfig"] == {"maxOutputTokens": 2}


async def test_the_adapter_returns_the_fakes_function_call_as_a_tool_call(fake: FakeUpstream) -> None:
    result = await GeminiAdapter().chat(on_fake(fake), chat("Weather in Paris?", tools=[WEATHER_TOOL]))

    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    # ceil(("get_weather" + '{"city": "Paris"}') / 4) like the OpenAI route.
    assert result.usage.output_tokens == 7


async def test_a_tool_result_sent_back_gets_a_text_answer(fake: FakeUpstream) -> None:
    request = {
        "model": MODEL.name,
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
        ],
    }

    result = await GeminiAdapter().chat(on_fake(fake), request)

    assert result.body["choices"][0]["message"]["content"] == "Fake reply to: Weather in Paris?"
    assert result.body["choices"][0]["finish_reason"] == "stop"


async def test_the_fake_accepts_the_skip_signature_on_a_gemini_3_replay(fake: FakeUpstream) -> None:
    request = {
        "model": GEMINI_3.name,
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
        ],
    }

    result = await GeminiAdapter().chat(on_fake(fake, GEMINI_3), request)

    assert result.body["choices"][0]["finish_reason"] == "stop"
    replay = (await last_request(fake))["body"]["contents"][1]["parts"][0]
    assert replay["thoughtSignature"] == SKIP_THOUGHT_SIGNATURE


async def test_the_adapter_counts_thoughts_and_cached_tokens_from_the_fake(fake: FakeUpstream) -> None:
    prompt = "[fake gemini_thoughts=4 gemini_cached=3] Hello gateway"

    result = await GeminiAdapter().chat(on_fake(fake), chat(prompt))

    # 54 characters -> 14 prompt tokens; the reply's 5 words plus 4 thought tokens.
    assert result.usage == Usage(input_tokens=14, output_tokens=9, cached_input_tokens=3, reasoning_tokens=4)
    assert result.body["choices"][0]["message"]["content"] == HELLO_REPLY


async def test_the_adapter_streams_text_deltas_and_usage(fake: FakeUpstream) -> None:
    chunks, progress = await stream_all(on_fake(fake), chat("Stream this please"))

    last = await last_request(fake)
    assert last["path"] == "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert last["credential_sha256"] == KEY_SHA256
    assert deltas(chunks) == [
        ({"role": "assistant", "content": "", "refusal": None}, None),
        ({"content": "Fake "}, None),
        ({"content": "reply "}, None),
        ({"content": "to: "}, None),
        ({"content": "Stream "}, None),
        ({"content": "this "}, None),
        ({"content": "please"}, None),
        ({}, "stop"),
    ]
    # "Stream this please": 18 characters -> 5 prompt tokens; 6 words.
    assert progress.usage == Usage(input_tokens=5, output_tokens=6)
    assert (progress.finished, progress.error, progress.completion_chars) == (True, None, 33)
    stats = await asyncio.to_thread(fake.stats)
    assert (stats["streams_started"], stats["streams_completed"]) == (1, 1)


async def test_the_adapter_streams_a_tool_call(fake: FakeUpstream) -> None:
    chunks, progress = await stream_all(on_fake(fake), chat("Weather?", tools=[WEATHER_TOOL], tool_choice="required"))

    assert (await last_request(fake))["body"]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    [call] = chunks[1]["choices"][0]["delta"]["tool_calls"]
    assert (call["index"], call["type"], call["function"]) == (
        0,
        "function",
        {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    )
    assert deltas(chunks[2:]) == [({}, "tool_calls")]
    assert progress.usage == Usage(input_tokens=2, output_tokens=7)


async def test_a_streamed_thought_is_not_sent_but_counted(fake: FakeUpstream) -> None:
    chunks, progress = await stream_all(on_fake(fake), chat("[fake gemini_thoughts=3 words=2]"))

    assert text_of(chunks) == "lorem ipsum"
    assert progress.usage == Usage(input_tokens=8, output_tokens=5, reasoning_tokens=3)


async def test_a_blocked_prompt_is_an_empty_content_filter_answer_from_the_fake(fake: FakeUpstream) -> None:
    result = await GeminiAdapter().chat(on_fake(fake), chat("[fake gemini_block=prompt] Hello"))

    assert result.body["choices"][0]["message"]["content"] == ""
    assert result.body["choices"][0]["finish_reason"] == "content_filter"
    assert result.usage == Usage(input_tokens=8)


async def test_a_streamed_blocked_prompt_finishes_with_content_filter(fake: FakeUpstream) -> None:
    chunks, progress = await stream_all(on_fake(fake), chat("[fake gemini_block=prompt] Hello"))

    assert deltas(chunks) == [({"role": "assistant", "content": "", "refusal": None}, None), ({}, "content_filter")]
    assert progress.error is None


async def test_a_safety_blocked_answer_is_content_filter(fake: FakeUpstream) -> None:
    result = await GeminiAdapter().chat(on_fake(fake), chat("[fake gemini_block=safety] Hello"))

    assert result.body["choices"][0]["message"]["content"] == ""
    assert result.body["choices"][0]["finish_reason"] == "content_filter"


async def test_a_streamed_safety_block_sends_the_text_then_content_filter(fake: FakeUpstream) -> None:
    chunks, _ = await stream_all(on_fake(fake), chat("[fake gemini_block=safety] Hello"))

    assert text_of(chunks) == "Fake reply to: Hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


async def test_a_mid_stream_failure_yields_the_chunks_then_an_error(fake: FakeUpstream) -> None:
    chunks, progress = await stream_all(on_fake(fake), chat("[fake fail_after_chunks=2] hi"))

    assert text_of(chunks) == "Fake reply "
    assert chunks[-1] == {
        "error": {
            "message": "gemini failed mid-stream: An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting",
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }
    assert progress.error is not None
    assert (await asyncio.to_thread(fake.stats))["streams_failed"] == 1


async def test_a_truncated_stream_is_an_error_not_a_finish(fake: FakeUpstream) -> None:
    chunks, progress = await stream_all(on_fake(fake), chat("[fake truncate_stream=1] hi"))

    assert text_of(chunks) == "Fake reply to: "
    assert chunks[-1]["error"]["message"] == "gemini ended the stream before finishing."
    assert progress.finished is False


async def test_a_fake_429_is_a_retryable_503_with_its_retry_delay(fake: FakeUpstream) -> None:
    error = await chat_error(on_fake(fake), chat("[fake status=429 retry_after=7] hi"))

    assert (error.status, error.retryable, error.retry_after, error.upstream_status) == (503, True, "7", 429)


async def test_a_fake_503_is_a_retryable_502_before_the_stream_opens(fake: FakeUpstream) -> None:
    stream = GeminiAdapter().stream(on_fake(fake), chat("[fake status=503] hi"))

    with pytest.raises(ProviderError) as caught:
        await stream.open()

    assert (caught.value.status, caught.value.retryable) == (502, True)


async def test_a_fake_400_passes_geminis_message_on(fake: FakeUpstream) -> None:
    error = await chat_error(on_fake(fake), chat("[fake status=400] hi"))

    assert (error.status, error.message) == (400, "gemini rejected the request: Request contains an invalid argument.")


async def test_a_fake_invalid_key_is_a_non_retryable_502(fake: FakeUpstream) -> None:
    error = await chat_error(on_fake(fake), chat("[fake gemini_error=api_key_invalid] hi"))

    assert (error.status, error.retryable, error.upstream_status) == (502, False, 400)
    assert "API key not valid" not in error.message


async def test_a_missing_key_is_refused_by_the_fake_as_gemini_does(fake: FakeUpstream) -> None:
    error = await chat_error(dataclasses.replace(on_fake(fake), credential=""), chat())

    assert (error.status, error.retryable, error.upstream_status) == (502, False, 403)


async def fake_post(fake: FakeUpstream, path: str, body: dict[str, Any]) -> httpx.Response:
    """A request straight to the fake's Gemini dialect, as a Gemini client would send it."""
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{fake.url}/gemini/v1beta/{path}", json=body, headers={"x-goog-api-key": "test-gemini-key"}
        )


async def test_the_fake_rejects_snake_case_field_names(fake: FakeUpstream) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "system_instruction": {"parts": []}}

    response = await fake_post(fake, "models/gemini-2.5-flash:generateContent", body)

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": 400,
            "message": 'Invalid JSON payload received. Unknown name "system_instruction": Cannot find field.',
            "status": "INVALID_ARGUMENT",
        }
    }


async def test_the_fake_rejects_a_turn_without_parts(fake: FakeUpstream) -> None:
    response = await fake_post(
        fake, "models/gemini-2.5-flash:generateContent", {"contents": [{"role": "user", "parts": []}]}
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "* GenerateContentRequest.contents[0].parts: contents.parts must not be empty.\n"
    )


async def test_the_fake_streams_a_json_array_without_alt_sse(fake: FakeUpstream) -> None:
    body = {"contents": [{"parts": [{"text": "[fake words=2]"}]}]}

    response = await fake_post(fake, "models/gemini-2.5-flash:streamGenerateContent", body)

    events = response.json()
    assert [e["candidates"][0]["content"]["parts"][0]["text"] for e in events] == ["lorem ", "ipsum"]
    assert [e["candidates"][0].get("finishReason") for e in events] == [None, "STOP"]
    assert [e["usageMetadata"].get("candidatesTokenCount") for e in events] == [1, 2]


async def test_a_fake_429_carries_google_quota_and_retry_details(fake: FakeUpstream) -> None:
    body = {"contents": [{"parts": [{"text": "[fake status=429]"}]}]}

    response = await fake_post(fake, "models/gemini-2.5-flash:generateContent", body)

    error = response.json()["error"]
    assert (response.status_code, error["code"], error["status"]) == (429, 429, "RESOURCE_EXHAUSTED")
    assert [d["@type"].rsplit(".", 1)[-1] for d in error["details"]] == ["QuotaFailure", "Help", "RetryInfo"]
    assert error["details"][-1]["retryDelay"] == "1s"
    assert "retry-after" not in response.headers


# --- the whole gateway, in process -------------------------------------------------------

GATEWAY_MODEL = "gemini-2.5-flash"


@pytest.fixture
def usage_stream(settings: SettingsWrapper) -> Iterator[str]:
    """A stream of this test's own, shared by the in-process consumer and the drain."""
    name = f"muxer:usage:test:gemini:{time.monotonic_ns()}"
    settings.MUXER_USAGE_STREAM = name
    yield name
    if settings.REDIS_URL:
        muxer_redis.sync_redis().delete(name)


@pytest.fixture
def one_attempt(settings: SettingsWrapper) -> None:
    """No retry: the error the client sees is the first one, and no backoff sleeps."""
    settings.MUXER_RETRY_ATTEMPTS_PER_MODEL = 1


def gateway_chat(content: str = HELLO, **extra: Any) -> dict[str, Any]:
    return {"model": GATEWAY_MODEL, "messages": [{"role": "user", "content": content}], **extra}


proxy = pytest.mark.django_db(transaction=True)


@proxy
async def test_the_gateway_answers_through_gemini_in_openai_shape(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    reply = await post(gateway_chat(), key=api_key)

    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == GATEWAY_MODEL
    assert body["choices"][0]["message"] == {"role": "assistant", "content": HELLO_REPLY, "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (4, 5)
    assert (reply.headers["x-muxer-provider"], reply.headers["x-muxer-model"]) == ("gemini", GATEWAY_MODEL)
    # 4 prompt tokens at $0.30/M + 5 completion tokens at $2.50/M.
    assert reply.headers["x-muxer-cost-usd"] == "0.0000137000"


@proxy
async def test_the_gateway_calls_gemini_with_the_platform_key(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    await post(gateway_chat(), key=api_key)

    last = (await upstream_stats(upstream))["last_request"]
    assert last["path"] == "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    assert last["credential_sha256"] == KEY_SHA256
    assert last["body"] == {"contents": [{"role": "user", "parts": [{"text": HELLO}]}]}


@proxy
async def test_the_gateway_records_geminis_usage_and_cost(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    reply = await post(gateway_chat(), key=api_key)

    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.provider, row.model, row.status, row.http_status) == ("gemini", GATEWAY_MODEL, UsageStatus.OK, 200)
    assert (row.input_tokens, row.output_tokens, row.cached_input_tokens, row.reasoning_tokens) == (4, 5, 0, 0)
    assert row.cost_usd == Decimal("0.0000137000")
    assert (row.usage_estimated, row.stream) == (False, False)


@proxy
async def test_the_gateway_bills_cached_and_thought_tokens_from_gemini(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    await post(gateway_chat("[fake gemini_thoughts=4 gemini_cached=3] Hello gateway"), key=api_key)

    [row] = await usage_rows()
    assert (row.input_tokens, row.output_tokens, row.cached_input_tokens, row.reasoning_tokens) == (14, 9, 3, 4)
    # 11 uncached x $0.30/M + 3 cached x $0.03/M + 9 output (thoughts included) x $2.50/M.
    assert row.cost_usd == Decimal("0.0000258900")


@proxy
async def test_the_gateway_streams_through_gemini_in_openai_shape(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    body = gateway_chat("Stream this please", stream=True, stream_options={"include_usage": True})

    reply = await post(body, key=api_key)

    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.headers["x-muxer-provider"] == "gemini"
    events = sse_events(reply.body)
    assert events[-1] == b"data: [DONE]"
    chunks = data_chunks(events)
    assert text_of(chunks) == "Fake reply to: Stream this please"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert (chunks[-1]["usage"]["prompt_tokens"], chunks[-1]["usage"]["completion_tokens"]) == (5, 6)
    assert {(c["object"], c["model"]) for c in chunks} == {("chat.completion.chunk", GATEWAY_MODEL)}
    assert len({c["id"] for c in chunks}) == 1
    # 5 x $0.30/M + 6 x $2.50/M.
    assert events[-2] == b": x-muxer-cost-usd=0.0000165000"
    [row] = await usage_rows()
    assert (row.status, row.stream, row.input_tokens, row.output_tokens) == (UsageStatus.OK, True, 5, 6)
    assert row.usage_estimated is False


@proxy
async def test_the_gateway_streams_a_gemini_tool_call(api_key: str, upstream: FakeUpstream, usage_stream: str) -> None:
    reply = await post(gateway_chat("Weather in Paris?", stream=True, tools=[WEATHER_TOOL]), key=api_key)

    chunks = data_chunks(sse_events(reply.body))
    [call] = chunks[1]["choices"][0]["delta"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert call["id"].startswith("call_")
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@proxy
async def test_a_blocked_prompt_through_the_gateway_is_a_200_content_filter(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    reply = await post(gateway_chat("[fake gemini_block=prompt] Hello"), key=api_key)

    assert reply.status == 200
    assert reply.json()["choices"][0]["finish_reason"] == "content_filter"
    [row] = await usage_rows()
    assert (row.status, row.input_tokens, row.output_tokens) == (UsageStatus.OK, 8, 0)


@proxy
async def test_a_gemini_429_through_the_gateway_is_a_503_with_retry_after(
    api_key: str, upstream: FakeUpstream, usage_stream: str, one_attempt: None
) -> None:
    reply = await post(gateway_chat("[fake status=429 retry_after=7] hi"), key=api_key)

    assert reply.status == 503
    assert reply.headers["retry-after"] == "7"
    assert reply.error["message"] == "gemini is rate limiting the gateway (HTTP 429)."
    [row] = await usage_rows()
    assert (row.status, row.http_status, row.provider) == (UsageStatus.ERROR, 503, "gemini")


@proxy
async def test_a_gemini_overload_through_the_gateway_is_a_502(
    api_key: str, upstream: FakeUpstream, usage_stream: str, one_attempt: None
) -> None:
    reply = await post(gateway_chat("[fake status=503] hi", stream=True), key=api_key)

    assert reply.status == 502
    assert reply.headers["content-type"] == "application/json"
    assert reply.error["message"] == "gemini failed with HTTP 503."


@proxy
async def test_a_gemini_overload_is_retried_until_it_answers(
    api_key: str, upstream: FakeUpstream, usage_stream: str, settings: SettingsWrapper
) -> None:
    settings.MUXER_RETRY_BASE_DELAY_SECONDS = 0.01

    reply = await post(gateway_chat("[fake status=503 times=1] Hello gateway"), key=api_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-attempts"] == "2"
    assert (await upstream_stats(upstream))["requests"] == 2


@proxy
async def test_a_gemini_400_through_the_gateway_passes_its_message_on(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    reply = await post(gateway_chat("[fake status=400] hi"), key=api_key)

    assert reply.status == 400
    assert reply.error == {
        "message": "gemini rejected the request: Request contains an invalid argument.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request_error",
    }


@proxy
async def test_an_invalid_gemini_key_through_the_gateway_is_a_502_that_hides_it(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    reply = await post(gateway_chat("[fake gemini_error=api_key_invalid] hi"), key=api_key)

    assert reply.status == 502
    assert reply.error["message"] == "gemini refused the gateway's credentials (HTTP 400)."
    assert b"API key not valid" not in reply.body
    assert (await upstream_stats(upstream))["requests"] == 1  # not retried


@proxy
async def test_a_gemini_mid_stream_failure_forwards_an_error_event(
    api_key: str, upstream: FakeUpstream, usage_stream: str
) -> None:
    reply = await post(gateway_chat("[fake fail_after_chunks=2] hi", stream=True), key=api_key)

    assert reply.status == 200
    events = sse_events(reply.body)
    assert b"data: [DONE]" not in events
    *content, failure = data_chunks(events)
    assert text_of(content) == "Fake reply "
    assert failure["error"]["code"] == "upstream_error"
    [row] = await usage_rows()
    assert (row.status, row.http_status, row.error_code, row.stream) == (UsageStatus.ERROR, 502, "upstream_error", True)
    # The last running total Gemini sent before failing: 2 words.
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (8, 2, False)
