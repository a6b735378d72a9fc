"""The Mistral, Groq and Together AI adapters and their dialects on the fake upstream.

Golden fixtures first (OpenAI request -> the exact provider request; documented
provider answers, stream chunks and error bodies -> exactly what the client
gets), then the adapters against the fake upstream, the fake's own rules,
and the whole gateway in process.
"""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest

from billing.models import UsageStatus
from providers.adapters import adapter_for
from providers.adapters.base import ProviderError, StreamProgress, Usage
from providers.adapters.openai_compat import (
    ADAPTERS,
    CompatAdapter,
    GroqAdapter,
    MistralAdapter,
    StreamState,
    TogetherAdapter,
    mistral_tool_call_id,
)
from providers.catalog import CatalogModel
from providers.fake_wire.openai_compat import GROQ_SEED, MISTRAL_CONTEXT_TOKENS, TOGETHER_SEED
from tests.conftest import FakeUpstream
from tests.routing.harness import HELLO, HELLO_REPLY, data_chunks, post, sse_events, upstream_stats, usage_rows


def catalog_model(provider: str, name: str, base_url: str) -> CatalogModel:
    return CatalogModel(
        name=name,
        kind="chat",
        provider=provider,
        wire_format="openai",
        base_url=base_url,
        credential=f"test-{provider}-key",
        input_price_per_mtok_usd=Decimal("0.10"),
        output_price_per_mtok_usd=Decimal("0.30"),
        cached_input_price_per_mtok_usd=None,
        context_window=131_072,
        max_output_tokens=131_072,
        supports_streaming=True,
        supports_tools=True,
        supports_vision=True,
        supports_json_mode=True,
        created=0,
    )


MISTRAL = catalog_model("mistral", "mistral-small-2603", "https://api.mistral.ai/v1")
GROQ = catalog_model("groq", "llama-3.1-8b-instant", "https://api.groq.com/openai/v1")
TOGETHER = catalog_model("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "https://api.together.xyz/v1")
PATHS = {"mistral": "/mistral/v1", "groq": "/groq/openai/v1", "together": "/together/v1"}
WEATHER_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": WEATHER_SCHEMA},
}
# An OpenAI-minted id, which Mistral refuses, and what the adapter sends instead (pinned:
# a conversation sent again next turn must map to the same id).
OPENAI_CALL_ID = "call_Hx2kQ9abcDEF0123456789"
MISTRAL_CALL_ID = "zOVjxAAuc"
USAGE_9 = {
    "prompt_tokens": 4,
    "completion_tokens": 5,
    "total_tokens": 9,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def chat(content: str = HELLO, **extra: Any) -> dict[str, Any]:
    return {"model": "client-model", "messages": [{"role": "user", "content": content}], **extra}


def payload(model: CatalogModel, request: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    adapter = ADAPTERS[model.provider]
    adapter.check(model, request)
    result: dict[str, Any] = orjson.loads(adapter.body(model, request, stream=stream))
    return result


def refusal(model: CatalogModel, request: dict[str, Any]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        ADAPTERS[model.provider].check(model, request)
    assert caught.value.status == 400
    assert caught.value.retryable is False
    assert caught.value.type == "invalid_request_error"
    assert caught.value.code == "unsupported_parameter"
    return caught.value


def adapt(
    model: CatalogModel, chunks: list[dict[str, Any]], request: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], StreamProgress]:
    adapter = ADAPTERS[model.provider]
    progress = StreamProgress()
    state = StreamState(ids=adapter.response_ids(request or chat()))
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        out += adapter.adapt_chunk(model, chunk, progress, state)
    return out, progress


def openai_chunk(choices: list[dict[str, Any]], model: str = MISTRAL.name) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": choices,
    }


def delta_choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


# --- registry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "adapter_type"), [(MISTRAL, MistralAdapter), (GROQ, GroqAdapter), (TOGETHER, TogetherAdapter)]
)
def test_each_provider_gets_its_own_dialect(model: CatalogModel, adapter_type: type[CompatAdapter]) -> None:
    assert type(adapter_for(model)) is adapter_type


@pytest.mark.parametrize("model", [MISTRAL, GROQ, TOGETHER])
def test_it_posts_to_the_chat_completions_url_with_a_bearer(model: CatalogModel) -> None:
    adapter = ADAPTERS[model.provider]
    assert adapter.url(model) == f"{model.base_url}/chat/completions"
    assert adapter.headers(model) == {
        "authorization": f"Bearer test-{model.provider}-key",
        "content-type": "application/json",
    }


# --- Mistral: OpenAI request -> Mistral request --------------------------------------


def test_mistral_gets_max_tokens_random_seed_and_none_of_openais_extras() -> None:
    request = chat(
        max_completion_tokens=50,
        max_tokens=80,
        seed=7,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        presence_penalty=0.5,
        frequency_penalty=0.1,
        n=2,
        user="user-1",
        logprobs=False,
        store=True,
        metadata={"k": "v"},
        service_tier="default",
        reasoning_effort="low",
        safety_identifier="s",
        prompt_cache_key="p",
        response_format={"type": "json_object"},
    )

    assert payload(MISTRAL, request) == {
        "model": "mistral-small-2603",
        "messages": [{"role": "user", "content": "Hello gateway"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "n": 2,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
        "response_format": {"type": "json_object"},
        "max_tokens": 50,
        "random_seed": 7,
    }


def test_mistral_streams_without_stream_options() -> None:
    body = payload(MISTRAL, chat(stream=True, stream_options={"include_usage": True}), stream=True)

    assert body == {
        "model": "mistral-small-2603",
        "messages": [{"role": "user", "content": "Hello gateway"}],
        "stream": True,
    }


def test_mistral_gets_a_tool_conversation_with_nine_character_ids() -> None:
    request = {
        "model": "client-model",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in Paris?", "name": "alice"},
            {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": OPENAI_CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": OPENAI_CALL_ID, "content": "18C"},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": [{"type": "text", "text": "12C"}]},
        ],
        "tools": [{**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "strict": True}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }

    assert payload(MISTRAL, request) == {
        "model": "mistral-small-2603",
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": MISTRAL_CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "content": "18C", "tool_call_id": MISTRAL_CALL_ID},
            {"role": "tool", "content": "12C", "tool_call_id": "abcDEF123"},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parameters": WEATHER_SCHEMA,
                    "strict": True,
                },
            }
        ],
    }


