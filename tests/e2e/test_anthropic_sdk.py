"""The official anthropic SDK against a live gateway (uvicorn and daphne): ``/v1/messages`` for any model.

The same client code gets a Claude model (through the Anthropic adapter) or
an OpenAI one (through the OpenAI adapter); usage and cost are recorded as for
chat.
"""

from __future__ import annotations

from decimal import Decimal

import anthropic
import pytest

from billing.models import UsageStatus
from providers.models import Model
from tests.conftest import Gateway
from tests.e2e.test_openai_sdk import wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = [
    pytest.param("anthropic", "claude-haiku-4-5", id="claude"),
    pytest.param("openai", "gpt-4o-mini", id="openai"),
]
SYSTEM = "Be brief."
PROMPT = "Hello gateway"
REPLY = "Fake reply to: Hello gateway"
# "Be brief." and "Hello gateway": 22 characters -> 6 input tokens; the reply is 5 words.
INPUT_TOKENS, OUTPUT_TOKENS = 6, 5
WEATHER_TOOL: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def client(gateway: Gateway, api_key: str, catalog: None) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=api_key, base_url=gateway.url, max_retries=0)


def expected_cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    row = Model.objects.get(name=model)
    total = input_tokens * row.input_price_per_mtok_usd + output_tokens * row.output_price_per_mtok_usd
    return total / Decimal(1_000_000)


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_create_without_streaming(client: anthropic.Anthropic, gateway: Gateway, provider: str, model: str) -> None:
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=256, system=SYSTEM, messages=[{"role": "user", "content": PROMPT}]
    )
    message = raw.parse()

    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", model)
    [block] = message.content
    assert block.type == "text"
    assert block.text == REPLY
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert (message.usage.cache_creation_input_tokens, message.usage.cache_read_input_tokens) == (0, 0)
    assert (raw.headers["x-muxer-model"], raw.headers["x-muxer-provider"]) == (model, provider)
    assert message._request_id == raw.headers["x-request-id"]

    [row] = wait_for_usage(gateway, count=1)
    assert row.request_id == raw.headers["x-request-id"]
    assert (row.provider, row.model, row.status, row.stream) == (provider, model, UsageStatus.OK, False)
    assert (row.input_tokens, row.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    assert row.cost_usd == Decimal(raw.headers["x-muxer-cost-usd"]) == expected_cost(model, 6, 5)


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_stream(client: anthropic.Anthropic, gateway: Gateway, provider: str, model: str) -> None:
    with client.messages.stream(
        model=model, max_tokens=256, system=SYSTEM, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == REPLY
    assert final.model == model
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", REPLY)]
    assert final.stop_reason == "end_turn"
    # message_start carried an estimate; message_delta's reported counts are the ones the SDK keeps.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)

    [row] = wait_for_usage(gateway, count=1)
    assert (row.provider, row.model, row.status, row.stream) == (provider, model, UsageStatus.OK, True)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (INPUT_TOKENS, OUTPUT_TOKENS, False)
    assert row.cost_usd == expected_cost(model, INPUT_TOKENS, OUTPUT_TOKENS)


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_a_tool_use_round_trip(client: anthropic.Anthropic, gateway: Gateway, provider: str, model: str) -> None:
    question: anthropic.types.MessageParam = {"role": "user", "content": "What's the weather in Paris?"}
    call = client.messages.create(model=model, max_tokens=256, tools=[WEATHER_TOOL], messages=[question])

    assert call.stop_reason == "tool_use"
    [tool_use] = call.content
    assert tool_use.type == "tool_use"
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Paris"})

    answer = client.messages.create(
        model=model,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": call.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "18 C"}]},
        ],
    )

    assert answer.stop_reason == "end_turn"
    [block] = answer.content
    assert block.type == "text"
    assert block.text == "Fake reply to: What's the weather in Paris?"
    rows = wait_for_usage(gateway, count=2)
    assert [(r.model, r.status) for r in rows] == [(model, UsageStatus.OK)] * 2


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_a_streamed_tool_call_arrives_as_parsed_input(client: anthropic.Anthropic, provider: str, model: str) -> None:
    with client.messages.stream(
        model=model,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Use the tool."}],
    ) as stream:
        final = stream.get_final_message()

    assert final.stop_reason == "tool_use"
    [tool_use] = final.content
    assert tool_use.type == "tool_use"
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Paris"})


def test_a_wrong_key_is_an_authentication_error(gateway: Gateway, catalog: None) -> None:
    client = anthropic.Anthropic(api_key="mm_live_not-a-real-key", base_url=gateway.url, max_retries=0)

    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}])

    assert raised.value.status_code == 401
    assert raised.value.body == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "The API key is malformed. ModelMuxer keys look like 'mm_live_...'.",
        },
        "request_id": raised.value.response.headers["x-request-id"],
    }


def test_an_unknown_model_is_not_found(client: anthropic.Anthropic, gateway: Gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(model="claude-unknown", max_tokens=16, messages=[{"role": "user", "content": "hi"}])

    assert raised.value.status_code == 404
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["error"] == {
        "type": "not_found_error",
        "message": "The model 'claude-unknown' does not exist.",
    }
    assert wait_for_usage(gateway, count=0, timeout=0.2) == []


def test_extended_thinking_is_refused_clearly(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": "hi"}],
        )

    assert isinstance(raised.value.body, dict)
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert raised.value.body["error"]["message"].startswith("thinking: extended thinking is not supported")


def test_a_mid_stream_failure_raises_in_the_sdk_and_is_recorded(client: anthropic.Anthropic, gateway: Gateway) -> None:
    texts: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(
            model="gpt-4o-mini", max_tokens=256, messages=[{"role": "user", "content": "[fake fail_after_chunks=3] hi"}]
        ) as stream,
    ):
        texts.extend(stream.text_stream)

    assert texts == ["Fake ", "reply "]
    assert raised.value.body == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "The server had an error while processing your request. Sorry about that!",
        },
    }
    [row] = wait_for_usage(gateway, count=1)
    assert (row.model, row.status, row.http_status, row.stream) == ("gpt-4o-mini", UsageStatus.ERROR, 502, True)
