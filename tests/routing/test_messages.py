"""``POST /v1/messages``: the Anthropic Messages API in front of every provider.

Golden translations first (an Anthropic request -> the exact OpenAI request;
OpenAI answers and chunks -> the exact Anthropic message and events), then the
endpoint in process through the real ASGI application against the fake
upstream, for an OpenAI-format model (``fake-small``) and a Claude model (which
goes back out through the Anthropic adapter).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import orjson
import pytest
from channels.testing import ApplicationCommunicator, HttpCommunicator
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts import keys
from accounts.models import Organization, User
from billing.models import UsageStatus
from muxer_project.asgi import application
from providers.adapters.anthropic import finish_reason
from providers.adapters.base import Usage
from routing.messages import (
    STOP_REASONS,
    MessageStreamEncoder,
    error_type,
    message_from_completion,
    parse_messages_request,
    translate_request,
)
from tests.conftest import FakeUpstream
from tests.routing.harness import (
    HELLO,
    HELLO_REPLY,
    TIMEOUT,
    Reply,
    assert_nothing_recorded,
    audit_count,
    upstream_stats,
    usage_rows,
)

PATH = "/v1/messages"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def message(content: Any = HELLO, *, model: str = "fake-small", max_tokens: int = 256, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}], **extra}


async def post(
    body: Any,
    *,
    key: str | None,
    method: str = "POST",
    bearer: bool = False,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
        (b"anthropic-version", b"2023-06-01"),
    ]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()) if bearer else (b"x-api-key", key.encode()))
    headers.extend(extra_headers or ())
    communicator = HttpCommunicator(application, method, PATH, body=raw, headers=headers)
    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(timeout=TIMEOUT)
    names = [name.decode() for name, _ in response["headers"]]
    assert len(names) == len(set(names)), f"duplicate response headers: {names}"
    return Reply(
        status=response["status"],
        headers={name.decode(): value.decode() for name, value in response["headers"]},
        body=response["body"],
    )


def events(body: bytes) -> list[dict[str, Any]]:
    """The named events of an Anthropic stream; the event name must match the data's type."""
    assert body.endswith(b"\n\n")
    parsed: list[dict[str, Any]] = []
    for frame in body[:-2].split(b"\n\n"):
        if frame.startswith(b": "):
            continue
        name, data = frame.split(b"\n")
        assert name.startswith(b"event: "), frame
        assert data.startswith(b"data: "), frame
        event: dict[str, Any] = orjson.loads(data[len(b"data: ") :])
        assert event["type"] == name[len(b"event: ") :].decode()
        parsed.append(event)
    return parsed


def streamed_text(stream: list[dict[str, Any]]) -> str:
    return "".join(e["delta"]["text"] for e in stream if e["type"] == "content_block_delta")


def assert_anthropic_error(reply: Reply, status: int, kind: str, message: str) -> None:
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": reply.headers["x-request-id"],
    }
    assert reply.headers["request-id"] == reply.headers["x-request-id"]


# --- golden: Anthropic request -> OpenAI request --------------------------------------

