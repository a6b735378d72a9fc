"""The routers: heuristic, semantic, cascade and hybrid decisions over a tiered catalog, without I/O."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.auth import KeyIdentity
from muxer_project.errors import APIError
from providers.catalog import Catalog
from routing.schema import ChatRequest, RoutingOptions
from routing.selection import select_route
from routing.strategies import RouteDecision
from routing.strategies.heuristic import assess, complexity_score
from tests.routing.test_selection import catalog, identity, model, request

ROOMY: dict[str, Any] = {"context_window": 100_000, "max_output_tokens": 4_096}
# Two providers per tier, priced so the cheapest of each tier is unambiguous.
ECO_A = model("eco-a", "0.10", provider="alpha", quality_tier=1, **ROOMY)
ECO_B = model("eco-b", "0.20", provider="beta", quality_tier=1, **ROOMY)
STD_A = model("std-a", "1.00", provider="alpha", quality_tier=2, **ROOMY)
STD_B = model("std-b", "2.00", provider="beta", quality_tier=2, **ROOMY)
PRE_A = model("pre-a", "10.00", provider="alpha", quality_tier=3, **ROOMY)
PRE_B = model("pre-b", "20.00", provider="beta", quality_tier=3, **ROOMY)
TIERED = catalog(ECO_A, ECO_B, STD_A, STD_B, PRE_A, PRE_B)

EASY = "hi, thanks!"
HARD = (
    "Analyze step by step the trade-offs of this Python architecture, then prove the bound on the integral "
    "and write the refactored code:\n```python\ndef f(x):\n    return x ** 2\n```"
)


@pytest.fixture(autouse=True)
def thresholds(settings: SettingsWrapper) -> None:
    """Tier boundaries of these tests' own, so they read plainly whatever the deployed defaults are."""
    settings.MUXER_ROUTER_HEURISTIC_THRESHOLDS = (0.3, 0.6)
    settings.MUXER_ROUTER_SEMANTIC_THRESHOLDS = (0.3, 0.5)
    settings.MUXER_ROUTER_HYBRID_WEIGHTS = (0.3, 0.7)
    settings.MUXER_ROUTER_HYBRID_BAND = (0.3, 0.5)


class Scorer:
    """A semantic model that answers a fixed probability and remembers what it read."""

    def __init__(self, p: float) -> None:
        self.p = p
        self.seen: list[str] = []

    def score(self, text: str) -> float:
        self.seen.append(text)
        return self.p


def route(
    content: Any = EASY,
    *,
    model_name: str = "auto",
    p: float = 0.1,
    models: Catalog = TIERED,
    key: KeyIdentity | None = None,
    options: RoutingOptions | None = None,
    **fields: Any,
) -> RouteDecision:
    req: ChatRequest = request(model_name, content=content, **fields)
    return select_route(catalog=models, identity=key or identity(), request=req, semantic=Scorer(p), options=options)


def keyed(**fields: Any) -> KeyIdentity:
    return replace(identity(), **fields)


# --- the heuristic's reading of a prompt -------------------------------------------


def test_the_heuristic_scores_a_greeting_low_and_a_hard_technical_ask_high() -> None:
    assert complexity_score(EASY) < 0.1
    assert complexity_score(HARD) > 0.8


@pytest.mark.parametrize(
    ("text", "signal"),
    [
        ("Fix this bug in my Python function", "code"),
        ("Prove the theorem about this polynomial", "math"),
        ("Compare the pros and cons of both plans", "reasoning"),
        ("Write a poem about autumn", "creative"),
        ("Translate this sentence into French", "translation"),
        ("Extract the dates as JSON", "extraction"),
    ],
)
def test_the_heuristic_names_the_kind_of_task(text: str, signal: str) -> None:
    assert signal in assess(text).signals


def test_tools_images_length_and_depth_raise_the_score() -> None:
    plain = assess("Tell me about the weather").score

    assert assess("Tell me about the weather", has_tools=True).score > plain
    assert assess("Tell me about the weather", has_images=True).score > plain
    assert assess("Tell me about the weather", prompt_tokens=5_000).score > plain
    assert assess("Tell me about the weather", turns=6).score > plain


# --- heuristic and semantic routers -------------------------------------------------


def test_the_heuristic_router_sends_an_easy_prompt_to_the_cheapest_economy_model() -> None:
    decision = route(EASY, model_name="muxer/heuristic")

    assert (decision.model.name, decision.strategy) == ("eco-a", "heuristic")
    assert decision.reason.startswith("heuristic: complexity 0.00")
    assert "-> economy" in decision.reason