@pytest.mark.parametrize("client_id", ["call_1", "toolu_01A", "x" * 40, "abc-DEF-1", "abcdEFGH12"])
def test_mistral_tool_call_ids_are_nine_alphanumerics_and_stable(client_id: str) -> None:
    mapped = mistral_tool_call_id(client_id)

    assert len(mapped) == 9
    assert mapped.isalnum()
    assert mapped.isascii()
    assert mistral_tool_call_id(client_id) == mapped
    assert mistral_tool_call_id(mapped) == mapped


def test_mistral_gets_image_parts_with_the_url_and_detail() -> None:
    request = chat()
    request["messages"][0]["content"] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
    ]

    assert payload(MISTRAL, request)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        }
    ]


def test_mistral_gets_a_json_schema_response_format_unchanged() -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_SCHEMA, "strict": True}}

    assert payload(MISTRAL, chat(response_format=response_format))["response_format"] == response_format


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        pytest.param(
            chat(functions=[{"name": "f", "parameters": {}}]),
            "mistral does not support the deprecated functions API (use tools); remove 'functions' "
            "or choose another model.",
            id="functions",
        ),
        pytest.param(
            chat(logprobs=True, top_logprobs=2),
            "mistral does not support log probabilities; remove 'logprobs' or choose another model.",
            id="logprobs",
        ),
        pytest.param(
            chat(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}),
            "mistral does not support audio output; remove 'audio' or choose another model.",
            id="audio",
        ),
        pytest.param(
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
                ],
            },
            "mistral does not support file content parts; remove 'messages' or choose another model.",
            id="file-part",
        ),
    ],
)
def test_mistral_refuses_what_it_cannot_honour(request_body: dict[str, Any], message: str) -> None:
    assert refusal(MISTRAL, request_body).message == message


# --- Groq: OpenAI request -> Groq request -------------------------------------------


def test_groq_gets_openai_fields_but_not_those_it_refuses() -> None:
    request = chat(
        max_completion_tokens=50,
        seed=7,
        n=1,
        user="user-1",
        store=True,
        metadata={"k": "v"},
        service_tier="flex",
        logprobs=False,
        verbosity="low",
        prompt_cache_key="p",
        reasoning_effort="low",
    )

    assert payload(GROQ, request) == {
        "model": "llama-3.1-8b-instant",
        "messages": [{"role": "user", "content": "Hello gateway"}],
        "max_completion_tokens": 50,
        "seed": 7,
        "reasoning_effort": "low",
        "user": "user-1",
        "service_tier": "flex",
    }


def test_groq_is_asked_for_usage_in_a_stream() -> None:
    body = payload(GROQ, chat(stream=True), stream=True)

    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_groq_gets_messages_without_names_and_openai_only_fields() -> None:
    request = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "Be brief.", "name": "ops"},
            {"role": "user", "content": "Hi", "name": "alice"},
            {"role": "assistant", "content": "Hello", "refusal": None, "name": "bot"},
        ],
    }

    assert payload(GROQ, request)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_groq_does_not_forward_an_openai_only_service_tier() -> None:
    assert "service_tier" not in payload(GROQ, chat(service_tier="priority"))


def test_groq_refuses_more_than_one_choice_before_calling() -> None:
    error = refusal(GROQ, chat(n=3))

    assert error.message == "groq does not support more than one choice (n=3); remove 'n' or choose another model."


def test_groq_refuses_logit_bias() -> None:
    assert refusal(GROQ, chat(logit_bias={"50256": -100})).message == (
        "groq does not support logit_bias; remove 'logit_bias' or choose another model."
    )


# --- Together: OpenAI request -> Together request ------------------------------------


def test_together_gets_max_tokens_and_drops_what_it_does_not_document() -> None:
    request = chat(
        max_completion_tokens=64,
        seed=3,
        stop="END",
        user="user-1",
        parallel_tool_calls=False,
        stream_options={"include_usage": True},
        store=True,
        logprobs=False,
    )

    assert payload(TOGETHER, request) == {
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "messages": [{"role": "user", "content": "Hello gateway"}],
        "stop": "END",
        "seed": 3,
        "max_tokens": 64,
    }


def test_together_gets_a_json_schema_at_the_top_level_of_response_format() -> None:
    request = chat(response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_SCHEMA}})

    assert payload(TOGETHER, request)["response_format"] == {"type": "json_schema", "schema": WEATHER_SCHEMA}


def test_together_gets_json_object_mode_and_no_text_format() -> None:
    assert payload(TOGETHER, chat(response_format={"type": "json_object"}))["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in payload(TOGETHER, chat(response_format={"type": "text"}))


def test_together_streams_without_stream_options_since_usage_comes_anyway() -> None:
    body = payload(TOGETHER, chat(stream=True, stream_options={"include_usage": True}), stream=True)

    assert body == {
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "messages": [{"role": "user", "content": "Hello gateway"}],
        "stream": True,
    }


def test_together_gets_tools_and_a_tool_conversation_unchanged() -> None:
    conversation = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": OPENAI_CALL_ID, "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": OPENAI_CALL_ID, "content": "18C"},
    ]
    body = payload(TOGETHER, {"model": "m", "messages": conversation, "tools": [WEATHER_TOOL], "tool_choice": "auto"})

    assert body["messages"] == conversation
    assert body["tools"] == [WEATHER_TOOL]
    assert body["tool_choice"] == "auto"


def test_together_refuses_log_probabilities_in_its_own_shape() -> None:
    assert refusal(TOGETHER, chat(logprobs=True)).message == (
        "together does not support log probabilities; remove 'logprobs' or choose another model."
    )


# --- provider answers -> OpenAI answers --------------------------------------------


