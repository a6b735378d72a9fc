"""``POST /v1/embeddings`` through Mistral, Together AI, Cohere and Gemini.

Golden fixtures first (an OpenAI embeddings request -> the exact provider
request; documented provider answers -> exactly what the client gets), then
the adapters against the fake upstream (URLs, headers, usage, errors,
batching), the whole gateway in process for each seeded embedding model, and
the openai SDK against a live gateway.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import struct
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest
from channels.testing import HttpCommunicator
from django.conf import settings
from django.test import override_settings

from billing.models import UsageRecord, UsageStatus
from billing.usage import usage_drain
from muxer_project.asgi import application
from muxer_project.redis import sync_redis
from providers.adapters import EmbeddingResult, ProviderError, Usage, adapter_for
from providers.adapters.cohere import embed_answer, embed_body
from providers.adapters.embeddings import encoded
from providers.adapters.gemini import embed_content_request, embed_values
from providers.adapters.openai_compat import ADAPTERS as COMPAT_ADAPTERS
from providers.catalog import CatalogModel
from providers.fake_wire.embeddings import vector
from tests.conftest import FakeUpstream, Gateway
from tests.routing.harness import Reply, request_headers, upstream_stats, usage_rows


def catalog_model(provider: str, name: str, base_url: str, price: str) -> CatalogModel:
    return CatalogModel(
        name=name,
        kind="embedding",
        provider=provider,
        wire_format="gemini" if provider == "gemini" else provider if provider == "cohere" else "openai",
        base_url=base_url,
        credential=f"test-{provider}-key",
        input_price_per_mtok_usd=Decimal(price),
        output_price_per_mtok_usd=Decimal(0),
        cached_input_price_per_mtok_usd=None,
        context_window=8_192,
        max_output_tokens=0,
        supports_streaming=False,
        supports_tools=False,
        supports_vision=False,
        supports_json_mode=False,
        created=0,
    )


MISTRAL = catalog_model("mistral", "mistral-embed", "https://api.mistral.ai/v1", "0.10")
TOGETHER = catalog_model("together", "BAAI/bge-large-en-v1.5", "https://api.together.xyz/v1", "0.02")
COHERE = catalog_model("cohere", "embed-v4.0", "https://api.cohere.com/v2", "0.12")
GEMINI = catalog_model("gemini", "gemini-embedding-001", "https://generativelanguage.googleapis.com/v1beta", "0.15")
ALL = [MISTRAL, TOGETHER, COHERE, GEMINI]
PATHS = {"mistral": "/mistral/v1", "together": "/together/v1", "cohere": "/cohere/v2", "gemini": "/gemini/v1beta"}
# 22 characters: 6 tokens by the fake's rule and by the gateway's estimate alike.
FOOD = "The food was delicious"
# 0.5 and -0.25 as little-endian float32, base64: exactly what OpenAI would send.
HALF_AND_MINUS_QUARTER = "AAAAPwAAgL4="


def embedding(input: Any = FOOD, **extra: Any) -> dict[str, Any]:
    return {"model": "client-model", "input": input, **extra}


def refused(error: pytest.ExceptionInfo[ProviderError]) -> ProviderError:
    assert (error.value.status, error.value.retryable, error.value.type) == (400, False, "invalid_request_error")
    return error.value


# --- golden: OpenAI request -> provider request -------------------------------------


def test_mistral_gets_output_dimension_and_neither_the_encoding_nor_the_user() -> None:
    request = embedding(input=["a", "b"], dimensions=512, encoding_format="base64", user="u-1")

    body = COMPAT_ADAPTERS["mistral"].embedding_payload(MISTRAL, request, ["a", "b"])

    assert body == {"model": "mistral-embed", "input": ["a", "b"], "output_dimension": 512}


def test_mistral_gets_a_single_string_as_a_string() -> None:
    body = COMPAT_ADAPTERS["mistral"].embedding_payload(MISTRAL, embedding(), [FOOD])

    assert body == {"model": "mistral-embed", "input": FOOD}


def test_together_gets_only_the_model_and_input() -> None:
    request = embedding(input=["a"], encoding_format="base64", user="u-1")

    body = COMPAT_ADAPTERS["together"].embedding_payload(TOGETHER, request, ["a"])

    assert body == {"model": "BAAI/bge-large-en-v1.5", "input": ["a"]}


def test_together_refuses_dimensions_rather_than_answer_another_size() -> None:
    with pytest.raises(ProviderError) as caught:
        COMPAT_ADAPTERS["together"].embedding_payload(TOGETHER, embedding(dimensions=256), [FOOD])

    error = refused(caught)
    assert error.code == "unsupported_parameter"
    assert error.message == (
        "together does not support choosing the vector size; remove 'dimensions' or choose another model."
    )


def test_cohere_gets_search_documents_as_float_texts_with_the_output_dimension() -> None:
    body = embed_body(COHERE, embedding(input=["a", "b"], dimensions=256, user="u-1"), ["a", "b"])

    assert body == {
        "model": "embed-v4.0",
        "input_type": "search_document",
        "embedding_types": ["float"],
        "texts": ["a", "b"],
        "output_dimension": 256,
    }


def test_cohere_gets_the_input_type_a_request_names() -> None:
    body = embed_body(COHERE, embedding(input_type="search_query"), [FOOD])

    assert body["input_type"] == "search_query"


def test_cohere_refuses_an_input_type_it_does_not_know() -> None:
    with pytest.raises(ProviderError) as caught:
        embed_body(COHERE, embedding(input_type="image"), [FOOD])

    assert refused(caught).message == (
        "cohere's input_type must be one of classification, clustering, search_document, search_query."
    )


def test_gemini_gets_one_embed_content_request_per_text() -> None:
    item = embed_content_request(GEMINI, embedding(dimensions=768, user="u-1"), "a")

    assert item == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "a"}]},
        "outputDimensionality": 768,
    }


def test_gemini_gets_no_dimensionality_unless_asked() -> None:
    assert embed_content_request(GEMINI, embedding(), "a") == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "a"}]},
    }


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.provider)
@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]], ids=["int[]", "int[][]"])
async def test_token_arrays_are_refused_before_any_call(model: CatalogModel, tokens: list[Any]) -> None:
    adapter = adapter_for(model)
    assert adapter is not None

    # base_url points nowhere: a call would fail with a 502, not this 400.
    with pytest.raises(ProviderError) as caught:
        await adapter.embed(dataclasses.replace(model, base_url="http://127.0.0.1:9"), embedding(input=tokens))

    assert refused(caught).message == (
        f"{model.provider} embeds text only: 'input' holds token ids, which are OpenAI's tokenizer's and mean "
        "nothing to this model. Send the text itself."
    )


# --- golden: provider answer -> OpenAI answer ---------------------------------------


def openai_list(model: CatalogModel, vectors: list[Any], tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def compat_answer(model: CatalogModel, data: dict[str, Any], texts: list[str], **request: Any) -> EmbeddingResult:
    return COMPAT_ADAPTERS[model.provider].embedding_answer(model, data, texts, embedding(input=texts, **request))


def test_a_documented_mistral_answer_becomes_openais_list_with_its_usage() -> None:
    data = {
        "id": "embd-aad6fc62b17349b192ef09225058bc45",
        "object": "list",
        "model": "mistral-embed",
        "data": [
            {"object": "embedding", "embedding": [0.1, -0.2], "index": 0},
            {"object": "embedding", "embedding": [0.3, 0.4], "index": 1},
        ],
        "usage": {"prompt_tokens": 9, "total_tokens": 9, "completion_tokens": 0},
    }

    result = compat_answer(MISTRAL, data, ["a", "b"])

    assert result.body == openai_list(MISTRAL, [[0.1, -0.2], [0.3, 0.4]], 9)
    assert result.usage == Usage(input_tokens=9)


def test_vectors_come_back_in_input_order_whatever_the_providers_order() -> None:
    data = {
        "data": [
            {"object": "embedding", "embedding": [0.3], "index": 1},
            {"object": "embedding", "embedding": [0.1], "index": 0},
        ],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }

    result = compat_answer(MISTRAL, data, ["a", "b"])

    assert [item["embedding"] for item in result.body["data"]] == [[0.1], [0.3]]


def test_an_answer_that_repeats_an_index_is_a_retryable_502() -> None:
    data = {
        "data": [
            {"object": "embedding", "embedding": [0.1], "index": 0},
            {"object": "embedding", "embedding": [0.3], "index": 0},
        ]
    }

    with pytest.raises(ProviderError) as caught:
        compat_answer(MISTRAL, data, ["a", "b"])

    assert (caught.value.status, caught.value.retryable) == (502, True)


def test_a_providers_own_base64_passes_through_unchanged() -> None:
    data = {
        "data": [{"object": "embedding", "embedding": HALF_AND_MINUS_QUARTER, "index": 0}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }

    result = compat_answer(MISTRAL, data, ["a"], encoding_format="base64")

    assert result.body["data"][0]["embedding"] == HALF_AND_MINUS_QUARTER


def test_a_together_answer_without_usage_is_estimated_from_the_text() -> None:
    data = {
        "object": "list",
        "model": "BAAI/bge-large-en-v1.5",
        "data": [{"object": "embedding", "embedding": [0.5, -0.25], "index": 0}],
    }

    result = compat_answer(TOGETHER, data, ["hello world"])

    # "hello world": 11 characters -> 3 tokens at four characters a token.
    assert result.body == openai_list(TOGETHER, [[0.5, -0.25]], 3)
    assert result.usage == Usage(input_tokens=3, estimated=True)


def test_a_together_answer_with_usage_is_billed_as_reported() -> None:
    data = {"data": [{"object": "embedding", "embedding": [0.5], "index": 0}], "usage": {"prompt_tokens": 7}}

    assert compat_answer(TOGETHER, data, ["hello world"]).usage == Usage(input_tokens=7)


def test_floats_become_openais_base64_when_the_client_asks_for_it() -> None:
    data = {"data": [{"object": "embedding", "embedding": [0.5, -0.25], "index": 0}]}

    result = compat_answer(TOGETHER, data, ["hi"], encoding_format="base64")

    assert result.body["data"][0]["embedding"] == HALF_AND_MINUS_QUARTER


def test_base64_becomes_floats_when_the_client_asks_for_floats() -> None:
    assert encoded(HALF_AND_MINUS_QUARTER, "float", "mistral") == [0.5, -0.25]


def test_an_answer_with_fewer_vectors_than_texts_is_a_retryable_502() -> None:
    data = {"data": [{"object": "embedding", "embedding": [0.5], "index": 0}]}

    with pytest.raises(ProviderError) as caught:
        compat_answer(MISTRAL, data, ["a", "b"])

    assert (caught.value.status, caught.value.retryable, caught.value.message) == (
        502,
        True,
        "mistral sent a malformed answer.",
    )


def test_a_documented_cohere_answer_gives_its_float_vectors_and_billed_tokens() -> None:
    data = {
        "id": "da6e531f-54c6-4a73-bf92-f60566d8d753",
        "embeddings": {"float": [[0.016296387, -0.008354187], [-0.04608154, -0.037597656]]},
        "texts": ["hello", "goodbye"],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2}},
        "response_type": "embeddings_by_type",
    }

    vectors, usage = embed_answer(data, 2)

    assert vectors == [[0.016296387, -0.008354187], [-0.04608154, -0.037597656]]
    assert usage == Usage(input_tokens=2)


def test_cohere_billed_units_may_be_fractional() -> None:
    data = {"embeddings": {"float": [[0.1]]}, "meta": {"billed_units": {"input_tokens": 3.0}}}

    assert embed_answer(data, 1)[1] == Usage(input_tokens=3)


def test_a_cohere_answer_without_billed_units_leaves_usage_to_be_estimated() -> None:
    assert embed_answer({"embeddings": {"float": [[0.1]]}, "meta": {}}, 1)[1] is None


def test_a_gemini_embed_content_answer_gives_its_values() -> None:
    data = {"embedding": {"values": [0.013168517, -0.00871193]}}

    assert embed_values(data, 1, batch=False, provider="gemini") == [[0.013168517, -0.00871193]]


def test_a_gemini_batch_answer_gives_the_values_in_order() -> None:
    data = {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}

    assert embed_values(data, 2, batch=True, provider="gemini") == [[0.1, 0.2], [0.3, 0.4]]


def test_a_gemini_batch_answer_missing_a_vector_is_a_retryable_502() -> None:
    with pytest.raises(ProviderError) as caught:
        embed_values({"embeddings": [{"values": [0.1]}]}, 2, batch=True, provider="gemini")

    assert (caught.value.status, caught.value.retryable) == (502, True)


# --- the adapters against the fake upstream ----------------------------------------


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.reset()
    return fake_upstream


def on_fake(model: CatalogModel, fake: FakeUpstream) -> CatalogModel:
    return dataclasses.replace(model, base_url=f"{fake.url}{PATHS[model.provider]}")


async def embed_on_fake(model: CatalogModel, fake: FakeUpstream, request: dict[str, Any]) -> EmbeddingResult:
    adapter = adapter_for(model)
    assert adapter is not None
    return await adapter.embed(on_fake(model, fake), request)


async def failure_on_fake(model: CatalogModel, fake: FakeUpstream, request: dict[str, Any]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await embed_on_fake(model, fake, request)
    return caught.value


async def last_request(fake: FakeUpstream) -> dict[str, Any]:
    last: dict[str, Any] = (await upstream_stats(fake))["last_request"]
    return last


def key_digest(provider: str) -> str:
    return hashlib.sha256(f"test-{provider}-key".encode()).hexdigest()


async def test_mistral_is_posted_its_body_with_a_bearer(fake: FakeUpstream) -> None:
    await embed_on_fake(MISTRAL, fake, embedding(input=["a"], dimensions=4, encoding_format="base64", user="u"))

    last = await last_request(fake)
    assert (last["method"], last["path"]) == ("POST", "/mistral/v1/embeddings")
    assert last["headers"]["content-type"] == "application/json"
    assert last["credential_sha256"] == key_digest("mistral")
    assert last["body"] == {"model": "mistral-embed", "input": ["a"], "output_dimension": 4}


async def test_together_is_posted_its_body_with_a_bearer(fake: FakeUpstream) -> None:
    await embed_on_fake(TOGETHER, fake, embedding(encoding_format="base64", user="u"))

    last = await last_request(fake)
    assert (last["method"], last["path"]) == ("POST", "/together/v1/embeddings")
    assert last["credential_sha256"] == key_digest("together")
    assert last["body"] == {"model": "BAAI/bge-large-en-v1.5", "input": FOOD}


async def test_cohere_is_posted_its_embed_body_with_a_bearer(fake: FakeUpstream) -> None:
    await embed_on_fake(COHERE, fake, embedding(dimensions=256))

    last = await last_request(fake)
    assert (last["method"], last["path"]) == ("POST", "/cohere/v2/embed")
    assert last["headers"]["accept"] == "application/json"
    assert last["credential_sha256"] == key_digest("cohere")
    assert last["body"] == {
        "model": "embed-v4.0",
        "input_type": "search_document",
        "embedding_types": ["float"],
        "texts": [FOOD],
        "output_dimension": 256,
    }


async def test_gemini_embeds_a_string_with_embed_content_and_the_key_header(fake: FakeUpstream) -> None:
    await embed_on_fake(GEMINI, fake, embedding())

    last = await last_request(fake)
    assert (last["method"], last["path"]) == ("POST", "/gemini/v1beta/models/gemini-embedding-001:embedContent")
    assert last["credential_sha256"] == key_digest("gemini")
    assert "authorization" not in last["headers"]
    assert last["body"] == {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": FOOD}]}}


async def test_gemini_embeds_a_list_with_batch_embed_contents(fake: FakeUpstream) -> None:
    await embed_on_fake(GEMINI, fake, embedding(input=["a", "b"], dimensions=4))

    last = await last_request(fake)
    assert last["path"] == "/gemini/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert last["body"] == {
        "requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 4},
        ]
    }


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.provider)
async def test_the_fakes_vectors_come_back_in_openais_list(model: CatalogModel, fake: FakeUpstream) -> None:
    result = await embed_on_fake(model, fake, embedding(input=[FOOD, "hi"]))

    # 22 characters -> 6 tokens, "hi" -> 1: reported or estimated, the same figure.
    assert result.body == openai_list(model, [vector(FOOD, 8), vector("hi", 8)], 7)


@pytest.mark.parametrize(
    ("model", "estimated"),
    [(MISTRAL, False), (COHERE, False), (TOGETHER, True), (GEMINI, True)],
    ids=["mistral", "cohere", "together", "gemini"],
)
async def test_usage_is_the_providers_or_an_estimate(model: CatalogModel, estimated: bool, fake: FakeUpstream) -> None:
    result = await embed_on_fake(model, fake, embedding(input=[FOOD, "hi"]))

    assert result.usage == Usage(input_tokens=7, estimated=estimated)


@pytest.mark.parametrize("model", [MISTRAL, COHERE, GEMINI], ids=lambda m: m.provider)
async def test_dimensions_reach_the_provider(model: CatalogModel, fake: FakeUpstream) -> None:
    result = await embed_on_fake(model, fake, embedding(dimensions=256))

    assert result.body["data"][0]["embedding"] == vector(FOOD, 256)


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.provider)
async def test_base64_is_openais_float32_encoding_for_every_provider(model: CatalogModel, fake: FakeUpstream) -> None:
    result = await embed_on_fake(model, fake, embedding(encoding_format="base64"))

    raw = base64.b64decode(result.body["data"][0]["embedding"])
    assert struct.unpack("<8f", raw) == pytest.approx(vector(FOOD, 8), abs=1e-6)


async def test_more_texts_than_one_cohere_call_takes_go_in_runs(fake: FakeUpstream) -> None:
    texts = [f"text {i}" for i in range(97)]

    result = await embed_on_fake(COHERE, fake, embedding(input=texts))

    stats = await upstream_stats(fake)
    assert (stats["requests"], stats["completed"]) == (2, 2)
    assert stats["last_request"]["body"]["texts"] == ["text 96"]
    assert [item["index"] for item in result.body["data"]] == list(range(97))
    assert result.body["data"][96]["embedding"] == vector("text 96", 8)
    # "text N" is 6 characters (2 tokens), "text NN" 7 (2 tokens): 97 * 2.
    assert result.usage == Usage(input_tokens=194)


async def test_more_texts_than_one_gemini_batch_takes_go_in_runs(fake: FakeUpstream) -> None:
    texts = [f"text {i}" for i in range(101)]

    result = await embed_on_fake(GEMINI, fake, embedding(input=texts))

    stats = await upstream_stats(fake)
    assert (stats["requests"], stats["completed"]) == (2, 2)
    assert len(stats["last_request"]["body"]["requests"]) == 1
    assert result.body["data"][100] == {"object": "embedding", "index": 100, "embedding": vector("text 100", 8)}
    assert result.usage == Usage(input_tokens=202, estimated=True)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (MISTRAL, "mistral rejected the request: Injected fake bad request."),
        (TOGETHER, "together rejected the request: Injected fake client error (HTTP 400)."),
        (COHERE, "cohere rejected the request: invalid request: injected fake bad request."),
        (GEMINI, "gemini rejected the request: Request contains an invalid argument."),
    ],
    ids=["mistral", "together", "cohere", "gemini"],
)
async def test_a_400_is_the_clients_with_the_providers_reason(
    model: CatalogModel, message: str, fake: FakeUpstream
) -> None:
    error = await failure_on_fake(model, fake, embedding("[fake status=400] x"))

    assert (error.status, error.retryable, error.upstream_status, error.message) == (400, False, 400, message)


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.provider)
async def test_a_401_is_the_gateways_credentials_and_never_echoes_the_provider(
    model: CatalogModel, fake: FakeUpstream
) -> None:
    error = await failure_on_fake(model, fake, embedding("[fake status=401] x"))

    assert (error.status, error.retryable) == (502, False)
    assert error.message == f"{model.provider} refused the gateway's credentials (HTTP 401)."


async def test_geminis_api_key_invalid_400_is_the_gateways_credentials(fake: FakeUpstream) -> None:
    error = await failure_on_fake(GEMINI, fake, embedding("[fake gemini_error=api_key_invalid] x"))

    assert (error.status, error.retryable, error.upstream_status) == (502, False, 400)


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.provider)
async def test_a_429_is_retryable_with_the_providers_wait(model: CatalogModel, fake: FakeUpstream) -> None:
    error = await failure_on_fake(model, fake, embedding("[fake status=429 retry_after=7] x"))

    assert (error.status, error.retryable, error.retry_after) == (503, True, "7")


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("model", ALL, ids=lambda m: m.provider)
async def test_a_5xx_is_retryable(model: CatalogModel, status: int, fake: FakeUpstream) -> None:
    error = await failure_on_fake(model, fake, embedding(f"[fake status={status}] x"))

    assert (error.status, error.retryable, error.upstream_status) == (502, True, status)


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.provider)
async def test_a_malformed_answer_is_a_retryable_502(model: CatalogModel, fake: FakeUpstream) -> None:
    error = await failure_on_fake(model, fake, embedding("[fake malformed_json=1] x"))

    assert (error.status, error.retryable, error.message) == (502, True, f"{model.provider} sent a malformed answer.")


async def test_an_unreachable_provider_is_a_retryable_502() -> None:
    adapter = adapter_for(COHERE)
    assert adapter is not None

    with pytest.raises(ProviderError) as caught:
        await adapter.embed(dataclasses.replace(COHERE, base_url="http://127.0.0.1:9/cohere/v2"), embedding())

    assert (caught.value.status, caught.value.retryable) == (502, True)


# --- the fake's own rules ----------------------------------------------------------------


def fake_post(fake: FakeUpstream, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"authorization": "Bearer k", "x-goog-api-key": "k"} if headers is None else headers
    return httpx.post(f"{fake.url}{path}", content=orjson.dumps(body), headers=sent)


def test_the_fake_mistral_refuses_openai_only_fields_with_a_422_detail(fake: FakeUpstream) -> None:
    response = fake_post(fake, "/mistral/v1/embeddings", {"model": "m", "input": "x", "dimensions": 4})

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "extra_forbidden", "loc": ["body", "dimensions"], "msg": "Extra inputs are not permitted", "input": 4}
    ]


def test_the_fake_mistral_reports_usage_without_completion(fake: FakeUpstream) -> None:
    body = fake_post(fake, "/mistral/v1/embeddings", {"model": "m", "input": ["hi"]}).json()

    assert body["usage"] == {"prompt_tokens": 1, "total_tokens": 1, "completion_tokens": 0}
    assert body["data"] == [{"object": "embedding", "embedding": vector("hi", 8), "index": 0}]


def test_the_fake_together_reports_no_usage(fake: FakeUpstream) -> None:
    body = fake_post(fake, "/together/v1/embeddings", {"model": "m", "input": "hi"}).json()

    assert body == {
        "object": "list",
        "model": "m",
        "data": [{"object": "embedding", "embedding": vector("hi", 8), "index": 0}],
    }


def test_the_fake_together_answers_401_in_its_own_shape(fake: FakeUpstream) -> None:
    response = fake_post(fake, "/together/v1/embeddings", {"model": "m", "input": "hi"}, headers={})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_fake_cohere_requires_an_input_type(fake: FakeUpstream) -> None:
    response = fake_post(fake, "/cohere/v2/embed", {"model": "m", "embedding_types": ["float"], "texts": ["x"]})

    assert response.status_code == 400
    assert response.json()["message"] == "invalid request: input_type is required for embed models v3 and higher."


def test_the_fake_cohere_refuses_more_than_96_texts(fake: FakeUpstream) -> None:
    body = {"model": "m", "input_type": "search_query", "embedding_types": ["float"], "texts": ["x"] * 97}

    response = fake_post(fake, "/cohere/v2/embed", body)

    assert response.status_code == 400
    assert response.json()["message"] == "invalid request: total number of texts must be at most 96 - received 97"


def test_the_fake_cohere_answers_embeddings_by_type_with_billed_units(fake: FakeUpstream) -> None:
    body = {
        "model": "m",
        "input_type": "search_query",
        "embedding_types": ["float"],
        "texts": ["hi [fake latency_ms=1]"],
    }

    answer = fake_post(fake, "/cohere/v2/embed", body).json()

    assert answer["embeddings"] == {"float": [vector("hi ", 8)]}
    assert answer["response_type"] == "embeddings_by_type"
    assert answer["meta"] == {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 1}}


def test_the_fake_gemini_refuses_more_than_100_requests_in_a_batch(fake: FakeUpstream) -> None:
    item = {"model": "models/g", "content": {"parts": [{"text": "x"}]}}

    response = fake_post(fake, "/gemini/v1beta/models/g:batchEmbedContents", {"requests": [item] * 101})

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": 400,
        "message": "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n",
        "status": "INVALID_ARGUMENT",
    }


def test_the_fake_gemini_wants_each_batched_request_to_name_the_model(fake: FakeUpstream) -> None:
    body = {"requests": [{"content": {"parts": [{"text": "x"}]}}]}

    response = fake_post(fake, "/gemini/v1beta/models/g:batchEmbedContents", body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "* BatchEmbedContentsRequest.requests[0].model: must be models/g, as in the URL.\n"
    )


def test_the_fake_gemini_refuses_an_unknown_field(fake: FakeUpstream) -> None:
    body = {"content": {"parts": [{"text": "x"}]}, "dimensions": 4}

    response = fake_post(fake, "/gemini/v1beta/models/g:embedContent", body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        'Invalid JSON payload received. Unknown name "dimensions": Cannot find field.'
    )


def test_the_fake_gemini_wants_a_key(fake: FakeUpstream) -> None:
    response = fake_post(fake, "/gemini/v1beta/models/g:embedContent", {"content": {"parts": [{"text": "x"}]}}, {})

    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"


def test_the_fake_embeddings_routes_update_the_shared_stats(fake: FakeUpstream) -> None:
    fake_post(fake, "/mistral/v1/embeddings", {"model": "m", "input": "x"})
    fake_post(fake, "/together/v1/embeddings", {"model": "m", "input": "x [fake status=503]"})
    fake_post(fake, "/gemini/v1beta/models/g:embedContent", {"content": {"parts": [{"text": "x"}]}})

    counters = fake.stats()
    assert {k: counters[k] for k in ("requests", "completed", "errors")} == {"requests": 3, "completed": 2, "errors": 1}
    assert counters["last_request"]["path"] == "/gemini/v1beta/models/g:embedContent"


# --- the whole gateway, in process ------------------------------------------------------

proxy = pytest.mark.django_db(transaction=True)
SEEDED = [
    # provider, model, its input price per 1M tokens, whether its usage is estimated
    ("mistral", "mistral-embed", Decimal("0.10"), False),
    ("gemini", "gemini-embedding-001", Decimal("0.15"), True),
    ("cohere", "embed-v4.0", Decimal("0.12"), False),
    ("cohere", "embed-english-v3.0", Decimal("0.10"), False),
]
UPSTREAM_PATHS = {
    "mistral-embed": "/mistral/v1/embeddings",
    "gemini-embedding-001": "/gemini/v1beta/models/gemini-embedding-001:embedContent",
    "embed-v4.0": "/cohere/v2/embed",
    "embed-english-v3.0": "/cohere/v2/embed",
}


async def embed(body: Any, *, key: str) -> Reply:
    raw = orjson.dumps(body)
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


@proxy
@pytest.mark.parametrize(("provider", "model", "price", "estimated"), SEEDED)
async def test_the_gateway_embeds_through_the_provider_and_records_the_cost(
    provider: str, model: str, price: Decimal, estimated: bool, api_key: str, upstream: FakeUpstream
) -> None:
    reply = await embed({"model": model, "input": FOOD}, key=api_key)

    assert reply.status == 200, reply.body
    assert reply.json() == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vector(FOOD, 8)}],
        "model": model,
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    assert reply.headers["x-muxer-provider"] == provider
    assert reply.headers["x-muxer-model"] == model
    cost = Decimal(6) * price / Decimal(1_000_000)
    assert Decimal(reply.headers["x-muxer-cost-usd"]) == cost
    assert (await upstream_stats(upstream))["last_request"]["path"] == UPSTREAM_PATHS[model]
    [row] = await usage_rows()
    assert (row.provider, row.model, row.status, row.http_status, row.stream) == (
        provider,
        model,
        UsageStatus.OK,
        200,
        False,
    )
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (6, 0, estimated)
    assert row.cost_usd == cost


@proxy
async def test_the_gateway_gives_base64_from_a_provider_that_answers_floats(
    api_key: str, upstream: FakeUpstream
) -> None:
    reply = await embed(
        {"model": "gemini-embedding-001", "input": ["a", "b"], "encoding_format": "base64"}, key=api_key
    )

    assert reply.status == 200
    data = reply.json()["data"]
    assert struct.unpack("<8f", base64.b64decode(data[1]["embedding"])) == pytest.approx(vector("b", 8), abs=1e-6)
    sent = (await upstream_stats(upstream))["last_request"]
    assert sent["path"] == "/gemini/v1beta/models/gemini-embedding-001:batchEmbedContents"


@proxy
async def test_the_gateway_refuses_token_arrays_for_cohere_without_calling_it(
    api_key: str, upstream: FakeUpstream
) -> None:
    reply = await embed({"model": "embed-v4.0", "input": [[1, 2, 3]]}, key=api_key)

    assert reply.status == 400
    assert reply.error["type"] == "invalid_request_error"
    assert reply.error["message"].startswith("cohere embeds text only")
    assert (await upstream_stats(upstream))["requests"] == 0


@proxy
async def test_the_gateway_retries_a_failing_provider_then_records_the_failure(
    api_key: str, upstream: FakeUpstream
) -> None:
    reply = await embed({"model": "mistral-embed", "input": "[fake status=503] x"}, key=api_key)

    assert reply.status == 502
    assert (await upstream_stats(upstream))["requests"] == 2
    [row] = await usage_rows()
    assert (row.provider, row.status, row.input_tokens) == ("mistral", UsageStatus.ERROR, 0)


@proxy
async def test_the_gateway_passes_a_providers_rate_limit_wait_on(api_key: str, upstream: FakeUpstream) -> None:
    reply = await embed({"model": "embed-english-v3.0", "input": "[fake status=429 retry_after=0] x"}, key=api_key)

    assert reply.status == 503
    assert reply.headers["retry-after"] == "0"
    [row] = await usage_rows()
    assert (row.status, row.http_status) == (UsageStatus.ERROR, 503)


# --- the openai SDK against a live gateway ----------------------------------------------


def wait_for_usage(gateway: Gateway, *, count: int, timeout: float = 10.0) -> list[UsageRecord]:
    """Usage rows appear asynchronously: via the Redis stream (drained here) or a direct write."""
    deadline = time.monotonic() + timeout
    while True:
        if settings.REDIS_URL:
            with override_settings(MUXER_USAGE_STREAM=gateway.usage_stream):
                usage_drain(block_ms=100)
        rows = list(UsageRecord.objects.order_by("created_at"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_the_openai_sdk_embeds_through_cohere_on_a_live_gateway(gateway: Gateway, api_key: str) -> None:
    if settings.REDIS_URL:
        # The gateway outlives tests whose rows were flushed; their events must not be drained here.
        sync_redis().delete(gateway.usage_stream)
    client = openai.OpenAI(api_key=api_key, base_url=f"{gateway.url}/v1", max_retries=0)

    # The SDK asks for base64 unless told otherwise, and decodes it into floats.
    raw = client.embeddings.with_raw_response.create(model="embed-v4.0", input=[FOOD, "hi"])
    response = raw.parse()

    assert raw.headers["x-muxer-provider"] == "cohere"
    assert [item.index for item in response.data] == [0, 1]
    assert response.data[0].embedding == pytest.approx(vector(FOOD, 8), abs=1e-6)
    assert response.data[1].embedding == pytest.approx(vector("hi", 8), abs=1e-6)
    assert (response.model, response.usage.prompt_tokens, response.usage.total_tokens) == ("embed-v4.0", 7, 7)
    [row] = wait_for_usage(gateway, count=1)
    assert (row.provider, row.model, row.status, row.input_tokens, row.usage_estimated) == (
        "cohere",
        "embed-v4.0",
        UsageStatus.OK,
        7,
        False,
    )
    assert row.cost_usd == Decimal(raw.headers["x-muxer-cost-usd"]) == Decimal(7) * Decimal("0.12") / 1_000_000
