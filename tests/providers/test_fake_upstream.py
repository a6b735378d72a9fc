"""Black-box tests for providers.fake_upstream, served by uvicorn in a subprocess."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer sk-test"}
SYSTEM = "You are terse."
QUESTION = "What is the capital of France? Answer in one word."
# "Fake reply to: " + QUESTION[:40]
EXPECTED_REPLY = "Fake reply to: What is the capital of France? Answer in"
EXPECTED_PROMPT_TOKENS = 16  # ceil((14 + 50) / 4)
EXPECTED_COMPLETION_TOKENS = 11
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
EXPECTED_USAGE = {
    "prompt_tokens": EXPECTED_PROMPT_TOKENS,
    "completion_tokens": EXPECTED_COMPLETION_TOKENS,
    "total_tokens": EXPECTED_PROMPT_TOKENS + EXPECTED_COMPLETION_TOKENS,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


@dataclass(frozen=True)
class Upstream:
    base_url: str
    port: int
    announcement: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "providers.fake_upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    try:
        while True:
            if process.poll() is not None:
                _, stderr = process.communicate()
                pytest.fail(f"fake upstream exited early:\n{stderr}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("fake upstream did not become healthy within 20s")
            time.sleep(0.05)
        assert process.stdout is not None
        # Printed before serving, so it is already in the pipe once /healthz answers.
        announcement = process.stdout.readline()
        yield Upstream(base_url, port, announcement)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def http(upstream: Upstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(upstream: Upstream) -> openai.OpenAI:
    # No retries: the tests inject 429/5xx and must see them once.
    return openai.OpenAI(base_url=f"{upstream.base_url}/v1", api_key="sk-test", max_retries=0, timeout=10)


def _messages(question: str = QUESTION) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
    ]


def _chat(http: httpx.Client, payload: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post("/v1/chat/completions", json=payload, headers={**AUTH, **headers})


def _sse_events(text: str) -> list[str]:
    """Split a raw SSE body into event payloads, asserting the data-only framing."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    for event in events:
        assert event.startswith("data: "), event
        assert "\n" not in event, event
    return [event[len("data: ") :] for event in events]


def _reset(http: httpx.Client) -> None:
    assert http.post("/_fake/reset").status_code == 200


def _stats(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/_fake/stats")
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


def test_announces_bound_address(upstream: Upstream) -> None:
    assert upstream.announcement == (f"fake upstream listening on http://127.0.0.1:{upstream.port}\n")


def test_healthz_models_and_unknown_path(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}

    models = http.get("/v1/models")
    assert models.status_code == 200
    assert models.json() == {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake"}
            for name in ("fake-small", "fake-medium", "fake-large")
        ],
    }

    missing = http.get("/v1/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "Invalid URL (GET /v1/nope)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    wrong_method = http.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_non_streaming_shape_and_usage(http: httpx.Client) -> None:
    response = _chat(http, {"model": "fake-small", "messages": _messages()})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["openai-processing-ms"].isdigit()
    body = response.json()
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    ]
    assert body["id"].startswith("chatcmpl-")
    assert len(body["id"]) > len("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert abs(body["created"] - time.time()) < 60
    assert body["model"] == "fake-small"
    assert body["system_fingerprint"].startswith("fp_")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": EXPECTED_REPLY,
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == EXPECTED_USAGE


def test_non_streaming_via_sdk_with_content_parts(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="fake-large",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/a.png"},
                    },
                    {"type": "text", "text": "this picture"},
                ],
            }
        ],
    )
    assert completion.model == "fake-large"
    assert completion.choices[0].message.content == "Fake reply to: Describe this picture"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    # Text parts joined with one space: 21 chars -> ceil(21 / 4) = 6.
    assert completion.usage.prompt_tokens == 6
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == 12
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