FULL_REQUEST: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 512,
    "system": [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer in French."},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {
                    "type": "document",
                    "title": "report.pdf",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two cities.", "signature": "c2ln"},
                {"type": "text", "text": "Let me look up the weather."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Lyon"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "content": [{"type": "text", "text": "Service down"}],
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
    "tools": [{**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"],
    "temperature": 0.3,
    "top_p": 0.9,
    "top_k": 40,
    "metadata": {"user_id": "user-42"},
    "stream": True,
}


def test_it_translates_a_whole_anthropic_request_into_openai_terms() -> None:
    assert translate_request(FULL_REQUEST) == {
        "model": "claude-haiku-4-5",
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "Be brief.\nAnswer in French."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {
                        "type": "file",
                        "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look up the weather.",
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "toolu_02",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "18 C"},
            {"role": "tool", "tool_call_id": "toolu_02", "content": "Error: Service down"},
            {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
        ],
        "tools": [WEATHER_FUNCTION],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stop": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "user": "user-42",
        "stream": True,
    }


def test_the_translation_passes_the_chat_validation_with_what_routing_needs() -> None:
    request = parse_messages_request(orjson.dumps(FULL_REQUEST))

    assert request.model == "claude-haiku-4-5"
    assert (request.stream, request.include_usage, request.max_output_tokens) == (True, False, 512)
    assert (request.has_images, request.has_tools, request.wants_json) == (True, True, False)


def test_a_plain_request_stays_plain() -> None:
    assert translate_request(message(system="Be brief.")) == {
        "model": "fake-small",
        "max_tokens": 256,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": HELLO}],
    }


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        pytest.param({"type": "auto"}, {"tool_choice": "auto"}, id="auto"),
        pytest.param({"type": "any"}, {"tool_choice": "required"}, id="any"),
        pytest.param({"type": "none"}, {"tool_choice": "none"}, id="none"),
        pytest.param(
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            id="tool",
        ),
        pytest.param(
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
            id="no-parallel",
        ),
        pytest.param({"type": "auto", "disable_parallel_tool_use": False}, {"tool_choice": "auto"}, id="parallel"),
    ],
)
def test_it_maps_tool_choice(tool_choice: dict[str, Any], expected: dict[str, Any]) -> None:
    translated = translate_request(message(tools=[WEATHER_TOOL], tool_choice=tool_choice))

    assert {k: v for k, v in translated.items() if k in ("tool_choice", "parallel_tool_calls")} == expected


def test_an_empty_final_assistant_turn_is_left_out() -> None:
    body = {
        "model": "fake-small",
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
    }

    assert translate_request(body)["messages"] == [{"role": "user", "content": "hi"}]


def test_a_final_assistant_turn_is_passed_on_as_a_prefill() -> None:
    body = {
        "model": "fake-small",
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure:"}],
    }

    assert translate_request(body)["messages"][-1] == {"role": "assistant", "content": "Sure:"}


def test_thinking_disabled_is_accepted_and_changes_nothing() -> None:
    assert translate_request(message(thinking={"type": "disabled"})) == translate_request(message())


# --- golden: OpenAI answer -> Anthropic message ----------------------------------------


def test_it_answers_a_completion_as_an_anthropic_message() -> None:
    completion = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
    }
    usage = Usage(input_tokens=30, output_tokens=12, cached_input_tokens=10)

    assert message_from_completion(completion, usage, model_name="gpt-4o-mini") == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o-mini-2024-07-18",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 10,
        },
    }


def test_an_anthropic_upstream_id_is_kept() -> None:
    completion = {
        "id": "chatcmpl-msg_01XYZ",
        "model": "claude-haiku-4-5",
        "choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}],
    }

    assert message_from_completion(completion, Usage(), model_name="claude-haiku-4-5")["id"] == "msg_01XYZ"


def test_a_refusal_is_answered_as_text_with_the_refusal_stop_reason() -> None:
    completion = {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [
            {"message": {"content": None, "refusal": "I can't help with that."}, "finish_reason": "content_filter"}
        ],
    }

    answer = message_from_completion(completion, Usage(), model_name="m")

    assert answer["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert answer["stop_reason"] == "refusal"


def test_an_empty_answer_has_no_content_blocks() -> None:
    completion = {"id": "chatcmpl-1", "model": "m", "choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}

    assert message_from_completion(completion, Usage(), model_name="m")["content"] == []


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_it_maps_finish_reasons_to_stop_reasons(finish: str | None, stop: str) -> None:
    completion = {"id": "chatcmpl-1", "model": "m", "choices": [{"message": {"content": "x"}, "finish_reason": finish}]}

    assert message_from_completion(completion, Usage(), model_name="m")["stop_reason"] == stop


def test_the_stop_reason_map_is_the_inverse_of_the_anthropic_adapters() -> None:
    for finish, stop in STOP_REASONS.items():
        if finish != "function_call":
            assert finish_reason(stop) == finish


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
    ],
)
def test_it_maps_statuses_to_anthropic_error_types(status: int, kind: str) -> None:
    assert error_type(status) == kind


