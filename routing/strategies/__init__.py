"""The routers: heuristic, semantic, cascade and hybrid, behind one ``decide``.

Each turns a :class:`RoutingContext` into a :class:`RouteDecision` without I/O:
a score for how hard the prompt is, a quality tier from the score, and the
model the preference favours within that tier among those the request may use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal

from django.conf import settings

from muxer_project.errors import APIError
from providers.catalog import CatalogModel

from .base import (
    TIER_NAMES,
    TOP_TIER,
    RouteDecision,
    RoutingContext,
    candidates,
    confidence_for,
    fallbacks_for,
    in_tier,
    model_cost,
    shifted,
    tier_for,
)
from .heuristic import assess

__all__ = ["STRATEGIES", "RouteDecision", "RoutingContext", "decide"]


def _single(
    ctx: RoutingContext, pool: list[CatalogModel], tier: int, *, score: float, confidence: float, why: str
) -> RouteDecision:
    served_tier, ranked = in_tier(pool, tier, ctx)
    model = ranked[0]
    where = TIER_NAMES[served_tier] if served_tier == tier else f"{TIER_NAMES[served_tier]} (no {TIER_NAMES[tier]})"
    return RouteDecision(
        model=model,
        reason=f"{ctx.strategy}: {why} -> {where}; {_pick_words(ctx)}",
        strategy=ctx.strategy,
        confidence=confidence,
        estimated_cost_usd=model_cost(model, ctx),
        fallbacks=fallbacks_for(model, pool, ctx),
        score=score,
        max_output_tokens=ctx.output_bounds.get(model.name) if ctx.max_cost_usd is not None else None,
    )


def _cascade(
    ctx: RoutingContext, pool: list[CatalogModel], start: int, *, score: float | None, why: str
) -> RouteDecision:
    """One model per tier from ``start`` upwards, as far as the cost cap allows for the whole cascade."""
    steps: list[CatalogModel] = []
    total = Decimal(0)
    for tier in range(start, TOP_TIER + 1):
        found = [m for m in pool if m.quality_tier == tier]
        if not found:
            continue
        _, ranked = in_tier(found, tier, ctx)
        step = ranked[0]
        cost = model_cost(step, ctx)
        if steps and ctx.max_cost_usd is not None and total + cost > ctx.max_cost_usd:
            break
        steps.append(step)
        total += cost
    if not steps:  # nothing at or above the start tier: the best there is below it
        _, ranked = in_tier(pool, start, ctx)
        steps = [ranked[0]]
    first = steps[0]
    path = " > ".join(TIER_NAMES[m.quality_tier] for m in steps)
    return RouteDecision(
        model=first,
        reason=f"{ctx.strategy}: {why} -> cascade {path}; {_pick_words(ctx)}",
        strategy=ctx.strategy,
        confidence=0.5,
        estimated_cost_usd=model_cost(first, ctx),
        fallbacks=fallbacks_for(first, [m for m in pool if m.quality_tier == first.quality_tier], ctx),
        escalations=tuple(steps[1:]),
        score=score,
        max_output_tokens=ctx.output_bounds.get(first.name) if ctx.max_cost_usd is not None else None,
    )


def _pick_words(ctx: RoutingContext) -> str:
    return {"cost": "cheapest", "quality": "most capable", "speed": "fastest"}[ctx.preference] + " allowed model"


def _heuristic_assessment(ctx: RoutingContext) -> tuple[float, str]:
    request = ctx.request
    found = assess(
        ctx.prompt_text,
        prompt_tokens=ctx.prompt_tokens,
        turns=len(request.payload["messages"]),
        has_tools=request.has_tools,
        has_images=request.has_images,
        wants_json=request.wants_json,
    )
    signals = ",".join(found.signals[:4]) or "no signals"
    return found.score, f"complexity {found.score:.2f} ({signals})"


def heuristic(ctx: RoutingContext, pool: list[CatalogModel]) -> RouteDecision:
    score, why = _heuristic_assessment(ctx)
    thresholds = shifted(settings.MUXER_ROUTER_HEURISTIC_THRESHOLDS, ctx.preference)
    decision = _single(
        ctx, pool, tier_for(score, thresholds), score=score, confidence=confidence_for(score, thresholds), why=why
    )
    return replace(decision, complexity=score)


def semantic(ctx: RoutingContext, pool: list[CatalogModel]) -> RouteDecision:
    score = ctx.semantic.score(ctx.prompt_text)
    thresholds = shifted(settings.MUXER_ROUTER_SEMANTIC_THRESHOLDS, ctx.preference)
    why = f"p(cheap fails, strong right)={score:.2f}"
    return _single(
        ctx, pool, tier_for(score, thresholds), score=score, confidence=confidence_for(score, thresholds), why=why
    )


def cascade(ctx: RoutingContext, pool: list[CatalogModel]) -> RouteDecision:
    return _cascade(ctx, pool, ctx.quality_floor, score=None, why="try cheap first")


def hybrid_score(heuristic_score: float, semantic_score: float) -> float:
    w_heuristic, w_semantic = settings.MUXER_ROUTER_HYBRID_WEIGHTS
    return (w_heuristic * heuristic_score + w_semantic * semantic_score) / (w_heuristic + w_semantic)


def hybrid(ctx: RoutingContext, pool: list[CatalogModel]) -> RouteDecision:
    h_score, h_why = _heuristic_assessment(ctx)
    s_score = ctx.semantic.score(ctx.prompt_text)
    score = hybrid_score(h_score, s_score)
    low, high = shifted(settings.MUXER_ROUTER_HYBRID_BAND, ctx.preference)
    why = f"score {score:.2f} = heuristic {h_why} + semantic p={s_score:.2f}"
    if score < low:
        decision = _single(ctx, pool, 1, score=score, confidence=confidence_for(score, (low, high)), why=why)
    elif score >= high:
        decision = _single(ctx, pool, TOP_TIER, score=score, confidence=confidence_for(score, (low, high)), why=why)
    else:
        decision = _cascade(ctx, pool, max(1, ctx.quality_floor), score=score, why=why + " is uncertain")
    return replace(decision, complexity=h_score)


STRATEGIES: dict[str, Callable[[RoutingContext, list[CatalogModel]], RouteDecision]] = {
    "heuristic": heuristic,
    "semantic": semantic,
    "cascade": cascade,
    "hybrid": hybrid,
}


def decide(ctx: RoutingContext) -> RouteDecision:
    pool = candidates(ctx)
    if not pool:
        raise no_model_available(ctx)
    return replace(STRATEGIES[ctx.strategy](ctx, pool), max_cost_usd=ctx.max_cost_usd)


def no_model_available(ctx: RoutingContext) -> APIError:
    limits = []
    if ctx.max_cost_usd is not None:
        limits.append(f"a cost cap of ${ctx.max_cost_usd:f}")
    if ctx.quality_floor > 1:
        limits.append(f"a quality floor of {TIER_NAMES[ctx.quality_floor]}")
    within = f" within {' and '.join(limits)}" if limits else ""
    return APIError(
        400,
        f"No enabled, healthy model that this key may use can serve this request{within}.",
        code="no_model_available",
        param="model",
    )
