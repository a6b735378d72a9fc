"""The official openai SDK, through a live gateway, to every provider's wire format on the fake upstream.

A client cannot tell which provider answered: the same reply text, OpenAI
shapes, streaming included; usage and cost are recorded for each.
"""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from billing.models import UsageStatus
from providers.models import Model
from tests.conftest import Gateway
from tests.e2e.test_openai_sdk import wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

ONE_MODEL_PER_PROVIDER = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-haiku-4-5"),
    ("gemini", "gemini-2.5-flash-lite"),
    ("mistral", "mistral-small-2603"),
    ("groq", "llama-3.1-8b-instant"),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ("cohere", "command-r-08-2024"),
]
PROMPT = "Hello from every provider"
REPLY = "Fake reply to: Hello from every provider"


@pytest.fixture
def client(gateway: Gateway, api_key: str, catalog: None) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=f"{gateway.url}/v1", max_retries=0)


def expected_cost(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    row = Model.objects.get(name=model)
    return (prompt_tokens * row.input_price_per_mtok_usd + completion_tokens * row.output_price_per_mtok_usd) / Decimal(
        1_000_000
    )


@pytest.mark.parametrize(("provider", "model"), ONE_MODEL_PER_PROVIDER)
def test_chat_without_streaming(client: openai.OpenAI, gateway: Gateway, provider: str, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    )
    completion = raw.parse()

    assert raw.headers["x-muxer-provider"] == provider
    assert completion.model == model
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    [row] = wait_for_usage(gateway, count=1)
    assert (row.provider, row.model, row.status) == (provider, model, UsageStatus.OK)
    assert (row.input_tokens, row.output_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row.cost_usd == expected_cost(model, row.input_tokens, row.output_tokens).quantize(row.cost_usd)


@pytest.mark.parametrize(("provider", "model"), ONE_MODEL_PER_PROVIDER)
def test_chat_with_streaming(client: openai.OpenAI, gateway: Gateway, provider: str, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    [row] = wait_for_usage(gateway, count=1)
    assert (row.provider, row.status, row.stream) == (provider, UsageStatus.OK, True)
    assert row.output_tokens == chunks[-1].usage.completion_tokens
    assert row.usage_estimated is False