def test_the_heuristic_router_sends_a_hard_prompt_to_the_premium_tier() -> None:
    decision = route(HARD, model_name="muxer/heuristic")

    assert decision.model.name == "pre-a"
    assert "code" in decision.reason
    assert "-> premium" in decision.reason


def test_the_semantic_router_follows_the_models_failure_probability() -> None:
    assert route(model_name="muxer/semantic", p=0.05).model.name == "eco-a"
    assert route(model_name="muxer/semantic", p=0.40).model.name == "std-a"
    assert route(model_name="muxer/semantic", p=0.90).model.name == "pre-a"


def test_the_semantic_router_reads_the_last_user_turn() -> None:
    scorer = Scorer(0.1)
    req = request(
        "muxer/semantic",
        content="first question",
    )
    req.payload["messages"] += [
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "the follow-up"}]},
    ]
    select_route(catalog=TIERED, identity=identity(), request=req, semantic=scorer)

    assert scorer.seen == ["the follow-up"]


def test_a_decision_carries_confidence_estimated_cost_and_fallbacks_on_other_providers() -> None:
    decision = route(model_name="muxer/semantic", p=0.05)

    assert decision.confidence == pytest.approx(1.0)  # 0.05 is far from the 0.3 boundary
    # "hi, thanks!" is 3 tokens + 4 for the message; 512 output tokens expected; $0.10 per 1M both ways.
    assert decision.estimated_cost_usd == Decimal("0.10") * (7 + 512) / 1_000_000
    # One back-up per other provider: beta's economy model; alpha's are on the failing provider.
    assert [m.name for m in decision.fallbacks] == ["eco-b"]


def test_near_a_boundary_the_confidence_is_low() -> None:
    assert route(model_name="muxer/semantic", p=0.31).confidence < 0.6


def test_an_empty_tier_is_served_by_the_nearest_tier_above() -> None:
    decision = route(model_name="muxer/semantic", p=0.40, models=catalog(ECO_A, PRE_A))

    assert decision.model.name == "pre-a"
    assert "premium (no standard)" in decision.reason


# --- policy, capabilities, health, cost cap -------------------------------------------


def test_routers_only_pick_models_the_key_may_use() -> None:
    decision = route(model_name="muxer/semantic", p=0.05, key=keyed(allowed_models=frozenset({"eco-b", "pre-a"})))

    assert decision.model.name == "eco-b"


def test_routers_only_pick_providers_the_policy_allows() -> None:
    decision = route(model_name="muxer/semantic", p=0.05, key=keyed(org_allowed_providers=frozenset({"beta"})))

    assert decision.model.name == "eco-b"
    assert decision.fallbacks == ()  # no other allowed provider to fall back to


def test_routers_skip_models_that_lack_a_needed_capability() -> None:
    models = catalog(replace(ECO_A, supports_tools=False), ECO_B, STD_A)

    decision = route(
        model_name="muxer/semantic",
        p=0.05,
        models=models,
        tools=[{"type": "function", "function": {"name": "f"}}],
    )

    assert decision.model.name == "eco-b"


