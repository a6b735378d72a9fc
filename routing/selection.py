"""Choosing the model for a request.

An explicit model name goes straight to that model, checked against the key's
policy and the request's needs. ``auto`` and the ``muxer/<strategy>`` aliases
go to a router (routing/strategies), which picks the model.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from scipy.sparse import csr_matrix

from accounts.auth import KeyIdentity
from muxer_project.errors import APIError, invalid_request, model_not_found, permission_denied
from providers.catalog import Catalog, CatalogModel
from providers.models import ModelKind
from providers.resilience import breaker, latency

from .schema import STRATEGY_ALIASES, ChatRequest, RoutingOptions
from .semantic import SemanticRouterModel, compact_from_matrix, default_semantic_model, prompt_features
from .strategies import RoutingContext, decide
from .strategies.base import (
    PromptScorer,
    RouteDecision,
    estimated_cost,
    expected_output_tokens,
    model_cost,
    output_bound,
    permitted,
    servable,
    unfit_reason,
)

AUTO = "auto"
DEFAULT_STRATEGY = "hybrid"
# Only so much of a very long prompt is scored; the rest adds time, not signal.
MAX_SCORED_CHARS = 12_000

__all__ = ["AUTO", "RouteDecision", "select_embedding_model", "select_model", "select_route", "servable"]


def prompt_text(request: ChatRequest) -> str:
    """The text a router reads: the last user turn (its text parts), ending at most MAX_SCORED_CHARS long."""
    for message in reversed(request.payload["messages"]):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content[-MAX_SCORED_CHARS:]
        if isinstance(content, list):
            parts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
            return "\n".join(parts)[-MAX_SCORED_CHARS:]
    return ""


class PromptScore:
    """The semantic model, reading the prompt once for both its score and the usage record's features."""

    def __init__(self, model: SemanticRouterModel) -> None:
        self.model = model
        self.features: csr_matrix | None = None

    def score(self, text: str) -> float:
        if self.features is None:
            self.features = prompt_features(text)
        return self.model.score_features(self.features)

    def compact(self, text: str) -> list[list[float]]:
        """The prompt's hashed features (no text) as stored for retraining."""
        return compact_from_matrix(self.features if self.features is not None else prompt_features(text))


def routing_context(
    *,
    catalog: Catalog,
    identity: KeyIdentity,
    request: ChatRequest,
    semantic: PromptScorer,
    options: RoutingOptions,
) -> RoutingContext:
    """What a router decides from. The strategy comes from the model alias, else the request's options, else the
    key's (or its organization's) policy; a cost cap from both the body and the header takes the lower."""
    strategy = (
        STRATEGY_ALIASES.get(request.model)
        or request.options.strategy
        or options.strategy
        or identity.strategy
        or DEFAULT_STRATEGY
    )
    caps = [c for c in (request.options.max_cost_usd, options.max_cost_usd) if c is not None]
    return RoutingContext(
        catalog=catalog,
        identity=identity,
        request=request,
        strategy=strategy,
        preference=identity.preference or "cost",
        prompt_tokens=request.prompt_tokens,
        prompt_text=prompt_text(request),
        semantic=semantic,
        max_cost_usd=min(caps) if caps else None,
        quality_floor=request.options.quality_floor or options.quality_floor or 1,
        healthy=lambda model: not breaker.known_unavailable(model),
        latency_ms=latency.get,
    )


def select_route(
    *,
    catalog: Catalog,
    identity: KeyIdentity,
    request: ChatRequest,
    semantic: PromptScorer | None = None,
    options: RoutingOptions | None = None,
    requested_fallbacks: tuple[str, ...] = (),
) -> RouteDecision:
    """A routed request (``auto`` or a ``muxer/<strategy>`` alias) goes to its router; an explicit model goes
    where it names, backed by the fallbacks the request names, else the catalog's."""
    options = options or RoutingOptions()
    if request.routed:
        if semantic is None:
            semantic = default_semantic_model()
        ctx = routing_context(catalog=catalog, identity=identity, request=request, semantic=semantic, options=options)
        decision = decide(ctx)
        if requested_fallbacks:
            named = _named_fallbacks(catalog, identity, request, decision.model, requested_fallbacks)
            decision = replace(decision, fallbacks=named)
        return decision
    return _explicit_route(catalog, identity, request, options, requested_fallbacks)