def test_a_documented_mistral_answer_becomes_an_openai_completion() -> None:
    answer = {
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
        "object": "chat.completion",
        "model": "mistral-small-latest",
        "created": 1702256327,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": MISTRAL_CALL_ID,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                            "index": 0,
                        },
                        {"id": "D681PevKs", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
                    ],
                    "prefix": False,
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 16, "completion_tokens": 34, "total_tokens": 50},
    }
    # The request carried the OpenAI id that maps to MISTRAL_CALL_ID: it comes back as the client's.
    request = {
        "model": "m",
        "messages": [
            {"role": "assistant", "tool_calls": [{"id": OPENAI_CALL_ID, "function": {"name": "g", "arguments": ""}}]}
        ],
    }

    body, usage = ADAPTERS["mistral"].answer(MISTRAL, answer, request)

    assert body == {
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
        "object": "chat.completion",
        "created": 1702256327,
        "model": "mistral-small-2603",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": OPENAI_CALL_ID,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "D681PevKs",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
                        },
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 16,
            "completion_tokens": 34,
            "total_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
    assert usage == Usage(input_tokens=16, output_tokens=34)


def mistral_text_answer(content: Any, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


@pytest.mark.parametrize(
    ("mistral", "openai_reason"), [("stop", "stop"), ("length", "length"), ("model_length", "length")]
)
def test_mistral_stop_reasons_map_to_openais(mistral: str, openai_reason: str) -> None:
    body, _ = ADAPTERS["mistral"].answer(MISTRAL, mistral_text_answer("Hi", mistral), chat())

    assert body["choices"][0]["finish_reason"] == openai_reason


def test_mistral_reasoning_content_chunks_leave_only_the_text() -> None:
    content = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "The user greets me."}]},
        {"type": "text", "text": "Hello"},
        {"type": "text", "text": " there"},
    ]

    body, _ = ADAPTERS["mistral"].answer(MISTRAL, mistral_text_answer(content), chat())

    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there", "refusal": None}


def test_a_mistral_error_finish_is_a_retryable_failure() -> None:
    with pytest.raises(ProviderError) as caught:
        ADAPTERS["mistral"].answer(MISTRAL, mistral_text_answer("", "error"), chat())

    assert (caught.value.status, caught.value.retryable) == (502, True)
    assert caught.value.message == "mistral stopped generating with an error (finish_reason 'error')."