# --- golden: OpenAI chunks -> Anthropic events --------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def test_it_streams_text_and_tool_calls_as_content_blocks_in_order() -> None:
    encoder = MessageStreamEncoder(model_name="gpt-4o-mini", input_tokens=25)
    chunks = [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "Check"}),
        chunk({"content": "ing."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
    ]
    body = b"".join(encoder.feed(c) for c in chunks)
    body += encoder.finish(Usage(input_tokens=30, output_tokens=12, cached_input_tokens=10)) + encoder.stop()

    assert events(body) == [
        {
            "type": "message_start",
            "message": {
                "id": "msg_abc",
                "type": "message",
                "role": "assistant",
                "model": "gpt-4o-mini",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 25,
                    "output_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Check"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ing."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        },
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {
                "input_tokens": 20,
                "output_tokens": 12,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 10,
            },
        },
        {"type": "message_stop"},
    ]


def test_a_stream_without_content_still_starts_and_ends_the_message() -> None:
    encoder = MessageStreamEncoder(model_name="m", input_tokens=3)
    body = encoder.feed(chunk({"role": "assistant", "content": ""})) + encoder.feed(chunk({}, "length"))
    body += encoder.finish(Usage(input_tokens=3, output_tokens=0)) + encoder.stop()

    assert [(e["type"], e.get("delta")) for e in events(body)] == [
        ("message_start", None),
        ("message_delta", {"stop_reason": "max_tokens", "stop_sequence": None}),
        ("message_stop", None),
    ]


def test_the_error_event_has_anthropics_shape() -> None:
    assert MessageStreamEncoder.error("Upstream went away.") == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"Upstream went away."}}\n\n'
    )


# --- validation: Anthropic-shaped 400s before anything is routed or recorded ------------------

TOOL_TURNS: list[dict[str, Any]] = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
]
BAD_BODIES = [
    pytest.param(b"{not json", "The request body is not valid JSON", id="malformed-json"),
    pytest.param(
        {"max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}, "model: Field required.", id="no-model"
    ),
    pytest.param(
        {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]},
        "max_tokens: Field required.",
        id="no-max-tokens",
    ),
    pytest.param(
        message(max_tokens=0), "max_tokens: Input should be an integer greater than or equal to 1.", id="max-tokens-0"
    ),
    pytest.param({"model": "fake-small", "max_tokens": 9}, "messages: Field required.", id="no-messages"),
    pytest.param(
        {"model": "fake-small", "max_tokens": 9, "messages": []},
        "messages: Input should be a non-empty list.",
        id="empty-messages",
    ),
    pytest.param(
        {"model": "fake-small", "max_tokens": 9, "messages": [{"role": "system", "content": "hi"}]},
        "messages.0.role: Input should be 'user' or 'assistant'.",
        id="system-role",
    ),
    pytest.param(message(7), "messages.0.content: Input should be a valid string or list.", id="content-number"),
    pytest.param(
        message(""),
        "messages.0: all messages must have non-empty content except for the optional final assistant message.",
        id="empty-content",
    ),
    pytest.param(
        message([{"type": "text", "text": ""}]),
        "messages.0.content.0: text content blocks must be non-empty.",
        id="empty-text",
    ),
    pytest.param(
        message([{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "Qk0="}}]),
        "messages.0.content.0.source.media_type: Input should be one of "
        "['image/gif', 'image/jpeg', 'image/png', 'image/webp'].",
        id="image-bmp",
    ),
    pytest.param(
        message([{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]),
        "messages.0.content.0.source: images are taken as 'base64' or 'url' sources.",
        id="image-file-id",
    ),
    pytest.param(
        message([{"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}]),
        "messages.0.content.0.source: documents are taken as base64 PDFs (media_type 'application/pdf') only.",
        id="document-url",
    ),
    pytest.param(
        message([{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]),
        "messages.0.content.0: 'tool_use' blocks are not supported in user content here.",
        id="tool-use-from-user",
    ),
    pytest.param(
        {
            "model": "fake-small",
            "max_tokens": 9,
            "messages": [
                *TOOL_TURNS,
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "here"},
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
                    ],
                },
            ],
        },
        "messages.2.content.1: `tool_result` blocks must come first in a user message.",
        id="tool-result-after-text",
    ),
    pytest.param(
        {"model": "fake-small", "max_tokens": 9, "messages": [*TOOL_TURNS, {"role": "user", "content": "thanks"}]},
        "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1. Each "
        "`tool_use` block must have a corresponding `tool_result` block in the next message.",
        id="unanswered-tool-use",
    ),
    pytest.param(
        message([{"type": "tool_result", "tool_use_id": "toolu_9", "content": "ok"}]),
        "messages.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9. Each `tool_result` block "
        "must have a corresponding `tool_use` block in the previous message.",
        id="orphan-tool-result",
    ),
    pytest.param(
        {
            "model": "fake-small",
            "max_tokens": 9,
            "messages": [
                *TOOL_TURNS,
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [
                                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
                            ],
                        }
                    ],
                },
            ],
        },
        "messages.2.content.0.content.0: only text blocks are supported inside tool_result here, not 'image'.",
        id="image-in-tool-result",
    ),
    pytest.param(
        message(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        "tools.0: server tools ('web_search_20250305') are not supported here; define a client tool.",
        id="server-tool",
    ),
    pytest.param(message(tools=[{"name": "f"}]), "tools.0.input_schema: Field required.", id="tool-without-schema"),
    pytest.param(
        message(tool_choice={"type": "any"}),
        "tool_choice: tool_choice may only be specified while providing tools.",
        id="tool-choice-without-tools",
    ),
    pytest.param(
        message(tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "nope"}),
        "tool_choice.name: Tool 'nope' not found in 'tools'.",
        id="tool-choice-unknown-tool",
    ),
    pytest.param(
        message(stop_sequences=["a", "b", "c", "d", "e"]),
        "stop_sequences: at most 4 stop sequences are supported here.",
        id="five-stop-sequences",
    ),
    pytest.param(
        message(temperature=1.5), "temperature: Input should be a number between 0 and 1.", id="temperature-1.5"
    ),
    pytest.param(message(top_p="high"), "top_p: Input should be a number between 0 and 1.", id="top-p-str"),
    pytest.param(
        message(top_k=-1), "top_k: Input should be an integer greater than or equal to 0.", id="top-k-negative"
    ),
    pytest.param(
        message(metadata={"session": "x"}),
        "metadata: Input should be an object with only 'user_id'.",
        id="metadata-key",
    ),
    pytest.param(message(stream="yes"), "stream: Input should be a valid boolean.", id="stream-str"),
    pytest.param(
        message(thinking={"type": "enabled", "budget_tokens": 2048}),
        "thinking: extended thinking is not supported by ModelMuxer's Messages API; "
        "leave 'thinking' out or set it to {'type': 'disabled'}.",
        id="thinking",
    ),
    pytest.param(message(output_config={}), "output_config: Extra inputs are not permitted.", id="unknown-field"),
]


pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(("body", "expected"), BAD_BODIES)
async def test_it_rejects_an_invalid_request_in_anthropics_error_shape(
    body: Any, expected: str, api_key: str, upstream: FakeUpstream
) -> None:
    audit_before = await audit_count()

    reply = await post(body, key=api_key)

    assert reply.status == 400
    assert reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert reply.json()["error"]["message"].startswith(expected)
    assert (await upstream_stats(upstream))["requests"] == 0
    await assert_nothing_recorded(audit_before)


async def test_a_limit_the_model_sets_is_an_anthropic_400(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(max_tokens=20_000), key=api_key)

    assert_anthropic_error(
        reply,
        400,
        "invalid_request_error",
        "'max_tokens' is 20000, but the model 'fake-small' writes at most 16384 tokens.",
    )


async def test_a_body_over_the_limit_is_request_too_large(api_key: str, settings: SettingsWrapper) -> None:
    settings.MUXER_MAX_BODY_BYTES = 64

    reply = await post(message("x" * 100), key=api_key)

    assert_anthropic_error(
        reply, 413, "request_too_large", "The request body is larger than the gateway's limit of 64 bytes."
    )


async def test_get_is_refused_with_an_allow_header(api_key: str) -> None:
    reply = await post(b"", key=api_key, method="GET")

    assert_anthropic_error(reply, 405, "invalid_request_error", "GET is not allowed here; use POST.")
    assert reply.headers["allow"] == "POST"


# --- authentication and routing refusals -------------------------------------------------


async def test_it_takes_the_key_as_bearer_too(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(), key=api_key, bearer=True)

    assert reply.status == 200
    assert reply.json()["content"] == [{"type": "text", "text": HELLO_REPLY}]


