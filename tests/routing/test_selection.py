"""``select_model``: an explicit model, or ``auto`` (the cheapest model that can serve the request)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import orjson
import pytest

from accounts.auth import KeyIdentity
from muxer_project.errors import APIError
from providers.catalog import Catalog, CatalogModel
from providers.models import ModelKind
from routing.schema import ChatRequest, parse_chat_request
from routing.selection import select_model

TOOL = {"type": "function", "function": {"name": "get_weather"}}
IMAGE = [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]


def model(name: str, price: str, **overrides: Any) -> CatalogModel:
    """A capable, configured chat model costing ``price`` per 1M tokens in and out."""
    fields: dict[str, Any] = {
        "name": name,
        "kind": ModelKind.CHAT,
        "provider": "fake",
        "wire_format": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "credential": "",
        "input_price_per_mtok_usd": Decimal(price),
        "output_price_per_mtok_usd": Decimal(price),
        "cached_input_price_per_mtok_usd": None,
        "context_window": 1_000,
        "max_output_tokens": 100,
        "supports_streaming": True,
        "supports_tools": True,
        "supports_vision": True,
        "supports_json_mode": True,
        "created": 0,
    }
    fields.update(overrides)
    return CatalogModel(**fields)


def catalog(*models: CatalogModel) -> Catalog:
    return Catalog(models={m.name: m for m in models})


def identity(*, allowed: tuple[str, ...] = (), org_allowed: tuple[str, ...] = ()) -> KeyIdentity:
    return KeyIdentity(
        key_id=1,
        prefix="mm_live_abcdefgh",
        digest="0" * 64,
        organization_id=1,
        team_id=None,
        user_id=None,
        allowed_models=frozenset(allowed),
        org_allowed_models=frozenset(org_allowed),
        expires_at=None,
        revoked=False,
    )


def request(model_name: str = "auto", content: Any = "hi", **fields: Any) -> ChatRequest:
    body = {"model": model_name, "messages": [{"role": "user", "content": content}], **fields}
    return parse_chat_request(orjson.dumps(body))


def choose(models: Catalog, req: ChatRequest, key: KeyIdentity | None = None) -> str:
    return select_model(catalog=models, identity=key or identity(), request=req).name


def refusal(models: Catalog, req: ChatRequest, key: KeyIdentity | None = None) -> APIError:
    with pytest.raises(APIError) as caught:
        select_model(catalog=models, identity=key or identity(), request=req)
    return caught.value


CHEAP, MID, DEAR = model("cheap", "0.10"), model("mid", "1.00"), model("dear", "10.00")


# --- auto -------------------------------------------------------------------------


def test_auto_picks_the_cheapest_model() -> None:
    assert choose(catalog(DEAR, MID, CHEAP), request()) == "cheap"


def test_auto_breaks_a_price_tie_by_name() -> None:
    assert choose(catalog(model("b-model", "1"), model("a-model", "1")), request()) == "a-model"


def test_auto_skips_a_model_without_tools_when_the_request_has_tools() -> None:
    models = catalog(replace(CHEAP, supports_tools=False), MID, DEAR)

    assert choose(models, request(tools=[TOOL])) == "mid"


def test_auto_skips_a_model_without_vision_when_the_request_has_images() -> None:
    models = catalog(replace(CHEAP, supports_vision=False), MID, DEAR)

    assert choose(models, request(content=IMAGE)) == "mid"


def test_auto_skips_a_model_without_json_mode_when_json_is_asked_for() -> None:
    models = catalog(replace(CHEAP, supports_json_mode=False), MID, DEAR)

    assert choose(models, request(response_format={"type": "json_object"})) == "mid"


def test_auto_keeps_a_model_without_json_mode_for_plain_text() -> None:
    models = catalog(replace(CHEAP, supports_json_mode=False), MID)

    assert choose(models, request(response_format={"type": "text"})) == "cheap"


def test_auto_skips_a_model_without_streaming_for_a_stream() -> None:
    models = catalog(replace(CHEAP, supports_streaming=False), MID)

    assert choose(models, request(stream=True)) == "mid"


def test_auto_skips_a_model_whose_output_limit_is_too_small() -> None:
    models = catalog(replace(CHEAP, max_output_tokens=50), MID)

    assert choose(models, request(max_tokens=80)) == "mid"


def test_auto_skips_a_model_whose_context_window_is_too_small() -> None:
    models = catalog(replace(CHEAP, context_window=100), MID)

    # 800 characters is about 200 tokens, plus 4 for the message.
    assert choose(models, request(content="x" * 800)) == "mid"


def test_auto_respects_the_keys_allowed_models() -> None:
    assert choose(catalog(CHEAP, MID, DEAR), request(), identity(allowed=("dear", "mid"))) == "mid"


def test_auto_respects_the_organizations_allowed_models() -> None:
    assert choose(catalog(CHEAP, MID, DEAR), request(), identity(org_allowed=("dear",))) == "dear"


def test_auto_skips_a_provider_without_credentials() -> None:
    assert choose(catalog(replace(CHEAP, credential=None), MID), request()) == "mid"


def test_auto_skips_a_wire_format_without_an_adapter() -> None:
    assert choose(catalog(replace(CHEAP, wire_format="carrier-pigeon"), MID), request()) == "mid"


def test_auto_skips_embedding_models() -> None:
    assert choose(catalog(replace(CHEAP, kind=ModelKind.EMBEDDING), MID), request()) == "mid"


def test_auto_refuses_when_no_model_can_serve_the_request() -> None:
    models = catalog(replace(CHEAP, supports_tools=False), replace(MID, supports_tools=False))

    error = refusal(models, request(tools=[TOOL]))

    assert (error.status, error.code, error.param) == (400, "no_model_available", "model")


# --- an explicit model --------------------------------------------------------------


def test_an_explicit_model_is_used_even_when_a_cheaper_one_exists() -> None:
    assert choose(catalog(CHEAP, DEAR), request("dear")) == "dear"


def test_an_unknown_model_is_404() -> None:
    error = refusal(catalog(CHEAP), request("nope"))

    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert error.message == "The model 'nope' does not exist."


def test_an_embedding_model_is_not_a_chat_model() -> None:
    error = refusal(catalog(replace(CHEAP, kind=ModelKind.EMBEDDING)), request("cheap"))

    assert (error.status, error.code) == (404, "model_not_found")


def test_a_model_the_key_may_not_use_is_403() -> None:
    error = refusal(catalog(CHEAP, DEAR), request("dear"), identity(allowed=("cheap",)))

    assert (error.status, error.code) == (403, "permission_denied")
    assert error.message == "This API key may not use the model 'dear'."


def test_a_model_the_organization_may_not_use_is_403() -> None:
    error = refusal(catalog(CHEAP, DEAR), request("dear"), identity(org_allowed=("cheap",)))

    assert (error.status, error.code) == (403, "permission_denied")


def test_a_model_whose_provider_has_no_credentials_is_400() -> None:
    error = refusal(catalog(replace(CHEAP, credential=None)), request("cheap"))

    assert (error.status, error.code, error.param) == (400, "model_not_available", "model")


def test_max_tokens_above_the_models_output_limit_is_400() -> None:
    error = refusal(catalog(CHEAP), request("cheap", max_tokens=101))

    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "max_tokens")
    assert error.message == "'max_tokens' is 101, but the model 'cheap' writes at most 100 tokens."


def test_max_tokens_at_the_models_output_limit_is_fine() -> None:
    assert choose(catalog(CHEAP), request("cheap", max_tokens=100)) == "cheap"


def test_a_prompt_beyond_the_context_window_is_400() -> None:
    # 3,600 characters -> 900 tokens, +4 for the message, +100 asked for: 1,004 > 1,000.
    error = refusal(catalog(CHEAP), request("cheap", content="x" * 3_600, max_tokens=100))

    assert (error.status, error.param) == (400, "messages")
    assert error.message == ("The request needs about 1004 tokens, but the model 'cheap' has a context window of 1000.")


def test_a_prompt_that_just_fits_the_context_window_is_fine() -> None:
    assert choose(catalog(CHEAP), request("cheap", content="x" * 3_584, max_tokens=100)) == "cheap"


def test_an_explicit_model_without_tools_is_400_naming_tools() -> None:
    error = refusal(catalog(replace(CHEAP, supports_tools=False)), request("cheap", tools=[TOOL]))

    assert (error.status, error.param) == (400, "tools")