def test_a_groq_answer_loses_x_groq_timings_and_reasoning() -> None:
    answer = {
        "id": "chatcmpl-f51b2cd2-bef7-417e-964e-a08f0b513c22",
        "object": "chat.completion",
        "created": 1730241104,
        "model": "llama-3.1-8b-instant",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "reasoning": "Greet back.", "executed_tools": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "queue_time": 0.037493756,
            "prompt_tokens": 18,
            "prompt_time": 0.000680594,
            "completion_tokens": 556,
            "completion_time": 0.463333333,
            "total_tokens": 574,
            "total_time": 0.464013927,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
        "system_fingerprint": "fp_179b0f92c9",
        "x_groq": {"id": "req_01jbd6g2qdfw2adyrt2az8hz4w"},
        "service_tier": "on_demand",
    }

    body, usage = ADAPTERS["groq"].answer(GROQ, answer, chat())

    assert body == {
        "id": "chatcmpl-f51b2cd2-bef7-417e-964e-a08f0b513c22",
        "object": "chat.completion",
        "created": 1730241104,
        "model": "llama-3.1-8b-instant",
        "system_fingerprint": "fp_179b0f92c9",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 18,
            "completion_tokens": 556,
            "total_tokens": 574,
            "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
    assert usage == Usage(input_tokens=18, output_tokens=556, cached_input_tokens=8)


def test_a_together_answer_says_stop_for_eos_and_loses_seed_and_prompt() -> None:
    answer = {
        "id": "8f1b2c3d4e5f6a7b-SJC",
        "object": "chat.completion",
        "created": 1717000000,
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "prompt": [],
        "choices": [
            {
                "finish_reason": "eos",
                "seed": 2908213920981234,
                "logprobs": None,
                "index": 0,
                "text": "ignored",
                "message": {"role": "assistant", "content": "Hello!", "tool_calls": [], "reasoning": None},
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 27, "total_tokens": 39},
    }

    body, usage = ADAPTERS["together"].answer(TOGETHER, answer, chat())

    assert body == {
        "id": "8f1b2c3d4e5f6a7b-SJC",
        "object": "chat.completion",
        "created": 1717000000,
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 27,
            "total_tokens": 39,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
    assert usage == Usage(input_tokens=12, output_tokens=27)


def test_an_answer_without_usage_is_estimated_later() -> None:
    answer = mistral_text_answer("Hi")
    del answer["usage"]

    body, usage = ADAPTERS["together"].answer(TOGETHER, answer, chat())

    assert "usage" not in body
    assert usage.estimated is True


# --- provider stream chunks -> OpenAI chunks ---------------------------------------


def test_mistrals_last_content_chunk_splits_into_text_and_an_empty_finish_delta() -> None:
    chunks = [
        openai_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        openai_chunk([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]),
        {
            **openai_chunk([{"index": 0, "delta": {"content": "lo"}, "finish_reason": "length"}]),
            "usage": {"prompt_tokens": 34, "total_tokens": 134, "completion_tokens": 100},
        },
    ]

    out, progress = adapt(MISTRAL, chunks)

    expected_head = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1700000000}
    assert out == [
        {
            **expected_head,
            "model": "mistral-small-2603",
            "choices": [delta_choice({"role": "assistant", "content": ""})],
        },
        {**expected_head, "model": "mistral-small-2603", "choices": [delta_choice({"content": "Hel"})]},
        {**expected_head, "model": "mistral-small-2603", "choices": [delta_choice({"content": "lo"})]},
        {**expected_head, "model": "mistral-small-2603", "choices": [delta_choice({}, "length")]},
    ]
    assert progress.usage == Usage(input_tokens=34, output_tokens=100)


def test_a_whole_mistral_tool_call_delta_becomes_an_indexed_openai_fragment() -> None:
    chunks = [
        openai_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        {
            **openai_chunk(
                [
                    {
                        "index": 0,
                        "delta": {
                            "content": "",
                            "tool_calls": [
                                {"id": "D681PevKs", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                            ],
                        },
                        "finish_reason": "tool_calls",
                    }
                ]
            ),
            "usage": {"prompt_tokens": 60, "total_tokens": 80, "completion_tokens": 20},
        },
    ]

    out, progress = adapt(MISTRAL, chunks)

    assert [chunk["choices"] for chunk in out[1:]] == [
        [
            delta_choice(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "D681PevKs",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ]
                }
            )
        ],
        [delta_choice({}, "tool_calls")],
    ]
    assert progress.usage == Usage(input_tokens=60, output_tokens=20)


def test_a_streamed_mistral_tool_call_id_that_maps_a_clients_id_comes_back_as_the_clients() -> None:
    request = {
        "model": "m",
        "messages": [{"role": "tool", "tool_call_id": OPENAI_CALL_ID, "content": "18C"}],
    }
    chunk = openai_chunk([{"index": 0, "delta": {"tool_calls": [{"id": MISTRAL_CALL_ID, "function": {"name": "f"}}]}}])

    out, _ = adapt(MISTRAL, [chunk], request)

    assert out[0]["choices"][0]["delta"]["tool_calls"][0]["id"] == OPENAI_CALL_ID


def test_a_mistral_error_finish_ends_the_stream_with_an_error_item() -> None:
    chunks = [
        openai_chunk([{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]),
        openai_chunk([{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]),
    ]

    out, _ = adapt(MISTRAL, chunks)

    assert out[-1] == {
        "error": {
            "message": "mistral stopped generating with an error (finish_reason 'error').",
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }


def test_mistral_thinking_deltas_are_left_out_of_the_stream() -> None:
    chunks = [
        openai_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        openai_chunk(
            [{"index": 0, "delta": {"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "Hm"}]}]}}]
        ),
        openai_chunk([{"index": 0, "delta": {"content": [{"type": "text", "text": "Yes"}]}}]),
    ]

    out, _ = adapt(MISTRAL, chunks)

    assert [chunk["choices"][0]["delta"] for chunk in out] == [{"role": "assistant", "content": ""}, {"content": "Yes"}]


GROQ_FINAL = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1730241104,
    "model": "llama-3.1-8b-instant",
    "system_fingerprint": "fp_179b0f92c9",
    "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
    "x_groq": {
        "id": "req_01jbd6g2qdfw2adyrt2az8hz4w",
        "usage": {
            "queue_time": 0.02,
            "prompt_tokens": 18,
            "prompt_time": 0.0007,
            "completion_tokens": 42,
            "completion_time": 0.03,
            "total_tokens": 60,
            "total_time": 0.031,
        },
        "seed": 1407423371,
    },
}


def test_groqs_final_chunk_fills_usage_from_x_groq_and_loses_x_groq() -> None:
    out, progress = adapt(GROQ, [GROQ_FINAL])

    assert out == [
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1730241104,
            "model": "llama-3.1-8b-instant",
            "system_fingerprint": "fp_179b0f92c9",
            "choices": [delta_choice({}, "stop")],
        }
    ]
    assert progress.usage == Usage(input_tokens=18, output_tokens=42)


def test_groqs_top_level_usage_chunk_also_fills_usage() -> None:
    usage_chunk = {
        **GROQ_FINAL,
        "choices": [],
        "usage": {"prompt_tokens": 18, "completion_tokens": 43, "total_tokens": 61},
    }
    del usage_chunk["x_groq"]

    out, progress = adapt(GROQ, [usage_chunk])

    assert out == []
    assert progress.usage == Usage(input_tokens=18, output_tokens=43)


def test_a_groq_x_groq_error_ends_the_stream_with_an_error_item() -> None:
    failure = {**GROQ_FINAL, "choices": [], "x_groq": {"id": "req_1", "error": "Internal Server Error"}}

    out, _ = adapt(GROQ, [failure])

    assert out == [
        {
            "error": {
                "message": "groq failed mid-stream: Internal Server Error",
                "type": "upstream_error",
                "code": "upstream_error",
                "param": None,
            }
        }
    ]


def together_chunk(text: str, finish: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "id": "8f1b2c3d4e5f6a7b-SJC",
        "object": "chat.completion.chunk",
        "created": 1717000000,
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "seed": 123 if finish else None,
                "delta": {"token_id": 128009, "role": "assistant", "content": text, "tool_calls": None},
            }
        ],
        "usage": usage,
    }


def test_together_chunks_become_pure_openai_chunks_with_eos_as_stop() -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 27, "total_tokens": 39}
    chunks = [together_chunk("A"), together_chunk("B"), together_chunk("C", "eos", usage)]

    out, progress = adapt(TOGETHER, chunks)

    head = {
        "id": "8f1b2c3d4e5f6a7b-SJC",
        "object": "chat.completion.chunk",
        "created": 1717000000,
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    }
    assert out == [
        {**head, "choices": [delta_choice({"role": "assistant", "content": "A"})]},
        {**head, "choices": [delta_choice({"content": "B"})]},
        {**head, "choices": [delta_choice({"content": "C"})]},
        {**head, "choices": [delta_choice({}, "stop")]},
    ]
    assert progress.usage == Usage(input_tokens=12, output_tokens=27)


def test_togethers_null_usage_on_later_chunks_keeps_what_was_seen() -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 27, "total_tokens": 39}

    _, progress = adapt(TOGETHER, [together_chunk("A", "eos", usage), together_chunk("")])

    assert progress.usage == Usage(input_tokens=12, output_tokens=27)


# --- provider errors -> ProviderError ------------------------------------------------

HEADERS = httpx.Headers({"retry-after": "7"})


def error_for(model: CatalogModel, status: int, body: Any, headers: httpx.Headers = HEADERS) -> ProviderError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return ADAPTERS[model.provider].error(status, raw, headers, model.provider)


def test_a_mistral_422_detail_becomes_a_400_that_names_the_field() -> None:
    detail = {
        "detail": [
            {
                "type": "extra_forbidden",
                "loc": ["body", "stream_options"],
                "msg": "Extra inputs are not permitted",
                "input": {"include_usage": True},
            }
        ]
    }

    error = error_for(MISTRAL, 422, detail)

    assert (error.status, error.retryable, error.upstream_status) == (400, False, 422)
    assert error.message == "mistral rejected the request: stream_options: Extra inputs are not permitted"
    assert error.code == "invalid_request_error"


def test_mistrals_detail_wrapped_in_an_error_object_reads_the_same() -> None:
    body = {
        "object": "error",
        "message": {
            "detail": [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", "messages", 0, "user", "name"],
                    "msg": "Extra inputs are not permitted",
                }
            ]
        },
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }

    error = error_for(MISTRAL, 422, body)

    assert error.message == "mistral rejected the request: messages.0.user.name: Extra inputs are not permitted"