def _explicit_route(
    catalog: Catalog,
    identity: KeyIdentity,
    request: ChatRequest,
    options: RoutingOptions,
    requested_fallbacks: tuple[str, ...],
) -> RouteDecision:
    model = select_model(catalog=catalog, identity=identity, request=request)
    caps = [c for c in (request.options.max_cost_usd, options.max_cost_usd) if c is not None]
    fallbacks = _named_fallbacks(catalog, identity, request, model, requested_fallbacks or model.fallbacks)
    if not caps:
        cost = estimated_cost(model, request.prompt_tokens, expected_output_tokens(model, request))
        return RouteDecision(model=model, reason="explicit", estimated_cost_usd=cost, fallbacks=fallbacks)
    ctx = routing_context(catalog=catalog, identity=identity, request=request, semantic=_NO_SCORER, options=options)
    bound = output_bound(model, ctx)
    if bound is None:
        raise APIError(
            400,
            f"The model '{model.name}' cannot answer this request within the cost cap of ${min(caps):f}.",
            code="cost_cap_exceeded",
            param="model",
        )
    ctx.output_bounds[model.name] = bound
    return RouteDecision(
        model=model,
        reason="explicit",
        estimated_cost_usd=model_cost(model, ctx),
        fallbacks=tuple(f for f in fallbacks if output_bound(f, ctx) is not None),
        max_output_tokens=bound,
        max_cost_usd=ctx.max_cost_usd,
    )


class _NoScorer:
    def score(self, text: str) -> float:
        return 0.0


_NO_SCORER = _NoScorer()


def _named_fallbacks(
    catalog: Catalog, identity: KeyIdentity, request: ChatRequest, model: CatalogModel, names: tuple[str, ...]
) -> tuple[CatalogModel, ...]:
    """The named fallbacks that can serve the request; those the key may not use or that cannot serve it are
    skipped, not errors."""
    prompt_tokens = request.prompt_tokens
    fallbacks: list[CatalogModel] = []
    for name in names:
        candidate = catalog.get(name)
        if (
            candidate is not None
            and candidate.name != model.name
            and candidate.kind == ModelKind.CHAT
            and servable(candidate)
            and permitted(candidate, identity)
            and unfit_reason(candidate, request, prompt_tokens) is None
            and candidate not in fallbacks
        ):
            fallbacks.append(candidate)
    return tuple(fallbacks)


def _price_key(model: CatalogModel) -> tuple[Decimal, str]:
    return (model.input_price_per_mtok_usd + model.output_price_per_mtok_usd, model.name)


def select_model(*, catalog: Catalog, identity: KeyIdentity, request: ChatRequest) -> CatalogModel:
    """The model an explicit request names, checked; for ``auto`` without a router, the cheapest that can serve."""
    prompt_tokens = request.prompt_tokens
    if request.routed:
        candidates = [
            m
            for m in catalog.chat_models()
            if servable(m) and permitted(m, identity) and unfit_reason(m, request, prompt_tokens) is None
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
    if not permitted(model, identity):
        raise permission_denied(f"This API key may not use the model '{model.name}'.")
    if not servable(model):
        raise APIError(
            400,
            f"The model '{model.name}' is not available on this gateway: '{model.provider}' is not configured.",
            code="model_not_available",
            param="model",
        )
    unfit = unfit_reason(model, request, prompt_tokens)
    if unfit is not None:
        raise invalid_request(unfit[1], param=unfit[0])
    return model


def select_embedding_model(*, catalog: Catalog, identity: KeyIdentity, name: str) -> CatalogModel:
    model = catalog.get(name)
    if model is None:
        raise model_not_found(name)
    if model.kind != ModelKind.EMBEDDING:
        raise invalid_request(f"The model '{name}' is a chat model; use an embedding model.", param="model")
    if not permitted(model, identity):
        raise permission_denied(f"This API key may not use the model '{model.name}'.")
    if not servable(model):
        raise APIError(
            400,
            f"The model '{model.name}' is not available on this gateway: '{model.provider}' is not configured.",
            code="model_not_available",
            param="model",
        )
    return model
