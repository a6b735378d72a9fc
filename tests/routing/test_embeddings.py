"""``POST /v1/embeddings`` through the real ASGI app and the fake upstream."""

from __future__ import annotations

import base64
import struct
from decimal import Decimal
from typing import Any

import orjson
import pytest
from channels.testing import HttpCommunicator

from billing.models import UsageStatus
from muxer_project.asgi import application
from providers.fake_wire.embeddings import vector
from tests.conftest import FakeUpstream
from tests.routing.harness import Reply, request_headers, upstream_stats, usage_rows

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "text-embedding-3-small"


async def embed(body: Any, *, key: str) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    communicator = HttpCommunicator(
        application, "POST", "/v1/embeddings", body=raw, headers=request_headers(key, raw, content_length=True)
    )
    response = await communicator.get_response(timeout=15)
    await communicator.wait(timeout=15)
    return Reply(
        status=response["status"],
        headers={name.decode(): value.decode() for name, value in response["headers"]},
        body=response["body"],
    )


async def test_it_embeds_a_string_and_records_the_cost(api_key: str, upstream: FakeUpstream) -> None:
    reply = await embed({"model": MODEL, "input": "The food was delicious"}, key=api_key)

    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": vector("The food was delicious", 8)}]
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert reply.headers["x-muxer-provider"] == "openai"
    [row] = await usage_rows()
    assert (row.model, row.status, row.input_tokens, row.output_tokens) == (MODEL, UsageStatus.OK, 6, 0)
    assert row.cost_usd == Decimal(6) * Decimal("0.02") / Decimal(1_000_000)
    assert row.cost_usd == Decimal(reply.headers["x-muxer-cost-usd"])


async def test_it_passes_batches_token_arrays_and_options_through(api_key: str, upstream: FakeUpstream) -> None:
    reply = await embed(
        {"model": MODEL, "input": [[1, 2, 3], [4, 5]], "dimensions": 4, "encoding_format": "base64"}, key=api_key
    )

    assert reply.status == 200
    data = reply.json()["data"]
    assert [item["index"] for item in data] == [0, 1]
    decoded = struct.unpack("<4f", base64.b64decode(data[1]["embedding"]))
    assert decoded == pytest.approx(vector("4 5", 4), abs=1e-6)
    sent = (await upstream_stats(upstream))["last_request"]["body"]
    assert sent == {"model": MODEL, "input": [[1, 2, 3], [4, 5]], "dimensions": 4, "encoding_format": "base64"}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL}, 400, "input"),
        ({"model": MODEL, "input": ""}, 400, "input"),
        ({"model": MODEL, "input": []}, 400, "input"),
        ({"model": MODEL, "input": [1, "a"]}, 400, "input"),
        ({"model": MODEL, "input": {"text": "x"}}, 400, "input"),
        ({"model": MODEL, "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"model": MODEL, "input": "x", "colour": "blue"}, 400, "colour"),
        ({"model": "fake-small", "input": "x"}, 400, "model"),
        ({"model": "no-such-model", "input": "x"}, 404, "model"),
        ({"input": "x"}, 400, "model"),
    ],
)
async def test_bad_input_is_a_precise_4xx_with_nothing_recorded(
    api_key: str, upstream: FakeUpstream, body: dict[str, Any], status: int, param: str
) -> None:
    reply = await embed(body, key=api_key)

    assert reply.status == status
    assert reply.error["param"] == param
    assert await usage_rows() == []
    assert (await upstream_stats(upstream))["requests"] == 0


async def test_a_bad_key_is_a_401(upstream: FakeUpstream, catalog: None) -> None:
    reply = await embed({"model": MODEL, "input": "x"}, key="mm_live_nope")

    assert reply.status == 401
    assert reply.error["code"] == "invalid_api_key"


async def test_a_provider_failure_is_retried_then_reported(api_key: str, upstream: FakeUpstream) -> None:
    reply = await embed({"model": MODEL, "input": "[fake status=503] x"}, key=api_key)

    assert reply.status == 502
    assert reply.error["code"] == "upstream_error"
    assert (await upstream_stats(upstream))["requests"] == 2
    [row] = await usage_rows()
    assert (row.model, row.status) == (MODEL, UsageStatus.ERROR)