def test_stream_via_sdk_without_usage(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.create(model="fake-small", messages=_messages(), stream=True) as stream:
        chunks = list(stream)

    # role chunk + one per word + finish chunk; no usage chunk.
    assert len(chunks) == 1 + EXPECTED_COMPLETION_TOKENS + 1
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert {chunk.created for chunk in chunks} == {chunks[0].created}
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.model == "fake-small" for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant"
    assert first.delta.content == ""
    assert first.finish_reason is None
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == EXPECTED_REPLY
    assert chunks[1].choices[0].delta.content == "Fake "
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])


def test_stream_via_sdk_with_include_usage(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.create(
        model="fake-small",
        messages=_messages(),
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)

    assert len(chunks) == 1 + EXPECTED_COMPLETION_TOKENS + 1 + 1
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.model_dump(exclude_none=True) == EXPECTED_USAGE
    assert usage_chunk.id == chunks[0].id
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1])
    assert text == EXPECTED_REPLY


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_raw_sse_framing(http: httpx.Client, include_usage: bool) -> None:
    payload: dict[str, Any] = {
        "model": "fake-small",
        "messages": _messages(),
        "stream": True,
    }
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    with http.stream("POST", "/v1/chat/completions", json=payload, headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-request-id"].startswith("req_")
        raw = response.read().decode()

    assert raw.endswith("\n\ndata: [DONE]\n\n")
    events = _sse_events(raw)
    assert events[-1] == "[DONE]"
    assert raw.count("[DONE]") == 1
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "refusal": None,
    }
    assert chunks[0]["choices"][0]["logprobs"] is None
    if include_usage:
        assert len(chunks) == EXPECTED_COMPLETION_TOKENS + 3
        # The key must be present and null on every choice chunk, not merely absent.
        assert all("usage" in chunk and chunk["usage"] is None for chunk in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == EXPECTED_USAGE
        finish = chunks[-2]
    else:
        assert len(chunks) == EXPECTED_COMPLETION_TOKENS + 2
        assert all("usage" not in chunk for chunk in chunks)
        finish = chunks[-1]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert len({chunk["created"] for chunk in chunks}) == 1


def test_max_tokens_truncates_with_length(sdk: openai.OpenAI, http: httpx.Client) -> None:
    completion = sdk.chat.completions.create(model="fake-small", messages=_messages(), max_tokens=3)
    assert completion.choices[0].message.content == "Fake reply to:"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3

    with sdk.chat.completions.create(
        model="fake-small",
        messages=_messages(),
        max_completion_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Fake reply"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2

    # A limit equal to the reply length is not a truncation.
    exact = _chat(
        http,
        {
            "model": "m",
            "messages": _messages(),
            "max_tokens": EXPECTED_COMPLETION_TOKENS,
        },
    ).json()
    assert exact["choices"][0]["finish_reason"] == "stop"
    assert exact["choices"][0]["message"]["content"] == EXPECTED_REPLY


def test_tool_call(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="fake-small",
        messages=[{"role": "user", "content": "Weather in Paris today?"}],
        tools=[WEATHER_TOOL],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Paris"}'
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 6  # ceil(23 / 4)
    assert completion.usage.completion_tokens == 7  # ceil((11 + 17) / 4)

    # Without the trigger word the same request gets a text answer.
    plain = sdk.chat.completions.create(
        model="fake-small",
        messages=[{"role": "user", "content": "Hello"}],
        tools=[WEATHER_TOOL],
    )
    assert plain.choices[0].finish_reason == "stop"
    assert plain.choices[0].message.content == "Fake reply to: Hello"
    assert plain.choices[0].message.tool_calls is None


def test_tool_call_stream(http: httpx.Client, sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.create(
        model="fake-small",
        messages=[{"role": "user", "content": "What's the weather?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    ) as stream:
        chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    first_call = chunks[1].choices[0].delta.tool_calls
    assert first_call is not None
    assert first_call[0].index == 0
    assert first_call[0].id is not None
    assert first_call[0].id.startswith("call_")
    assert first_call[0].type == "function"
    assert first_call[0].function is not None
    assert first_call[0].function.name == "get_weather"
    assert first_call[0].function.arguments == ""
    arguments = ""
    for chunk in chunks[2:-1]:
        calls = chunk.choices[0].delta.tool_calls
        assert calls is not None
        assert calls[0].index == 0
        assert calls[0].id is None
        assert calls[0].function is not None
        assert calls[0].function.name is None
        arguments += calls[0].function.arguments or ""
    assert len(chunks[2:-1]) > 1
    assert arguments == '{"city": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_401_without_valid_auth(http: httpx.Client) -> None:
    payload = {"model": "fake-small", "messages": _messages()}
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        response = http.post("/v1/chat/completions", json=payload, headers=headers)
        assert response.status_code == 401, headers
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] is None
        assert error["code"] == "invalid_api_key"
        assert error["message"]


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (
            b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}',
            "messages.[0].role",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            "max_tokens",
        ),
        (
            (
                b'{"model": "m", "messages": [{"role": "user", "content": "x"}],'
                b' "stream_options": {"include_usage": true}}'
            ),
            "stream_options",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "[fake nope=1]"}]}',
            "messages",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "[fake status=abc]"}]}',
            "messages",
        ),
    ],
)
def test_400_on_bad_body(http: httpx.Client, content: bytes, param: str | None) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=content,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] is None
    assert error["message"]