def test_a_mistral_tool_id_refusal_keeps_its_message_and_names_its_type() -> None:
    body = {
        "object": "error",
        "message": "Tool call id was call_abc but must be a-z, A-Z, 0-9, with a length of 9.",
        "type": "invalid_function_call",
        "param": None,
        "code": "3280",
    }

    error = error_for(MISTRAL, 400, body)

    assert error.status == 400
    assert error.message == (
        "mistral rejected the request: Tool call id was call_abc but must be a-z, A-Z, 0-9, with a length of 9."
    )
    assert error.code == "invalid_function_call"


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (MISTRAL, {"message": "Unauthorized", "request_id": "abc"}),
        (
            GROQ,
            {
                "error": {
                    "message": "Invalid API Key gsk_secret",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        ),
        (TOGETHER, {"error": {"message": "Invalid API key provided: tgp_secret", "type": "invalid_request_error"}}),
    ],
)
def test_a_401_is_a_gateway_credential_failure_that_never_echoes_the_provider(model: CatalogModel, body: Any) -> None:
    error = error_for(model, 401, body)

    assert (error.status, error.retryable) == (502, False)
    assert error.message == f"{model.provider} refused the gateway's credentials (HTTP 401)."


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (
            MISTRAL,
            {
                "object": "error",
                "message": "Rate limit exceeded",
                "type": "rate_limited",
                "param": None,
                "code": "1300",
            },
        ),
        (GROQ, {"error": {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}}),
        (TOGETHER, {"error": {"message": "You have reached the rate limit", "type": "model_rate_limit"}}),
    ],
)
def test_a_429_is_retryable_with_the_providers_retry_after(model: CatalogModel, body: Any) -> None:
    error = error_for(model, 429, body)

    assert (error.status, error.retryable, error.retry_after) == (503, True, "7")


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("model", [MISTRAL, GROQ, TOGETHER])
def test_a_5xx_is_retryable(model: CatalogModel, status: int) -> None:
    error = error_for(model, status, b"<html>oops</html>")

    assert (error.status, error.retryable, error.upstream_status) == (502, True, status)


def test_groqs_498_flex_capacity_is_a_retryable_503() -> None:
    body = {"error": {"message": "Flex tier capacity exceeded", "type": "tokens", "code": "capacity_exceeded"}}

    error = error_for(GROQ, 498, body)

    assert (error.status, error.retryable, error.code) == (503, True, "capacity_exceeded")


