"""Property: however the network splits a provider's stream, the client gets the same chunks.

For each wire format, one real stream is captured from the fake upstream, then
replayed to the adapter cut into random pieces (single bytes, cuts inside
``\\r\\n``, inside multi-byte UTF-8, inside JSON), and the OpenAI chunks and
usage it produces must equal those from the unsplit bytes.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from providers.adapters import ChatStream, Usage, adapter_for
from providers.catalog import get_catalog
from tests.conftest import FakeUpstream

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = [
    "gpt-4o-mini",
    "claude-haiku-4-5",
    "gemini-2.5-flash-lite",
    "mistral-small-2603",
    "llama-3.1-8b-instant",
    "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "command-r-08-2024",
]
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
SPLITS_PER_STREAM = 40


class Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def random_pieces(raw: bytes, rng: random.Random) -> list[bytes]:
    if rng.random() < 0.1:
        return [raw[i : i + 1] for i in range(len(raw))]
    cuts = sorted(rng.sample(range(1, len(raw)), k=min(len(raw) - 1, rng.randint(1, 60))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def comparable(chunk: dict[str, Any]) -> dict[str, Any]:
    """The chunk without what an adapter may generate afresh per stream (ids, timestamps)."""
    chunk = {k: v for k, v in chunk.items() if k not in ("id", "created")}
    for choice in chunk.get("choices") or ():
        for call in (choice.get("delta") or {}).get("tool_calls") or ():
            call.pop("id", None)
    return chunk


async def replay(stream: ChatStream, pieces: list[bytes]) -> tuple[list[dict[str, Any]], Usage | None]:
    stream.response = httpx.Response(200, stream=Pieces(pieces))  # type: ignore[attr-defined]
    chunks = [comparable(chunk) async for chunk in stream.chunks()]
    return chunks, stream.progress.usage


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("with_tool", [False, True], ids=["text", "tool-call"])
async def test_any_split_of_the_upstream_bytes_gives_the_same_chunks(
    model_name: str, with_tool: bool, upstream: FakeUpstream, catalog: None
) -> None:
    model = (await get_catalog()).get(model_name)
    assert model is not None
    adapter = adapter_for(model)
    assert adapter is not None
    text = "What is the weather in Paris? ünïcödé ✓ [fake words=25]" if not with_tool else "weather in Paris?"
    payload: dict[str, Any] = {"model": model_name, "messages": [{"role": "user", "content": text}], "stream": True}
    if with_tool:
        payload["tools"] = [WEATHER_TOOL]

    captured = adapter.stream(model, payload)
    await captured.open()
    assert captured.response is not None  # type: ignore[attr-defined]
    raw = await captured.response.aread()  # type: ignore[attr-defined]
    await captured.close()
    expected, expected_usage = await replay(adapter.stream(model, payload), [raw])
    assert expected, "the fake produced no chunks"
    assert expected_usage is not None

    rng = random.Random(f"{model_name}-{with_tool}")
    for _ in range(SPLITS_PER_STREAM):
        pieces = random_pieces(raw, rng)
        chunks, usage = await replay(adapter.stream(model, payload), pieces)
        assert chunks == expected, f"split into {len(pieces)} pieces"
        assert usage == expected_usage
