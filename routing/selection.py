"""Choosing the model for a request.

An explicit model name goes straight to that model. ``auto`` takes the
cheapest enabled, configured chat model the key may use that can serve the
request; the routing engine replaces this with its strategies.
"""

from __future__ import annotations

from accounts.auth import KeyIdentity
from billing.tokens import estimate_prompt_tokens
from muxer_project.errors import APIError, invalid_request, model_not_found, permission_denied
from providers.adapters import adapter_for
from providers.catalog import Catalog, CatalogModel
from providers.models import ModelKind

from .schema import ChatRequest

AUTO = "auto"


def servable(model: CatalogModel) -> bool:
    """Whether the gateway can call this model: its provider has credentials and an adapter."""
    return model.configured and adapter_for(model) is not None


def _unfit_reason(model: CatalogModel, request: ChatRequest, prompt_tokens: int) -> tuple[str, str] | None:
    """Why ``model`` cannot serve ``request``, as (param, message), or None if it can."""
    if request.stream and not model.supports_streaming:
        return "stream", f"The model '{model.name}' does not support streaming."
    if request.has_tools and not model.supports_tools:
        return "tools", f"The model '{model.name}' does not support tools."
    if request.has_images and not model.supports_vision:
        return "messages", f"The model '{model.name}' does not accept images."
    if request.wants_json and not model.supports_json_mode:
        return "response_format", f"The model '{model.name}' does not support JSON output."
    if request.max_output_tokens is not None and request.max_output_tokens > model.max_output_tokens:
        name = "max_completion_tokens" if "max_completion_tokens" in request.payload else "max_tokens"
        return name, (
            f"'{name}' is {request.max_output_tokens}, but the model '{model.name}' "
            f"writes at most {model.max_output_tokens} tokens."
        )
    if prompt_tokens + (request.max_output_tokens or 0) > model.context_window:
        return "messages", (
            f"The request needs about {prompt_tokens + (request.max_output_tokens or 0)} tokens, but the "
            f"model '{model.name}' has a context window of {model.context_window}."
        )
    return None


def select_model(*, catalog: Catalog, identity: KeyIdentity, request: ChatRequest) -> CatalogModel:
    prompt_tokens = estimate_prompt_tokens(request.payload["messages"])
    if request.model == AUTO:
        candidates = [
            m
            for m in catalog.chat_models()
            if servable(m) and identity.may_use(m.name) and _unfit_reason(m, request, prompt_tokens) is None
        ]
        if not candidates:
            raise APIError(
                400,
                "No enabled model that this key may use can serve this request.",
                code="no_model_available",
                param="model",
            )
        return min(candidates, key=lambda m: (m.input_price_per_mtok_usd + m.output_price_per_mtok_usd, m.name))

    model = catalog.get(request.model)
    if model is None or model.kind != ModelKind.CHAT:
        raise model_not_found(request.model)
    if not identity.may_use(model.name):
        raise permission_denied(f"This API key may not use the model '{model.name}'.")
    if not servable(model):
        raise APIError(
            400,
            f"The model '{model.name}' is not available on this gateway: '{model.provider}' is not configured.",
            code="model_not_available",
            param="model",
        )
    unfit = _unfit_reason(model, request, prompt_tokens)
    if unfit is not None:
        raise invalid_request(unfit[1], param=unfit[0])
    return model