def test_togethers_context_403_is_the_clients_400() -> None:
    body = {
        "error": {
            "message": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8193.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }

    error = error_for(TOGETHER, 403, body)

    assert (error.status, error.retryable, error.code) == (400, False, "context_length_exceeded")
    assert error.message == (
        "together rejected the request: Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8193."
    )


def test_a_together_403_that_is_not_about_the_request_stays_a_credential_failure() -> None:
    error = error_for(TOGETHER, 403, {"error": {"message": "Forbidden", "type": "permission_error"}})

    assert (error.status, error.retryable) == (502, False)


def test_togethers_402_spend_limit_is_not_retryable() -> None:
    error = error_for(TOGETHER, 402, {"error": {"message": "Credit limit exceeded", "type": "credit_limit"}})

    assert (error.status, error.retryable) == (502, False)


# --- the adapters against the fake upstream -----------------------------------------


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.reset()
    return fake_upstream


def on_fake(model: CatalogModel, fake: FakeUpstream) -> CatalogModel:
    return dataclasses.replace(model, base_url=f"{fake.url}{PATHS[model.provider]}")


async def stats(fake: FakeUpstream) -> dict[str, Any]:
    return await asyncio.to_thread(fake.stats)


async def collect(model: CatalogModel, request: dict[str, Any]) -> tuple[list[dict[str, Any]], StreamProgress]:
    stream = ADAPTERS[model.provider].stream(model, request)
    await stream.open()
    try:
        chunks = [chunk async for chunk in stream.chunks()]
    finally:
        await stream.close()
    return chunks, stream.progress


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def finish_of(chunks: list[dict[str, Any]]) -> str | None:
    return [c for c in chunks if "choices" in c][-1]["choices"][0]["finish_reason"]


@pytest.mark.parametrize("model", [MISTRAL, GROQ, TOGETHER])
async def test_it_answers_from_the_fake_in_openai_shape(model: CatalogModel, fake: FakeUpstream) -> None:
    result = await ADAPTERS[model.provider].chat(on_fake(model, fake), chat(max_completion_tokens=20))

    assert result.body["model"] == model.name
    assert result.body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": HELLO_REPLY, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert result.body["usage"] == USAGE_9
    assert result.usage == Usage(input_tokens=4, output_tokens=5)


async def test_the_fake_mistral_receives_the_translated_request(fake: FakeUpstream) -> None:
    await ADAPTERS["mistral"].chat(on_fake(MISTRAL, fake), chat(max_completion_tokens=20, seed=1, user="u"))

    last = (await stats(fake))["last_request"]
    assert (last["method"], last["path"]) == ("POST", "/mistral/v1/chat/completions")
    assert last["headers"]["content-type"] == "application/json"
    assert last["body"] == {
        "model": "mistral-small-2603",
        "messages": [{"role": "user", "content": "Hello gateway"}],
        "max_tokens": 20,
        "random_seed": 1,
    }


@pytest.mark.parametrize("model", [MISTRAL, GROQ, TOGETHER])
async def test_it_streams_text_with_usage_from_the_fake(model: CatalogModel, fake: FakeUpstream) -> None:
    chunks, progress = await collect(on_fake(model, fake), chat(stream=True, stream_options={"include_usage": True}))

    assert text_of(chunks) == HELLO_REPLY
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert finish_of(chunks) == "stop"
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all(chunk["model"] == model.name and chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert progress.usage == Usage(input_tokens=4, output_tokens=5)
    assert progress.completion_chars == len(HELLO_REPLY)
    assert progress.finished is True
    assert progress.error is None


class GroqWithoutIncludeUsage(GroqAdapter):
    """Groq not asked for the top-level usage chunk, so only x_groq.usage carries usage."""

    def payload(self, model: CatalogModel, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        body = super().payload(model, request, stream=stream)
        del body["stream_options"]
        return body


async def test_groq_usage_comes_from_x_groq_when_the_top_level_chunk_is_missing(fake: FakeUpstream) -> None:
    stream = GroqWithoutIncludeUsage().stream(on_fake(GROQ, fake), chat(stream=True))
    await stream.open()
    try:
        chunks = [chunk async for chunk in stream.chunks()]
    finally:
        await stream.close()

    assert "stream_options" not in (await stats(fake))["last_request"]["body"]
    assert text_of(chunks) == HELLO_REPLY
    assert stream.progress.usage == Usage(input_tokens=4, output_tokens=5)


@pytest.mark.parametrize("model", [MISTRAL, GROQ, TOGETHER])
async def test_it_streams_a_tool_call_from_the_fake(model: CatalogModel, fake: FakeUpstream) -> None:
    chunks, _ = await collect(on_fake(model, fake), chat("What is the weather?", stream=True, tools=[WEATHER_TOOL]))

    fragments = [
        call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls") or () if "choices" in chunk
    ]
    assert fragments[0]["index"] == 0
    assert fragments[0]["type"] == "function"
    assert fragments[0]["function"]["name"] == "get_weather"
    assert "".join(f["function"].get("arguments", "") for f in fragments).replace(" ", "") == '{"city":"Paris"}'
    assert finish_of(chunks) == "tool_calls"


async def test_a_mistral_tool_call_from_the_fake_has_string_arguments(fake: FakeUpstream) -> None:
    result = await ADAPTERS["mistral"].chat(on_fake(MISTRAL, fake), chat("What is the weather?", tools=[WEATHER_TOOL]))

    [call] = result.body["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert len(call["id"]) == 9
    assert result.body["choices"][0]["finish_reason"] == "tool_calls"


async def test_the_fake_mistral_accepts_a_tool_loop_with_openai_ids(fake: FakeUpstream) -> None:
    request = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "What is the weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": OPENAI_CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": OPENAI_CALL_ID, "content": "18C and sunny"},
        ],
        "tools": [WEATHER_TOOL],
    }

    result = await ADAPTERS["mistral"].chat(on_fake(MISTRAL, fake), request)

    assert result.body["choices"][0]["message"]["content"] == "Fake reply to: What is the weather?"
    sent = (await stats(fake))["last_request"]["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == MISTRAL_CALL_ID
    assert sent[2]["tool_call_id"] == MISTRAL_CALL_ID


async def test_a_reply_past_mistrals_context_ends_with_length(fake: FakeUpstream) -> None:
    chunks, progress = await collect(on_fake(MISTRAL, fake), chat("Go [fake words=5000]", stream=True))

    assert finish_of(chunks) == "length"
    # The prompt is counted with its directive: 20 characters, 5 tokens.
    assert progress.usage == Usage(input_tokens=5, output_tokens=MISTRAL_CONTEXT_TOKENS - 5)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (MISTRAL, "mistral stopped generating with an error (finish_reason 'error')."),
        (GROQ, "groq failed mid-stream: Internal Server Error: the model failed mid-stream"),
        (TOGETHER, "Internal server error: the model failed mid-stream"),
    ],
)
async def test_a_mid_stream_failure_from_the_fake_ends_with_one_error_chunk(
    model: CatalogModel, message: str, fake: FakeUpstream
) -> None:
    chunks, progress = await collect(on_fake(model, fake), chat("Hi [fake fail_after_chunks=2]", stream=True))

    assert "error" in chunks[-1]
    assert [c for c in chunks if "error" in c] == [chunks[-1]]
    assert chunks[-1]["error"]["message"] == message
    assert progress.error is not None
    assert progress.error["message"] == message
    assert progress.usage is None
    assert (await stats(fake))["streams_failed"] == 1


@pytest.mark.parametrize(
    ("model", "status", "client_status", "retryable"),
    [
        (MISTRAL, 429, 503, True),
        (MISTRAL, 503, 502, True),
        (MISTRAL, 401, 502, False),
        (GROQ, 429, 503, True),
        (GROQ, 498, 503, True),
        (GROQ, 500, 502, True),
        (TOGETHER, 429, 503, True),
        (TOGETHER, 503, 502, True),
        (TOGETHER, 402, 502, False),
    ],
)
async def test_it_maps_the_fakes_injected_errors(
    model: CatalogModel, status: int, client_status: int, retryable: bool, fake: FakeUpstream
) -> None:
    with pytest.raises(ProviderError) as caught:
        await ADAPTERS[model.provider].chat(on_fake(model, fake), chat(f"Hi [fake status={status} retry_after=2]"))

    assert (caught.value.status, caught.value.retryable, caught.value.upstream_status) == (
        client_status,
        retryable,
        status,
    )


async def test_a_stream_refused_upfront_raises_before_any_chunk(fake: FakeUpstream) -> None:
    stream = ADAPTERS["groq"].stream(on_fake(GROQ, fake), chat("Hi [fake status=429 retry_after=4]", stream=True))

    with pytest.raises(ProviderError) as caught:
        await stream.open()

    assert (caught.value.status, caught.value.retry_after) == (503, "4")
    assert (await stats(fake))["streams_started"] == 0


async def test_together_refuses_a_prompt_past_its_context_as_the_clients_fault(fake: FakeUpstream) -> None:
    with pytest.raises(ProviderError) as caught:
        await ADAPTERS["together"].chat(on_fake(TOGETHER, fake), chat(max_tokens=40_000))

    assert (caught.value.status, caught.value.retryable, caught.value.upstream_status) == (400, False, 403)
    assert caught.value.message == (
        "together rejected the request: Input validation error: `inputs` tokens + `max_new_tokens` must be "
        "<= 32768. Given: 4 `inputs` tokens and 40000 `max_new_tokens`"
    )


async def test_groq_n_above_one_never_reaches_the_provider(fake: FakeUpstream) -> None:
    with pytest.raises(ProviderError):
        await ADAPTERS["groq"].chat(on_fake(GROQ, fake), chat(n=2))
    stream = ADAPTERS["groq"].stream(on_fake(GROQ, fake), chat(n=2, stream=True))
    with pytest.raises(ProviderError):
        await stream.open()

    assert (await stats(fake))["requests"] == 0


# --- the fake's own rules ---------------------------------------------------------------


def fake_post(fake: FakeUpstream, provider: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{fake.url}{PATHS[provider]}/chat/completions",
        json=body,
        headers={"authorization": "Bearer k", **headers},
    )


def test_the_fake_mistral_refuses_openai_fields_with_a_422_detail(fake: FakeUpstream) -> None:
    response = fake_post(fake, "mistral", chat(stream=True, stream_options={"include_usage": True}))

    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "extra_forbidden",
                "loc": ["body", "stream_options"],
                "msg": "Extra inputs are not permitted",
                "input": {"include_usage": True},
            }
        ]
    }
    assert fake.stats()["errors"] == 1


