"""What every router shares: the decision it returns, what it decides from, and the candidate models.

A router is pure CPU. Everything it needs that lives elsewhere (the catalog,
the key's policy, the semantic model, which circuits are open, how fast each
model has been) is gathered into a :class:`RoutingContext` before it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Protocol

from django.conf import settings

from accounts.auth import KeyIdentity
from billing.pricing import ONE_MILLION as MILLION
from providers.adapters import adapter_for
from providers.catalog import Catalog, CatalogModel
from providers.models import ModelKind

from ..schema import ChatRequest

TIER_NAMES = {1: "economy", 2: "standard", 3: "premium"}
TOP_TIER = 3
PREFERENCES = ("cost", "quality", "speed")


class PromptScorer(Protocol):
    """The semantic model: how likely the cheap model is to fail on a prompt (0..1)."""

    def score(self, text: str) -> float: ...


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The model to call first and why, what it should cost, and what comes after it.

    ``fallbacks`` take over when a provider fails; ``escalations`` (a cascade)
    take over when the answer is judged too weak.
    """

    model: CatalogModel
    reason: str
    strategy: str = "explicit"
    confidence: float = 1.0
    estimated_cost_usd: Decimal = Decimal(0)
    fallbacks: tuple[CatalogModel, ...] = ()
    escalations: tuple[CatalogModel, ...] = ()
    score: float | None = None
    # Set when a cost cap must bound the answer: the max_tokens to send.
    max_output_tokens: int | None = None
    # The request's cost cap, which bounds every attempt together (fallbacks and cascade steps).
    max_cost_usd: Decimal | None = None
    prompt_features: list[list[float]] | None = None
    # The heuristic's score of the prompt, when the router computed it.
    complexity: float | None = None

    @property
    def provider(self) -> str:
        return self.model.provider

    @property
    def chain(self) -> tuple[CatalogModel, ...]:
        return (self.model, *self.fallbacks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "route.decision",
            "strategy": self.strategy,
            "model": self.model.name,
            "provider": self.model.provider,
            "quality_tier": TIER_NAMES.get(self.model.quality_tier, str(self.model.quality_tier)),
            "reason": self.reason,
            "confidence": round(self.confidence, 3),
            "score": None if self.score is None else round(self.score, 4),
            "estimated_cost_usd": format(self.estimated_cost_usd, "f"),
            "max_output_tokens": self.max_output_tokens,
            "max_cost_usd": None if self.max_cost_usd is None else format(self.max_cost_usd, "f"),
            "fallbacks": [{"model": m.name, "provider": m.provider} for m in self.fallbacks],
            "cascade": [
                {"model": m.name, "provider": m.provider, "quality_tier": TIER_NAMES.get(m.quality_tier)}
                for m in (self.model, *self.escalations)
            ]
            if self.escalations
            else [],
        }


@dataclass(slots=True)
class RoutingContext:
    catalog: Catalog
    identity: KeyIdentity
    request: ChatRequest
    strategy: str
    preference: str
    prompt_tokens: int
    prompt_text: str
    semantic: PromptScorer
    max_cost_usd: Decimal | None = None
    quality_floor: int = 1
    healthy: Callable[[CatalogModel], bool] = lambda _model: True
    latency_ms: Callable[[CatalogModel], float | None] = lambda _model: None
    # Filled as candidates are checked: the max_tokens a cost cap leaves each model.
    output_bounds: dict[str, int] = field(default_factory=dict)


def servable(model: CatalogModel) -> bool:
    """Whether the gateway can call this model: its provider has credentials and an adapter."""
    return model.configured and adapter_for(model) is not None


def unfit_reason(model: CatalogModel, request: ChatRequest, prompt_tokens: int) -> tuple[str, str] | None:
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


def permitted(model: CatalogModel, identity: KeyIdentity) -> bool:
    """The key's and the organization's policy allow this model and its provider."""
    return identity.may_use(model.name) and identity.allows_provider(model.provider)


def expected_output_tokens(model: CatalogModel, request: ChatRequest) -> int:
    if request.max_output_tokens is not None:
        return request.max_output_tokens
    return min(model.max_output_tokens, settings.MUXER_ROUTER_EXPECTED_OUTPUT_TOKENS)


def estimated_cost(model: CatalogModel, prompt_tokens: int, output_tokens: int) -> Decimal:
    return (prompt_tokens * model.input_price_per_mtok_usd + output_tokens * model.output_price_per_mtok_usd) / MILLION