def test_status_directive_503(sdk: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        sdk.chat.completions.create(
            model="fake-small",
            messages=[{"role": "user", "content": "hello [fake status=503]"}],
        )
    assert raised.value.status_code == 503

    response = _chat(
        http,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "[fake status=503] hi"}],
        },
    )
    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "message": "The engine is currently overloaded, please try again later.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "retry-after" not in response.headers
    # Errors are reported before streaming starts, as plain JSON.
    streamed = _chat(
        http,
        {
            "model": "m",
            "stream": True,
            "messages": [{"role": "user", "content": "[fake status=500]"}],
        },
    )
    assert streamed.status_code == 500
    assert streamed.headers["content-type"] == "application/json"
    assert streamed.json()["error"]["code"] == "server_error"


def test_status_429_with_retry_after(http: httpx.Client, sdk: openai.OpenAI) -> None:
    via_directive = _chat(
        http,
        {
            "model": "fake-small",
            "messages": [{"role": "user", "content": "hi [fake status=429 retry_after=2]"}],
        },
    )
    via_header = _chat(
        http,
        {"model": "fake-small", "messages": _messages()},
        **{"x-fake-status": "429", "x-fake-retry-after": "2"},
    )
    for response in (via_directive, via_header):
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"
        error = response.json()["error"]
        assert error["type"] == "requests"
        assert error["code"] == "rate_limit_exceeded"
        assert error["param"] is None
        assert "fake-small" in error["message"]

    with pytest.raises(openai.RateLimitError) as raised:
        sdk.chat.completions.create(
            model="fake-small",
            messages=[{"role": "user", "content": "[fake status=429 retry_after=1]"}],
        )
    assert raised.value.response.headers["retry-after"] == "1"


def test_directive_overrides_header_and_is_stripped(http: httpx.Client) -> None:
    response = _chat(
        http,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "[fake status=200] Hi there"}],
        },
        **{"x-fake-status": "500"},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Fake reply to: Hi there"


def test_words_directive(http: httpx.Client) -> None:
    body = _chat(
        http,
        {"model": "m", "messages": [{"role": "user", "content": "go [fake words=5]"}]},
    ).json()
    assert body["choices"][0]["message"]["content"] == "lorem ipsum dolor sit amet"
    assert body["usage"]["completion_tokens"] == 5


def test_refuse_directive_answers_a_refusal_for_the_named_model_only(http: httpx.Client) -> None:
    content = "Tell me [fake model=fake-small refuse=1]"

    def reply(model: str) -> str:
        body = _chat(http, {"model": model, "messages": [{"role": "user", "content": content}]}).json()
        return str(body["choices"][0]["message"]["content"])

    assert reply("fake-small") == "I'm sorry, but I can't help with that."
    assert reply("fake-large") == "Fake reply to: Tell me"


