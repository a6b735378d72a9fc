"""Choosing the model for a request.

An explicit model name goes straight to that model. ``auto`` takes the
cheapest enabled, configured chat model the key may use that can serve the
request; the routing engine replaces this with its strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

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


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The model to call first, the ones to fall back to in order, and why."""

    model: CatalogModel
    reason: str
    fallbacks: tuple[CatalogModel, ...] = ()

    @property
    def chain(self) -> tuple[CatalogModel, ...]:
        return (self.model, *self.fallbacks)


# For `auto`, how many next-cheapest capable models (on other providers) back up the first.
AUTO_FALLBACKS = 2


def select_route(
    *, catalog: Catalog, identity: KeyIdentity, request: ChatRequest, requested_fallbacks: tuple[str, ...] = ()
) -> RouteDecision:
    """Pick the model, then the fallbacks: those the request names, else the catalog's, else (for
    ``auto``) the next cheapest capable models on other providers. Fallbacks the key may not use or
    that cannot serve the request are skipped, not errors."""
    prompt_tokens = estimate_prompt_tokens(request.payload["messages"])
    model = select_model(catalog=catalog, identity=identity, request=request)

    def usable(candidate: CatalogModel | None) -> bool:
        return (
            candidate is not None
            and candidate.name != model.name
            and candidate.kind == ModelKind.CHAT
            and servable(candidate)
            and identity.may_use(candidate.name)
            and _unfit_reason(candidate, request, prompt_tokens) is None
        )

    names = requested_fallbacks or model.fallbacks
    fallbacks: list[CatalogModel] = []
    for name in names:
        candidate = catalog.get(name)
        if usable(candidate) and candidate not in fallbacks:
            assert candidate is not None
            fallbacks.append(candidate)
    if not names and request.model == AUTO:
        others = sorted(
            (m for m in catalog.chat_models() if m.provider != model.provider and usable(m)),
            key=_price_key,
        )
        for candidate in others:
            if all(candidate.provider != f.provider for f in fallbacks):
                fallbacks.append(candidate)
            if len(fallbacks) == AUTO_FALLBACKS:
                break
    reason = "auto:cheapest-capable" if request.model == AUTO else "explicit"
    return RouteDecision(model=model, reason=reason, fallbacks=tuple(fallbacks))


def _price_key(model: CatalogModel) -> tuple[Decimal, str]:
    return (model.input_price_per_mtok_usd + model.output_price_per_mtok_usd, model.name)


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
        return min(candidates, key=_price_key)

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


def select_embedding_model(*, catalog: Catalog, identity: KeyIdentity, name: str) -> CatalogModel:
    model = catalog.get(name)
    if model is None:
        raise model_not_found(name)
    if model.kind != ModelKind.EMBEDDING:
        raise invalid_request(f"The model '{name}' is a chat model; use an embedding model.", param="model")
    if not identity.may_use(model.name):
        raise permission_denied(f"This API key may not use the model '{model.name}'.")
    if not servable(model):
        raise APIError(
            400,
            f"The model '{model.name}' is not available on this gateway: '{model.provider}' is not configured.",
            code="model_not_available",
            param="model",
        )
    return model