def capped_output_tokens(model: CatalogModel, prompt_tokens: int, cap_usd: Decimal, wanted: int | None) -> int | None:
    """The most output tokens ``model`` may write for the answer to cost at most ``cap_usd``, or None if no useful
    answer fits.

    With ``max_tokens`` set (``wanted``), its worst case must fit the cap. Without it,
    the gateway sends the largest ``max_tokens`` that keeps the worst case within
    the cap, if that leaves room for a useful answer.
    """
    room = cap_usd - prompt_tokens * model.input_price_per_mtok_usd / MILLION
    if room < 0:
        return None
    if model.output_price_per_mtok_usd <= 0:
        tokens = model.max_output_tokens
    else:
        tokens = int((room * MILLION / model.output_price_per_mtok_usd).to_integral_value(rounding=ROUND_FLOOR))
    if wanted is not None:
        return wanted if wanted <= tokens else None
    tokens = min(tokens, model.max_output_tokens)
    return tokens if tokens >= settings.MUXER_ROUTER_MIN_OUTPUT_TOKENS else None


def output_bound(model: CatalogModel, ctx: RoutingContext) -> int | None:
    """Under the request's cost cap, the max_tokens for ``model`` (None: it cannot fit); without a cap, the
    request's own max_tokens."""
    if ctx.max_cost_usd is None:
        return ctx.request.max_output_tokens
    return capped_output_tokens(model, ctx.prompt_tokens, ctx.max_cost_usd, ctx.request.max_output_tokens)


def candidates(ctx: RoutingContext) -> list[CatalogModel]:
    """The chat models this request may be routed to, whatever the strategy."""
    found = []
    for model in ctx.catalog.chat_models():
        if model.kind != ModelKind.CHAT or model.quality_tier < ctx.quality_floor:
            continue
        if not (servable(model) and permitted(model, ctx.identity) and ctx.healthy(model)):
            continue
        if unfit_reason(model, ctx.request, ctx.prompt_tokens) is not None:
            continue
        bound = output_bound(model, ctx)
        if ctx.max_cost_usd is not None:
            if bound is None:
                continue
            ctx.output_bounds[model.name] = bound
        found.append(model)
    return found


def model_cost(model: CatalogModel, ctx: RoutingContext) -> Decimal:
    """The expected cost of one call: the prompt, and the expected answer length within any cap's bound."""
    output = expected_output_tokens(model, ctx.request)
    bound = ctx.output_bounds.get(model.name)
    if bound is not None:
        output = min(output, bound)
    return estimated_cost(model, ctx.prompt_tokens, output)


def ranked(models: list[CatalogModel], ctx: RoutingContext) -> list[CatalogModel]:
    """Models in the order the preference favours: cheapest, priciest (a proxy for most capable), or fastest seen."""
    if ctx.preference == "quality":
        return sorted(models, key=lambda m: (-model_cost(m, ctx), m.name))
    if ctx.preference == "speed":

        def speed_key(m: CatalogModel) -> tuple[float, Decimal, str]:
            seen = ctx.latency_ms(m)
            return (seen if seen is not None else float("inf"), model_cost(m, ctx), m.name)

        return sorted(models, key=speed_key)
    return sorted(models, key=lambda m: (model_cost(m, ctx), m.name))


def tier_for(score: float, thresholds: tuple[float, ...]) -> int:
    """1 below the first threshold, 2 below the second, else 3."""
    tier = 1
    for threshold in thresholds:
        if score >= threshold:
            tier += 1
    return min(tier, TOP_TIER)


def confidence_for(score: float, thresholds: tuple[float, ...]) -> float:
    """How far the score sits from the nearest tier boundary: 0.5 on a boundary, 1.0 far from it."""
    distance = min(abs(score - t) for t in thresholds) if thresholds else 1.0
    return 0.5 + 0.5 * min(1.0, distance / 0.25)


def shifted(thresholds: tuple[float, ...], preference: str) -> tuple[float, ...]:
    """A quality preference escalates sooner; the others leave the thresholds alone."""
    if preference == "quality":
        return tuple(max(0.0, t - 0.1) for t in thresholds)
    return thresholds


def in_tier(pool: list[CatalogModel], tier: int, ctx: RoutingContext) -> tuple[int, list[CatalogModel]]:
    """The ranked models of ``tier``; when it has none, the nearest tier above, then below."""
    order = [tier, *range(tier + 1, TOP_TIER + 1), *range(tier - 1, 0, -1)]
    for wanted in order:
        found = [m for m in pool if m.quality_tier == wanted]
        if found:
            return wanted, ranked(found, ctx)
    return tier, []


# For a routed request, how many models on other providers back up the first.
ROUTED_FALLBACKS = 2


def fallbacks_for(model: CatalogModel, pool: list[CatalogModel], ctx: RoutingContext) -> tuple[CatalogModel, ...]:
    """Back-ups on other providers: the same tier first, then the tiers above, then below."""
    order = [model.quality_tier, *range(model.quality_tier + 1, TOP_TIER + 1), *range(model.quality_tier - 1, 0, -1)]
    chosen: list[CatalogModel] = []
    for tier in order:
        for other in ranked([m for m in pool if m.quality_tier == tier], ctx):
            if other.provider != model.provider and all(other.provider != c.provider for c in chosen):
                chosen.append(other)
            if len(chosen) == ROUTED_FALLBACKS:
                return tuple(chosen)
    return tuple(chosen)