def test_routers_skip_a_model_whose_circuit_this_process_saw_open(monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.resilience import breaker

    monkeypatch.setattr(breaker, "known_unavailable", lambda m: m.name == "eco-a")

    assert route(model_name="muxer/semantic", p=0.05).model.name == "eco-b"


def test_the_speed_preference_picks_the_fastest_model_seen_in_the_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.resilience import latency

    monkeypatch.setattr(latency, "get", lambda m: {"eco-a": 900.0, "eco-b": 120.0}.get(m.name))

    assert route(model_name="muxer/semantic", p=0.05, key=keyed(preference="speed")).model.name == "eco-b"


def test_the_quality_preference_escalates_sooner_and_picks_the_dearer_model() -> None:
    decision = route(model_name="muxer/semantic", p=0.25, key=keyed(preference="quality"))

    assert decision.model.name == "std-b"  # 0.25 is economy for cost, standard for quality


def test_a_cost_cap_excludes_models_whose_worst_case_cost_exceeds_it() -> None:
    # 1,000 output tokens of pre-a cost $0.01; of std-a $0.001.
    decision = route(
        model_name="muxer/semantic", p=0.9, max_tokens=1_000, options=RoutingOptions(max_cost_usd=Decimal("0.005"))
    )

    assert decision.model.name == "std-a"
    assert decision.max_cost_usd == Decimal("0.005")


def test_without_max_tokens_a_cost_cap_bounds_the_answer_length() -> None:
    decision = route(model_name="muxer/semantic", p=0.9, options=RoutingOptions(max_cost_usd=Decimal("0.002")))

    # pre-a: (0.002 - 7 tokens * $10/1M) / ($10/1M) = 193 output tokens.
    assert (decision.model.name, decision.max_output_tokens) == ("pre-a", 193)


def test_a_quality_floor_keeps_cheaper_tiers_out() -> None:
    decision = route(model_name="muxer/semantic", p=0.05, muxer={"quality_floor": "standard"})

    assert decision.model.name == "std-a"


def test_when_nothing_fits_the_request_gets_a_clear_400() -> None:
    with pytest.raises(APIError) as caught:
        route(model_name="muxer/semantic", options=RoutingOptions(max_cost_usd=Decimal("0.0000001")))

    assert caught.value.status == 400
    assert caught.value.code == "no_model_available"
    assert "cost cap of $0.0000001" in caught.value.message


# --- cascade and hybrid ---------------------------------------------------------------


def test_the_cascade_router_climbs_one_model_per_tier_from_the_cheapest() -> None:
    decision = route(model_name="muxer/cascade")

    assert decision.model.name == "eco-a"
    assert [m.name for m in decision.escalations] == ["std-a", "pre-a"]
    assert "cascade economy > standard > premium" in decision.reason


def test_a_cost_cap_shortens_the_cascade() -> None:
    # Expected costs (7 in + 512 out): eco-a $0.0000519, std-a $0.000519, pre-a $0.00519.
    decision = route(model_name="muxer/cascade", options=RoutingOptions(max_cost_usd=Decimal("0.001")))

    assert [m.name for m in (decision.model, *decision.escalations)] == ["eco-a", "std-a"]


def test_hybrid_routes_a_clear_case_directly(settings: SettingsWrapper) -> None:
    easy = route(EASY, model_name="muxer/hybrid", p=0.05)
    hard = route(HARD, model_name="muxer/hybrid", p=0.95)

    assert (easy.model.name, easy.escalations) == ("eco-a", ())
    assert (hard.model.name, hard.escalations) == ("pre-a", ())
    assert "semantic p=0.95" in hard.reason


def test_hybrid_settles_the_uncertain_band_with_a_cascade(settings: SettingsWrapper) -> None:
    settings.MUXER_ROUTER_HYBRID_WEIGHTS = (0.0, 1.0)

    decision = route(model_name="muxer/hybrid", p=0.4)

    assert decision.model.name == "eco-a"
    assert [m.name for m in decision.escalations] == ["std-a", "pre-a"]
    assert "is uncertain -> cascade" in decision.reason


def test_hybrid_weights_are_configurable(settings: SettingsWrapper) -> None:
    settings.MUXER_ROUTER_HYBRID_WEIGHTS = (1.0, 0.0)

    # The semantic model says hard, but only the heuristic counts now, and it says easy.
    assert route(EASY, model_name="muxer/hybrid", p=0.99).model.name == "eco-a"


# --- choosing the strategy -----------------------------------------------------------------


def test_auto_uses_the_keys_strategy() -> None:
    assert route(key=keyed(strategy="cascade")).strategy == "cascade"
    assert route(key=keyed(strategy="heuristic")).strategy == "heuristic"


def test_a_header_or_body_strategy_overrides_the_policy_for_auto() -> None:
    assert route(options=RoutingOptions(strategy="semantic")).strategy == "semantic"
    assert route(muxer={"strategy": "cascade"}).strategy == "cascade"


def test_an_alias_wins_over_the_header() -> None:
    assert route(model_name="muxer/heuristic", options=RoutingOptions(strategy="cascade")).strategy == "heuristic"


def test_an_explicit_model_is_not_routed_but_still_bounded_by_a_cost_cap() -> None:
    decision = route(model_name="pre-a", options=RoutingOptions(max_cost_usd=Decimal("0.002")))

    assert (decision.model.name, decision.strategy, decision.max_output_tokens) == ("pre-a", "explicit", 193)


def test_an_explicit_model_that_cannot_fit_the_cap_is_refused() -> None:
    with pytest.raises(APIError) as caught:
        route(model_name="pre-a", max_tokens=1_000, options=RoutingOptions(max_cost_usd=Decimal("0.001")))

    assert (caught.value.status, caught.value.code) == (400, "cost_cap_exceeded")


def test_the_decision_as_json_names_everything_the_explanation_needs() -> None:
    body = route(model_name="muxer/cascade").as_dict()

    assert (body["model"], body["provider"], body["quality_tier"]) == ("eco-a", "alpha", "economy")
    assert [step["model"] for step in body["cascade"]] == ["eco-a", "std-a", "pre-a"]
    assert set(body) >= {"reason", "confidence", "estimated_cost_usd", "fallbacks", "strategy"}