async def test_it_needs_no_anthropic_version_header(api_key: str, upstream: FakeUpstream) -> None:
    raw = orjson.dumps(message())
    headers = [(b"content-type", b"application/json"), (b"x-api-key", api_key.encode())]
    communicator = HttpCommunicator(application, "POST", PATH, body=raw, headers=headers)

    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(timeout=TIMEOUT)

    assert response["status"] == 200


async def test_without_a_key_it_is_an_authentication_error(catalog: None, upstream: FakeUpstream) -> None:
    reply = await post(message(), key=None)

    assert_anthropic_error(
        reply,
        401,
        "authentication_error",
        "You didn't provide an API key. Send it in the x-api-key header (or as 'Authorization: Bearer mm_live_...').",
    )
    assert (await upstream_stats(upstream))["requests"] == 0


async def test_an_unknown_key_is_an_authentication_error_that_does_not_echo_it(
    catalog: None, upstream: FakeUpstream
) -> None:
    audit_before = await audit_count()
    unknown = keys.generate_key()

    reply = await post(message(), key=unknown)

    assert_anthropic_error(reply, 401, "authentication_error", "Incorrect API key provided.")
    assert unknown.encode() not in reply.body
    await assert_nothing_recorded(audit_before)


async def test_an_unknown_model_is_not_found(api_key: str, upstream: FakeUpstream) -> None:
    audit_before = await audit_count()

    reply = await post(message(model="claude-nonexistent"), key=api_key)

    assert_anthropic_error(reply, 404, "not_found_error", "The model 'claude-nonexistent' does not exist.")
    await assert_nothing_recorded(audit_before)


async def test_a_model_the_key_may_not_use_is_a_permission_error(limited_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(model="fake-small"), key=limited_key)

    assert_anthropic_error(reply, 403, "permission_error", "This API key may not use the model 'fake-small'.")


# --- answers --------------------------------------------------------------------------------