def test_json_mode_replies_with_a_json_object(http: httpx.Client) -> None:
    body = _chat(
        http,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "Give me JSON"}],
            "response_format": {"type": "json_object"},
        },
    ).json()

    assert json.loads(body["choices"][0]["message"]["content"]) == {"reply": "Fake reply to: Give me JSON"}


def test_latency(http: httpx.Client) -> None:
    started = time.monotonic()
    response = _chat(
        http,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "[fake latency_ms=300]"}],
        },
    )
    # The event loop's timer may wake a hair early (seen: 0.29997 s); allow rounding slack.
    assert time.monotonic() - started >= 0.295
    assert response.status_code == 200
    assert int(response.headers["openai-processing-ms"]) >= 295

    started = time.monotonic()
    _chat(http, {"model": "m", "messages": _messages()}, **{"x-fake-latency-ms": "200"})
    assert time.monotonic() - started >= 0.2


def test_fail_after_chunks_mid_stream_error(http: httpx.Client, sdk: openai.OpenAI) -> None:
    _reset(http)
    payload = {
        "model": "fake-small",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a story [fake fail_after_chunks=3]"}],
    }
    with http.stream("POST", "/v1/chat/completions", json=payload, headers=AUTH) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    events = _sse_events(raw)
    assert len(events) == 4
    assert "[DONE]" not in raw
    assert [orjson.loads(e)["choices"][0]["delta"] for e in events[:3]] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Fake "},
        {"content": "reply "},
    ]
    assert orjson.loads(events[3]) == {
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    }

    received = 0
    with (
        pytest.raises(openai.APIError) as raised,
        sdk.chat.completions.create(
            model="fake-small",
            stream=True,
            messages=[{"role": "user", "content": "Tell me [fake fail_after_chunks=2]"}],
        ) as stream,
    ):
        for _chunk in stream:
            received += 1
    assert received == 2
    assert "Sorry about that" in raised.value.message

    stats = _stats(http)
    assert stats["streams_started"] == 2
    assert stats["streams_failed"] == 2
    assert stats["streams_completed"] == 0


def test_stats_count_aborted_stream(http: httpx.Client) -> None:
    _reset(http)
    payload = {
        "model": "fake-small",
        "stream": True,
        "messages": [{"role": "user", "content": "Long [fake chunk_delay_ms=20 words=200]"}],
    }
    data_lines = 0
    with http.stream("POST", "/v1/chat/completions", json=payload, headers=AUTH) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data_lines += 1
                if data_lines == 2:
                    break
    # Leaving the context with an unread body closes the connection mid-stream.
    assert data_lines == 2

    deadline = time.monotonic() + 5
    stats = _stats(http)
    while stats["streams_aborted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = _stats(http)
    assert stats["requests"] == 1
    assert stats["streams_started"] == 1
    assert stats["streams_aborted"] == 1
    assert stats["streams_completed"] == 0
    assert stats["completed"] == 0


def test_stats_last_request_and_reset(http: httpx.Client) -> None:
    _reset(http)
    payload = {"model": "fake-small", "messages": _messages(), "temperature": 0.5}
    assert _chat(http, payload, **{"x-trace-id": "abc123"}).status_code == 200
    assert http.post("/v1/chat/completions", json=payload).status_code == 401

    stats = _stats(http)
    assert stats["requests"] == 2
    assert stats["completed"] == 1
    assert stats["errors"] == 1
    last = stats["last_request"]
    assert last["method"] == "POST"
    assert last["path"] == "/v1/chat/completions"
    assert last["body"] == payload
    assert "x-trace-id" not in last["headers"]  # the later 401 request is the last one

    _chat(http, payload, **{"x-trace-id": "abc123"})
    last = _stats(http)["last_request"]
    assert last["headers"]["x-trace-id"] == "abc123"
    assert last["headers"]["content-type"] == "application/json"
    assert "authorization" not in last["headers"]

    _reset(http)
    assert _stats(http) == {
        "requests": 0,
        "completed": 0,
        "errors": 0,
        "streams_started": 0,
        "streams_completed": 0,
        "streams_aborted": 0,
        "streams_failed": 0,
        "last_request": None,
    }