@pytest.mark.parametrize("field", ["max_completion_tokens", "seed", "user", "logprobs"])
def test_the_fake_mistral_refuses_fields_it_names_differently_or_lacks(fake: FakeUpstream, field: str) -> None:
    response = fake_post(fake, "mistral", {**chat(), field: 1})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_the_fake_mistral_refuses_a_developer_role(fake: FakeUpstream) -> None:
    body = {"model": "m", "messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}]}

    response = fake_post(fake, "mistral", body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "union_tag_invalid"


def test_the_fake_mistral_refuses_foreign_tool_call_ids(fake: FakeUpstream) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "y"},
        ],
    }

    response = fake_post(fake, "mistral", body)

    assert response.status_code == 400
    assert response.json() == {
        "object": "error",
        "message": "Tool call id was call_1 but must be a-z, A-Z, 0-9, with a length of 9.",
        "type": "invalid_function_call",
        "param": None,
        "code": "3280",
    }


def test_the_fake_mistral_streams_usage_on_the_last_content_chunk(fake: FakeUpstream) -> None:
    response = fake_post(fake, "mistral", chat(stream=True))

    events = response.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    last = orjson.loads(events[-3][len(b"data: ") :])
    assert last["choices"] == [{"index": 0, "delta": {"content": "gateway"}, "finish_reason": "stop"}]
    assert last["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_the_fake_mistral_says_model_length_past_its_context(fake: FakeUpstream) -> None:
    response = fake_post(fake, "mistral", chat("Go [fake words=5000]"))

    assert response.json()["choices"][0]["finish_reason"] == "model_length"
    assert response.json()["usage"]["completion_tokens"] == MISTRAL_CONTEXT_TOKENS - 5


def test_the_fake_mistral_answers_401_in_its_own_shape(fake: FakeUpstream) -> None:
    response = httpx.post(f"{fake.url}/mistral/v1/chat/completions", json=chat())

    assert response.status_code == 401
    assert response.json()["message"] == "Unauthorized"


def test_the_fake_mistral_sends_its_ratelimit_headers(fake: FakeUpstream) -> None:
    response = fake_post(fake, "mistral", chat())

    assert response.headers["ratelimitbysize-limit"] == "2000000"
    assert response.headers["x-ratelimitbysize-remaining-minute"] == "1999000"


def test_the_fake_groq_refuses_n_above_one(fake: FakeUpstream) -> None:
    response = fake_post(fake, "groq", chat(n=2))

    assert response.status_code == 400
    assert response.json() == {"error": {"message": "'n' : number must be at most 1", "type": "invalid_request_error"}}


def test_the_fake_groq_refuses_a_message_name(fake: FakeUpstream) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x", "name": "alice"}]}

    response = fake_post(fake, "groq", body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "'messages.0' : for 'role:user' the following must be satisfied"
        "[('messages.0' : property 'name' is unsupported)]"
    )


def test_the_fake_groq_puts_usage_with_timings_in_x_groq_on_the_final_chunk(fake: FakeUpstream) -> None:
    response = fake_post(fake, "groq", chat(stream=True))

    chunks = [orjson.loads(e[6:]) for e in response.content.split(b"\n\n") if e.startswith(b"data: {")]
    assert chunks[0]["x_groq"]["id"].startswith("req_")
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["x_groq"]["usage"] == {
        "queue_time": 0.0125,
        "prompt_time": 0.0021,
        "completion_time": 0.0334,
        "total_time": 0.0355,
        "prompt_tokens": 4,
        "completion_tokens": 5,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert final["x_groq"]["seed"] == GROQ_SEED
    assert all("usage" not in chunk for chunk in chunks)


def test_the_fake_groq_sends_retry_after_only_on_429(fake: FakeUpstream) -> None:
    limited = fake_post(fake, "groq", chat("x [fake status=429 retry_after=5]"))
    failing = fake_post(fake, "groq", chat("x [fake status=503 retry_after=5]"))

    assert limited.headers["retry-after"] == "5"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.json()["error"]["type"] == "tokens"
    assert "retry-after" not in failing.headers
    assert limited.headers["x-ratelimit-limit-requests"] == "14400"


def test_the_fake_together_streams_text_seed_token_ids_and_final_usage(fake: FakeUpstream) -> None:
    response = fake_post(fake, "together", chat(stream=True))

    events = response.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(e[6:]) for e in events if e.startswith(b"data: {")]
    assert [c["usage"] for c in chunks[:-1]] == [None] * 4
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    last = chunks[-1]["choices"][0]
    assert (last["text"], last["finish_reason"], last["seed"]) == ("gateway", "eos", TOGETHER_SEED)
    assert last["delta"] == {"token_id": 1004, "role": "assistant", "content": "gateway", "tool_calls": None}


def test_the_fake_together_answers_eos_with_a_seed(fake: FakeUpstream) -> None:
    choice = fake_post(fake, "together", chat()).json()["choices"][0]

    assert (choice["finish_reason"], choice["seed"]) == ("eos", TOGETHER_SEED)
    assert choice["message"] == {"role": "assistant", "content": HELLO_REPLY, "tool_calls": []}


def test_the_fake_routes_update_the_shared_stats(fake: FakeUpstream) -> None:
    fake_post(fake, "together", chat())
    fake_post(fake, "groq", chat(stream=True))
    fake_post(fake, "mistral", chat("x [fake status=500]"))

    counters = fake.stats()
    assert {k: counters[k] for k in ("requests", "completed", "errors", "streams_started", "streams_completed")} == {
        "requests": 3,
        "completed": 1,
        "errors": 1,
        "streams_started": 1,
        "streams_completed": 1,
    }
    assert counters["last_request"]["path"] == "/mistral/v1/chat/completions"


@pytest.mark.parametrize("provider", ["groq", "together"])
def test_the_openai_sdk_reads_the_fakes_stream(fake: FakeUpstream, provider: str) -> None:
    # Groq and Together document the openai SDK as a client of their APIs.
    client = openai.OpenAI(api_key="k", base_url=f"{fake.url}{PATHS[provider]}", max_retries=0)

    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": HELLO}], stream=True, stream_options={"include_usage": True}
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert text == HELLO_REPLY


# --- the whole gateway, in process ------------------------------------------------------

proxy = pytest.mark.django_db(transaction=True)
SEEDED = [
    # provider, model, cost of 4 input + 5 output tokens at the seeded prices
    ("mistral", "mistral-small-2603", Decimal("0.0000019000")),  # $0.10 / $0.30
    ("groq", "llama-3.1-8b-instant", Decimal("0.0000006000")),  # $0.05 / $0.08
    ("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", Decimal("0.0000016200")),  # $0.18 / $0.18
]


@proxy
@pytest.mark.parametrize(("provider", "model", "cost"), SEEDED)
async def test_the_gateway_answers_through_the_provider_in_openai_shape(
    provider: str, model: str, cost: Decimal, api_key: str, upstream: FakeUpstream
) -> None:
    reply = await post(chat(model=model), key=api_key)

    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == model
    assert body["choices"][0]["message"] == {"role": "assistant", "content": HELLO_REPLY, "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == USAGE_9
    assert reply.headers["x-muxer-provider"] == provider
    assert reply.headers["x-muxer-cost-usd"] == format(cost, "f")
    assert (await upstream_stats(upstream))["last_request"]["path"] == f"{PATHS[provider]}/chat/completions"
    [row] = await usage_rows()
    assert (row.provider, row.model, row.status, row.http_status, row.stream) == (
        provider,
        model,
        UsageStatus.OK,
        200,
        False,
    )
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (4, 5, False)
    assert row.cost_usd == cost


@proxy
@pytest.mark.parametrize(("provider", "model", "cost"), SEEDED)
async def test_the_gateway_streams_through_the_provider_in_openai_shape(
    provider: str, model: str, cost: Decimal, api_key: str, upstream: FakeUpstream
) -> None:
    reply = await post(chat(model=model, stream=True, stream_options={"include_usage": True}), key=api_key)

    assert reply.status == 200
    assert reply.headers["x-muxer-provider"] == provider
    events = sse_events(reply.body)
    assert events[-1] == b"data: [DONE]"
    chunks = data_chunks(events)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == HELLO_REPLY
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == USAGE_9
    # Nothing provider-specific reaches the client.
    assert all(set(c) <= {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"} for c in chunks)
    assert all(set(c["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"} for c in chunks if c["choices"])
    [row] = await usage_rows()
    assert (row.provider, row.status, row.stream, row.input_tokens, row.output_tokens) == (
        provider,
        UsageStatus.OK,
        True,
        4,
        5,
    )
    assert row.cost_usd == cost


@proxy
async def test_the_gateway_refuses_n_above_one_for_groq_without_calling_it(
    api_key: str, upstream: FakeUpstream
) -> None:
    reply = await post(chat(model="llama-3.1-8b-instant", n=2), key=api_key)

    assert reply.status == 400
    assert reply.error["code"] == "unsupported_parameter"
    assert reply.error["message"] == (
        "groq does not support more than one choice (n=2); remove 'n' or choose another model."
    )
    assert (await upstream_stats(upstream))["requests"] == 0


@proxy
async def test_the_gateway_passes_mistrals_reason_for_a_bad_request(api_key: str, upstream: FakeUpstream) -> None:
    reply = await post(chat("x [fake status=400]", model="mistral-small-2603"), key=api_key)

    assert reply.status == 400
    assert reply.error["message"] == "mistral rejected the request: Injected fake bad request."
    [row] = await usage_rows()
    assert (row.provider, row.status, row.http_status) == ("mistral", UsageStatus.ERROR, 400)


@proxy
async def test_the_gateway_records_a_together_mid_stream_failure(api_key: str, upstream: FakeUpstream) -> None:
    body = chat("Hi [fake fail_after_chunks=2]", model="meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", stream=True)

    reply = await post(body, key=api_key)

    assert reply.status == 200
    chunks = data_chunks(sse_events(reply.body))
    assert chunks[-1] == {
        "error": {
            "message": "Internal server error: the model failed mid-stream",
            "type": "server_error",
            "code": "upstream_error",
            "param": None,
        }
    }
    [row] = await usage_rows()
    assert (row.provider, row.status, row.http_status, row.stream) == ("together", UsageStatus.ERROR, 502, True)
