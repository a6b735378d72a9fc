"""The fake upstream's response faults: slow first byte, reset connection, malformed JSON, truncated stream.

Against the OpenAI route, the Mistral and Anthropic dialects (which install
the faults through ``Controls`` without knowing about them), and through the
adapters, which must see each fault as the failure it imitates.
"""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from providers.adapters.base import ProviderError
from providers.adapters.openai import OpenAIAdapter
from providers.adapters.openai_compat import MistralAdapter
from providers.catalog import CatalogModel
from providers.fake_upstream import _injected_error
from tests.conftest import FakeUpstream

AUTH = {"authorization": "Bearer sk-test"}
HELLO = "Hello gateway"
MODEL = CatalogModel(
    name="fake-small",
    kind="chat",
    provider="fake",
    wire_format="openai",
    base_url="http://unused/v1",
    credential="k",
    input_price_per_mtok_usd=Decimal(0),
    output_price_per_mtok_usd=Decimal(0),
    cached_input_price_per_mtok_usd=None,
    context_window=1000,
    max_output_tokens=1000,
    supports_streaming=True,
    supports_tools=False,
    supports_vision=False,
    supports_json_mode=False,
    created=0,
)


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.reset()
    return fake_upstream


def chat(content: str = HELLO, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-small", "messages": [{"role": "user", "content": content}], **extra}


def openai_post(fake: FakeUpstream, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{fake.url}/v1/chat/completions", json=body, headers={**AUTH, **headers})


def mistral_post(fake: FakeUpstream, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{fake.url}/mistral/v1/chat/completions", json=body, headers={**AUTH, **headers})


def read_until_reset(fake: FakeUpstream, path: str, body: dict[str, Any]) -> tuple[int, bytes, Exception | None]:
    """Status, the body bytes that arrived, and the error the connection ended with."""
    received = b""
    with (
        httpx.Client() as client,
        client.stream("POST", f"{fake.url}{path}", json=body, headers=AUTH) as response,
    ):
        try:
            for piece in response.iter_raw():
                received += piece
        except httpx.HTTPError as exc:
            return response.status_code, received, exc
    return response.status_code, received, None


def events(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n")
    return body[:-2].split(b"\n\n")


# --- first_byte_delay_ms ----------------------------------------------------------------


def test_first_byte_delay_holds_the_response_start(fake: FakeUpstream) -> None:
    started = time.monotonic()
    with (
        httpx.Client() as client,
        client.stream(
            "POST", f"{fake.url}/v1/chat/completions", json=chat("Hi [fake first_byte_delay_ms=300]"), headers=AUTH
        ) as response,
    ):
        first_byte = time.monotonic() - started
        body = response.read()

    assert response.status_code == 200
    assert first_byte >= 0.3
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "Fake reply to: Hi"


def test_first_byte_delay_from_a_header_delays_a_dialects_error_too(fake: FakeUpstream) -> None:
    started = time.monotonic()
    response = mistral_post(fake, chat("Hi [fake status=503]"), **{"x-fake-first-byte-delay-ms": "250"})

    assert time.monotonic() - started >= 0.25
    assert response.status_code == 503
    assert response.json()["object"] == "error"


def test_without_a_delay_the_answer_is_prompt(fake: FakeUpstream) -> None:
    started = time.monotonic()
    openai_post(fake, chat())

    assert time.monotonic() - started < 0.25


# --- reset_after_bytes ----------------------------------------------------------------------


def test_reset_after_bytes_cuts_a_json_body_mid_way(fake: FakeUpstream) -> None:
    status, received, error = read_until_reset(fake, "/v1/chat/completions", chat("Hi [fake reset_after_bytes=20]"))

    assert status == 200
    assert received == b'{"id":"chatcmpl-' + received[16:20]
    assert len(received) == 20
    assert isinstance(error, httpx.RemoteProtocolError)
    assert "incomplete" in str(error) or "received 20 bytes" in str(error)


def test_reset_after_bytes_cuts_a_stream_mid_way(fake: FakeUpstream) -> None:
    status, received, error = read_until_reset(
        fake, "/v1/chat/completions", chat("Hi [fake reset_after_bytes=100]", stream=True)
    )

    assert status == 200
    assert len(received) == 100
    assert received.startswith(b'data: {"id":"chatcmpl-')
    assert isinstance(error, httpx.RemoteProtocolError)


def test_reset_after_zero_bytes_sends_only_the_headers(fake: FakeUpstream) -> None:
    status, received, error = read_until_reset(fake, "/v1/chat/completions", chat("Hi [fake reset_after_bytes=0]"))

    assert (status, received) == (200, b"")
    assert isinstance(error, httpx.RemoteProtocolError)


def test_a_body_no_longer_than_the_reset_limit_arrives_whole(fake: FakeUpstream) -> None:
    response = openai_post(fake, chat("Hi"), **{"x-fake-reset-after-bytes": "100000"})

    assert response.json()["choices"][0]["message"]["content"] == "Fake reply to: Hi"


def test_reset_after_bytes_cuts_a_dialects_stream(fake: FakeUpstream) -> None:
    status, received, error = read_until_reset(
        fake, "/mistral/v1/chat/completions", chat("Hi [fake reset_after_bytes=64]", stream=True)
    )

    assert (status, len(received)) == (200, 64)
    assert received.startswith(b'data: {"id":"')
    assert isinstance(error, httpx.RemoteProtocolError)


# --- malformed_json ------------------------------------------------------------------------


def test_malformed_json_cuts_a_json_body_in_half_with_a_matching_length(fake: FakeUpstream) -> None:
    whole = openai_post(fake, chat("Hi")).content
    # A header, not a directive: the directive's text would change the prompt's token count.
    response = openai_post(fake, chat("Hi"), **{"x-fake-malformed-json": "1"})

    assert response.status_code == 200
    assert len(response.content) == len(whole) // 2
    assert response.headers["content-length"] == str(len(whole) // 2)
    assert response.content.startswith(b'{"id":"chatcmpl-')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


def test_malformed_json_cuts_an_error_body_too(fake: FakeUpstream) -> None:
    whole, _ = _injected_error(503, "fake-small", None)

    response = openai_post(fake, chat("Hi [fake status=503 malformed_json=1]"))

    assert response.status_code == 503
    assert response.content == whole[: len(whole) // 2]


def test_malformed_json_cuts_every_stream_payload_but_done(fake: FakeUpstream) -> None:
    whole = events(openai_post(fake, chat("Hi", stream=True)).content)
    broken = events(openai_post(fake, chat("Hi [fake malformed_json=1]", stream=True)).content)

    assert len(broken) == len(whole)
    assert broken[-1] == b"data: [DONE]"
    for event, intact in zip(broken[:-1], whole[:-1], strict=True):
        payload = event[len(b"data: ") :]
        assert len(payload) == (len(intact) - len(b"data: ")) // 2
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(payload)


def test_malformed_json_from_a_header_cuts_a_dialects_body(fake: FakeUpstream) -> None:
    whole = mistral_post(fake, chat("Hi")).content
    response = mistral_post(fake, chat("Hi"), **{"x-fake-malformed-json": "1"})

    assert len(response.content) == len(whole) // 2
    assert response.content.startswith(b'{"id":"')


# --- truncate_stream ------------------------------------------------------------------------


@pytest.mark.parametrize("delay", ["", " chunk_delay_ms=1"])
def test_truncate_stream_drops_only_the_done_event(fake: FakeUpstream, delay: str) -> None:
    whole = events(openai_post(fake, chat("Hi", stream=True)).content)
    cut = events(openai_post(fake, chat(f"Hi [fake truncate_stream=1{delay}]", stream=True)).content)

    assert whole[-1] == b"data: [DONE]"
    assert len(cut) == len(whole) - 1
    assert [orjson.loads(e[6:])["choices"] for e in cut] == [orjson.loads(e[6:])["choices"] for e in whole[:-1]]


def test_truncate_stream_drops_the_error_event_of_a_failing_stream(fake: FakeUpstream) -> None:
    cut = events(openai_post(fake, chat("Hi [fake truncate_stream=1 fail_after_chunks=3]", stream=True)).content)

    assert len(cut) == 3
    assert all(b'"error"' not in event for event in cut)


def test_truncate_stream_drops_a_dialects_done(fake: FakeUpstream) -> None:
    cut = events(mistral_post(fake, chat("Hi [fake truncate_stream=1]", stream=True)).content)

    last = orjson.loads(cut[-1][6:])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert b"[DONE]" not in b"".join(cut)


def test_truncate_stream_drops_anthropics_message_stop(fake: FakeUpstream) -> None:
    response = httpx.post(
        f"{fake.url}/anthropic/v1/messages",
        json={
            "model": "claude-haiku-5-5",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi [fake truncate_stream=1]"}],
        },
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )

    names = [event.split(b"\n")[0] for event in events(response.content)]
    assert response.status_code == 200
    assert names[-1] == b"event: message_delta"
    assert b"event: message_stop" not in names


def test_truncate_stream_leaves_a_json_answer_alone(fake: FakeUpstream) -> None:
    response = openai_post(fake, chat("Hi [fake truncate_stream=1]"))

    assert response.json()["choices"][0]["message"]["content"] == "Fake reply to: Hi"


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("malformed_json=2", "Invalid value '2' for fake directive 'malformed_json' in directive."),
        ("truncate_stream=yes", "Invalid value 'yes' for fake directive 'truncate_stream' in directive."),
        ("reset_after_bytes=-1", "Invalid value '-1' for fake directive 'reset_after_bytes' in directive."),
        ("first_byte_delay_ms=x", "Invalid value 'x' for fake directive 'first_byte_delay_ms' in directive."),
    ],
)
def test_an_invalid_fault_value_is_a_400(fake: FakeUpstream, directive: str, message: str) -> None:
    response = openai_post(fake, chat(f"Hi [fake {directive}]"))

    assert response.status_code == 400
    assert response.json()["error"]["message"] == message


def test_an_invalid_fault_header_is_a_400(fake: FakeUpstream) -> None:
    response = openai_post(fake, chat(), **{"x-fake-truncate-stream": "on"})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Invalid value 'on' for fake directive 'truncate_stream' in header."


def test_faults_do_not_leak_into_the_next_dialect_request(fake: FakeUpstream) -> None:
    mistral_post(fake, chat("Hi [fake malformed_json=1]"))

    assert mistral_post(fake, chat("Hi")).json()["choices"][0]["message"]["content"] == "Fake reply to: Hi"


# --- what the adapters make of them -----------------------------------------------------------


def on_fake(fake: FakeUpstream) -> CatalogModel:
    return dataclasses.replace(MODEL, base_url=f"{fake.url}/v1")


async def test_a_reset_answer_is_a_retryable_connection_failure(fake: FakeUpstream) -> None:
    with pytest.raises(ProviderError) as caught:
        await OpenAIAdapter().chat(on_fake(fake), chat("Hi [fake reset_after_bytes=20]"))

    assert (caught.value.status, caught.value.retryable) == (502, True)
    assert caught.value.message.startswith("Could not reach fake: ")


async def test_a_stream_reset_mid_way_ends_with_an_error_chunk(fake: FakeUpstream) -> None:
    stream = OpenAIAdapter().stream(
        on_fake(fake), chat("Hi [fake reset_after_bytes=400 chunk_delay_ms=1]", stream=True)
    )
    await stream.open()
    try:
        chunks = [chunk async for chunk in stream.chunks()]
    finally:
        await stream.close()

    assert "choices" in chunks[0]
    assert chunks[-1]["error"]["message"].startswith("Could not reach fake: ")
    assert stream.progress.error is not None
    assert stream.progress.finished is False


async def test_a_malformed_answer_is_a_retryable_failure(fake: FakeUpstream) -> None:
    with pytest.raises(ProviderError) as caught:
        await OpenAIAdapter().chat(on_fake(fake), chat("Hi [fake malformed_json=1]"))

    assert (caught.value.status, caught.value.retryable, caught.value.message) == (
        502,
        True,
        "fake sent a malformed answer.",
    )


async def test_a_truncated_dialect_stream_is_not_marked_finished(fake: FakeUpstream) -> None:
    model = dataclasses.replace(MODEL, provider="mistral", base_url=f"{fake.url}/mistral/v1")
    stream = MistralAdapter().stream(model, chat("Hi [fake truncate_stream=1]", stream=True))
    await stream.open()
    try:
        chunks = [chunk async for chunk in stream.chunks()]
    finally:
        await stream.close()

    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Fake reply to: Hi"
    assert stream.progress.finished is False
    assert stream.progress.error is None