async def test_it_answers_with_an_anthropic_message(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(), key=api_key)

    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body.pop("id").startswith("msg_")
    assert body == {
        "type": "message",
        "role": "assistant",
        "model": "fake-small",
        "content": [{"type": "text", "text": HELLO_REPLY}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 4,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


async def test_it_sends_the_muxer_and_request_id_headers(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(), key=api_key)

    assert reply.headers["x-muxer-model"] == "fake-small"
    assert reply.headers["x-muxer-provider"] == "fake"
    assert reply.headers["x-muxer-route-reason"] == "explicit"
    assert reply.headers["x-muxer-attempts"] == "1"
    assert float(reply.headers["x-muxer-overhead-ms"]) >= 0
    assert reply.headers["x-request-id"].startswith("req_")
    assert reply.headers["request-id"] == reply.headers["x-request-id"]


async def test_it_sends_the_provider_the_translated_openai_request(api_key: str, upstream: FakeUpstream) -> None:
    await post(
        message(system="Be brief.", temperature=0.2, stop_sequences=["END"], metadata={"user_id": "u1"}), key=api_key
    )

    last = (await upstream_stats(upstream))["last_request"]
    assert (last["method"], last["path"]) == ("POST", "/v1/chat/completions")
    assert last["body"] == {
        "model": "fake-small",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": HELLO}],
        "max_tokens": 256,
        "stop": ["END"],
        "temperature": 0.2,
        "user": "u1",
    }


async def test_it_records_usage_like_chat_with_the_catalog_cost(
    api_key: str, upstream: FakeUpstream, organization: Organization, owner: User
) -> None:
    reply = await post(message(), key=api_key)

    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.organization_id, row.user_id) == (organization.pk, owner.pk)
    assert (row.model, row.provider) == ("fake-small", "fake")
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (4, 5, False)
    assert (row.status, row.http_status, row.error_code, row.stream) == (UsageStatus.OK, 200, "", False)
    # 4 x $0.01/M + 5 x $0.02/M
    assert row.cost_usd == Decimal(reply.headers["x-muxer-cost-usd"]) == Decimal("0.00000014")


async def test_a_claude_model_goes_out_through_the_anthropic_adapter(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(model="claude-haiku-4-5"), key=api_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-provider"] == "anthropic"
    body = reply.json()
    assert body["id"].startswith("msg_")
    assert (body["model"], body["content"], body["stop_reason"]) == (
        "claude-haiku-4-5",
        [{"type": "text", "text": HELLO_REPLY}],
        "end_turn",
    )
    assert body["usage"] == {
        "input_tokens": 4,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    [row] = await usage_rows()
    # 4 x $1.00/M + 5 x $5.00/M
    assert (row.provider, row.cost_usd) == ("anthropic", Decimal("0.000029"))


async def test_a_request_arrives_at_anthropic_as_close_to_the_original_as_the_round_trip_allows(
    api_key: str, upstream: FakeUpstream
) -> None:
    body = {**FULL_REQUEST, "stream": False}

    reply = await post(body, key=api_key)

    assert reply.status == 200, reply.body
    last = (await upstream_stats(upstream))["last_request"]
    assert last["path"] == "/anthropic/v1/messages"
    # What the round trip loses: the system blocks' split and cache_control, the thinking block,
    # the document title, is_error (now in the text), tool_result blocks (now strings) and top_k.
    assert last["body"] == {
        "model": "claude-haiku-4-5",
        "max_tokens": 512,
        "system": "Be brief.\nAnswer in French.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look up the weather."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Lyon"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 C"},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": "Error: Service down"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
    }
    # tool_choice "any" reached the fake, which called the tool.
    assert reply.json()["stop_reason"] == "tool_use"


async def test_a_length_cut_is_max_tokens(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(max_tokens=2), key=api_key)

    body = reply.json()
    assert (body["content"], body["stop_reason"]) == ([{"type": "text", "text": "Fake reply"}], "max_tokens")


async def test_a_stop_sequence_hit_is_reported_as_end_turn(api_key: str, upstream: FakeUpstream) -> None:
    # Anthropic said "stop_sequence", but the OpenAI answer in between only says "stop".
    reply = await post(message(model="claude-haiku-4-5", stop_sequences=["gateway"]), key=api_key)

    body = reply.json()
    assert (body["content"], body["stop_reason"], body["stop_sequence"]) == (
        [{"type": "text", "text": "Fake reply to: Hello "}],
        "end_turn",
        None,
    )


async def test_auto_is_routed_by_the_organizations_strategy(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(model="auto"), key=api_key)

    assert reply.status == 200
    # A greeting is easy: the cheapest economy model of the whole (fake-upstream-served) catalog.
    assert reply.headers["x-muxer-model"] == "fake-small"
    assert reply.headers["x-muxer-route-reason"].startswith("hybrid: score ")
    [row] = await usage_rows()
    assert row.route_strategy == "hybrid"


async def test_a_cascade_serves_only_its_first_step_here(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message(model="muxer/cascade"), key=api_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-model"] == "fake-small"
    assert reply.headers["x-muxer-route-reason"].endswith("first step only on /v1/messages")


# --- tool use round trip -------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fake-small", "claude-haiku-4-5"])
async def test_a_tool_use_round_trip(model: str, api_key: str, upstream: FakeUpstream) -> None:
    question = {"role": "user", "content": "What's the weather in Paris?"}
    first = await post(
        {"model": model, "max_tokens": 256, "tools": [WEATHER_TOOL], "messages": [question]}, key=api_key
    )

    call = first.json()
    assert call["stop_reason"] == "tool_use"
    [tool_use] = call["content"]
    assert (tool_use["type"], tool_use["name"], tool_use["input"]) == ("tool_use", "get_weather", {"city": "Paris"})

    result = {"type": "tool_result", "tool_use_id": tool_use["id"], "content": "18 C and sunny"}
    conversation = [question, {"role": "assistant", "content": call["content"]}, {"role": "user", "content": [result]}]
    second = await post(
        {"model": model, "max_tokens": 256, "tools": [WEATHER_TOOL], "messages": conversation}, key=api_key
    )

    answer = second.json()
    assert (answer["content"], answer["stop_reason"]) == (
        [{"type": "text", "text": "Fake reply to: What's the weather in Paris?"}],
        "end_turn",
    )
    if model == "fake-small":
        sent = (await upstream_stats(upstream))["last_request"]["body"]["messages"]
        assert sent[1:] == [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": tool_use["id"],
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": tool_use["id"], "content": "18 C and sunny"},
        ]


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fake-small", "claude-haiku-4-5"])
async def test_a_stream_sends_the_documented_events_in_order(model: str, api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message("Stream this please", model=model, stream=True), key=api_key)

    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.headers["cache-control"] == "no-cache"
    assert reply.headers["x-muxer-model"] == model
    stream = events(reply.body)
    assert [e["type"] for e in stream] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = stream[0]["message"]
    assert start["id"].startswith("msg_")
    assert (start["model"], start["content"], start["stop_reason"]) == (model, [], None)
    # An estimate: 18 characters -> 5 tokens, +4 for the message. message_delta has the provider's count.
    assert start["usage"]["input_tokens"] == 9
    assert stream[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert {e["index"] for e in stream[1:-2]} == {0}
    assert streamed_text(stream) == "Fake reply to: Stream this please"
    assert stream[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 5,
            "output_tokens": 6,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


async def test_a_stream_records_usage_and_announces_its_cost(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message("Stream this please", stream=True), key=api_key)

    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.status, row.http_status, row.stream) == (UsageStatus.OK, 200, True)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (5, 6, False)
    assert row.cost_usd == Decimal("0.00000017")
    frames = reply.body[:-2].split(b"\n\n")
    assert frames[-2:] == [b": x-muxer-cost-usd=0.0000001700", b'event: message_stop\ndata: {"type":"message_stop"}']


@pytest.mark.parametrize("model", ["fake-small", "claude-haiku-4-5"])
async def test_a_streamed_tool_call_is_a_tool_use_block(model: str, api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(message("weather in Paris?", model=model, tools=[WEATHER_TOOL], stream=True), key=api_key)

    stream = events(reply.body)
    [block] = [e["content_block"] for e in stream if e["type"] == "content_block_start"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {})
    fragments = [e["delta"] for e in stream if e["type"] == "content_block_delta"]
    assert {f["type"] for f in fragments} == {"input_json_delta"}
    assert orjson.loads("".join(f["partial_json"] for f in fragments)) == {"city": "Paris"}
    assert stream[-2]["delta"]["stop_reason"] == "tool_use"


# --- upstream failures ------------------------------------------------------------------------


@pytest.fixture
def quick_retries(settings: SettingsWrapper) -> None:
    settings.MUXER_RETRY_BASE_DELAY_SECONDS = 0.01
    settings.MUXER_RETRY_MAX_DELAY_SECONDS = 0.05


async def test_an_upstream_5xx_is_an_api_error_and_an_error_row(
    api_key: str, upstream: FakeUpstream, quick_retries: None
) -> None:
    reply = await post(message("[fake status=500] hi"), key=api_key)

    assert_anthropic_error(reply, 502, "api_error", "fake failed with HTTP 500.")
    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.status, row.http_status, row.error_code, row.stream) == (
        UsageStatus.ERROR,
        502,
        "upstream_error",
        False,
    )
    assert row.cost_usd == Decimal(0)


async def test_an_upstream_429_is_overloaded_with_its_retry_after(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_RETRY_BUDGET_SECONDS = 0.1

    reply = await post(message("[fake status=429 retry_after=7] hi"), key=api_key)

    assert_anthropic_error(reply, 503, "overloaded_error", "fake is rate limiting the gateway (HTTP 429).")
    assert reply.headers["retry-after"] == "7"


async def test_an_upstream_400_is_an_invalid_request_error_with_the_providers_message(
    api_key: str, upstream: FakeUpstream
) -> None:
    reply = await post(message("[fake status=400] hi"), key=api_key)

    assert_anthropic_error(reply, 400, "invalid_request_error", "fake rejected the request: Injected fake bad request.")
    [row] = await usage_rows()
    assert (row.status, row.http_status) == (UsageStatus.ERROR, 400)


async def test_an_upstream_failure_before_a_stream_begins_is_a_json_error(
    api_key: str, upstream: FakeUpstream, quick_retries: None
) -> None:
    reply = await post(message("[fake status=503] hi", stream=True), key=api_key)

    assert_anthropic_error(reply, 502, "api_error", "fake failed with HTTP 503.")
    [row] = await usage_rows()
    assert (row.status, row.stream) == (UsageStatus.ERROR, True)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_failure_is_served_by_the_fallback(
    stream: bool, api_key: str, upstream: FakeUpstream, quick_retries: None
) -> None:
    fallback = [(b"x-muxer-fallbacks", b"fake-large")]

    reply = await post(
        message("[fake status=503 model=fake-small] hi", stream=stream), key=api_key, extra_headers=fallback
    )

    assert reply.status == 200, reply.body
    assert reply.headers["x-muxer-model"] == "fake-large"
    assert reply.headers["x-muxer-route-reason"] == "explicit;fallback-from=fake-small"
    assert reply.headers["x-muxer-attempts"] == "3"
    text = streamed_text(events(reply.body)) if stream else reply.json()["content"][0]["text"]
    assert text == "Fake reply to: hi"
    [row] = await usage_rows()
    assert (row.model, row.status, row.stream) == ("fake-large", UsageStatus.OK, stream)


async def test_an_overloaded_claude_model_falls_back_to_another_provider(
    api_key: str, upstream: FakeUpstream, quick_retries: None
) -> None:
    fallback = [(b"x-muxer-fallbacks", b"gpt-4o-mini")]

    reply = await post(
        message("[fake status=529 model=claude-haiku-4-5] hi", model="claude-haiku-4-5"),
        key=api_key,
        extra_headers=fallback,
    )

    assert reply.status == 200, reply.body
    assert (reply.headers["x-muxer-model"], reply.headers["x-muxer-provider"]) == ("gpt-4o-mini", "openai")
    assert reply.json()["model"] == "gpt-4o-mini"
    assert reply.json()["content"] == [{"type": "text", "text": "Fake reply to: hi"}]


@pytest.mark.parametrize(
    ("model", "message_text", "code"),
    [
        ("fake-small", "The server had an error while processing your request. Sorry about that!", "server_error"),
        ("claude-haiku-4-5", "anthropic failed mid-stream: Overloaded", "overloaded_error"),
    ],
)
async def test_a_mid_stream_failure_ends_with_an_error_event_and_an_error_row(
    model: str, message_text: str, code: str, api_key: str, upstream: FakeUpstream
) -> None:
    reply = await post(message("[fake fail_after_chunks=3] hi", model=model, stream=True), key=api_key)

    assert reply.status == 200  # the stream had begun
    stream = events(reply.body)
    assert stream[0]["type"] == "message_start"
    assert "message_stop" not in [e["type"] for e in stream]
    assert stream[-1] == {"type": "error", "error": {"type": "api_error", "message": message_text}}
    assert b"x-muxer-cost-usd" not in reply.body
    [row] = await usage_rows()
    assert row.request_id == reply.headers["x-request-id"]
    assert (row.status, row.http_status, row.error_code, row.stream) == (UsageStatus.ERROR, 502, code, True)


async def test_a_client_that_leaves_mid_stream_is_recorded_as_disconnected(
    api_key: str, upstream: FakeUpstream
) -> None:
    raw = orjson.dumps(message("[fake words=400 chunk_delay_ms=20] go", stream=True))
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": PATH,
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"x-api-key", api_key.encode())],
        },
    )
    await communicator.send_input({"type": "http.request", "body": raw, "more_body": False})
    start = await communicator.receive_output(timeout=TIMEOUT)
    assert start["status"] == 200
    for _ in range(3):
        await communicator.receive_output(timeout=TIMEOUT)

    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=TIMEOUT)

    [row] = await usage_rows()
    assert (row.status, row.http_status, row.error_code, row.stream) == (
        UsageStatus.CLIENT_DISCONNECTED,
        499,
        "client_disconnected",
        True,
    )
    assert 0 < row.output_tokens < 400
    assert row.usage_estimated is True
    await asyncio.sleep(0.1)
    assert (await upstream_stats(upstream))["streams_completed"] == 0


async def test_an_unexpected_failure_is_an_api_error(
    api_key: str, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("routing.messages.message_from_completion", explode)

    reply = await post(message(), key=api_key)

    assert_anthropic_error(reply, 500, "api_error", "The gateway failed unexpectedly.")
    assert b"boom" not in reply.body
