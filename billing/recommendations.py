"""Savings recommendations from an organization's recent usage.

Three kinds, each with an estimated saving per 30 days:

* ``duplicate_requests``: identical requests (same ``request_fingerprint``)
  after the first in the window, which an exact-match cache would have
  answered for nothing;
* ``simple_on_expensive``: requests the heuristic router scored as simple
  (complexity below the economy threshold) that ran on a standard or premium
  model, priced again on the cheapest economy model that can do what the used
  model does;
* ``cheaper_equivalent``: the rest of a model's traffic, priced again on the
  cheapest enabled model of the same quality tier with at least the same
  capabilities and context window.

Each request is counted in one recommendation at most (duplicates first, then
simple requests, then the rest), so the savings add up. Only successful
requests are read. Alternatives are priced at the catalog's current prices for
the same input, cached-input and output tokens; the saving is what was charged
minus that. A window of N days is scaled to 30 by 30/N, and amounts are
rounded to the cent, so a saving under half a cent a month is not shown.

Alternatives come from enabled models the organization's policy allows. The
built-in fake provider (development) is only compared with itself.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db.models import Case, Count, F, Max, Sum, When
from django.db.models import Value as V
from django.utils import timezone

from accounts.models import Organization
from providers.catalog import CatalogModel, get_catalog_sync

from .models import UsageRecord, UsageStatus

FAKE_PROVIDER = "fake"
ECONOMY_TIER = 1
CENT = Decimal("0.01")
MONTH_DAYS = 30
ONE_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Recommendation:
    kind: str
    title: str
    detail: str
    monthly_saving_usd: Decimal
    evidence: dict[str, Any]
    model: str = ""
    suggested_model: str = ""


@dataclass
class Tally:
    """Requests and their tokens and cost: what an alternative model is priced on."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    largest_request_tokens: int = 0
    largest_output_tokens: int = 0

    def add(self, other: Tally, sign: int = 1) -> None:
        self.requests += sign * other.requests
        self.input_tokens += sign * other.input_tokens
        self.cached_input_tokens += sign * other.cached_input_tokens
        self.output_tokens += sign * other.output_tokens
        self.cost_usd += sign * other.cost_usd
        self.largest_request_tokens = max(self.largest_request_tokens, other.largest_request_tokens)
        self.largest_output_tokens = max(self.largest_output_tokens, other.largest_output_tokens)


def price_usd(model: CatalogModel, tally: Tally) -> Decimal:
    """What ``model`` charges, at its current list prices, for the tally's tokens."""
    cached = min(tally.cached_input_tokens, tally.input_tokens)
    cached_price = model.cached_input_price_per_mtok_usd
    if cached_price is None:
        cached_price = model.input_price_per_mtok_usd
    return (
        (tally.input_tokens - cached) * model.input_price_per_mtok_usd
        + cached * cached_price
        + tally.output_tokens * model.output_price_per_mtok_usd
    ) / ONE_MILLION


def monthly(saving: Decimal, days: int) -> Decimal:
    return (saving * MONTH_DAYS / days).quantize(CENT, rounding=ROUND_HALF_UP)


def dollars(amount: Decimal) -> str:
    return f"${amount.quantize(CENT, rounding=ROUND_HALF_UP):,}"


def _allowed(organization: Organization, model: CatalogModel) -> bool:
    if organization.allowed_models and model.name not in organization.allowed_models:
        return False
    return not (organization.allowed_providers and model.provider not in organization.allowed_providers)


def _can_replace(candidate: CatalogModel, used: CatalogModel) -> bool:
    """At least the used model's capabilities, on the same side of the development fake."""
    return (
        candidate.name != used.name
        and candidate.kind == used.kind
        and (candidate.provider == FAKE_PROVIDER) == (used.provider == FAKE_PROVIDER)
        and (candidate.supports_tools or not used.supports_tools)
        and (candidate.supports_vision or not used.supports_vision)
        and (candidate.supports_json_mode or not used.supports_json_mode)
        and (candidate.supports_streaming or not used.supports_streaming)
    )


def _cheapest(candidates: list[CatalogModel], tally: Tally) -> tuple[CatalogModel, Decimal] | None:
    priced = [(price_usd(c, tally), c.name, c) for c in candidates]
    if not priced:
        return None
    cost, _, model = min(priced, key=lambda item: (item[0], item[1]))
    return model, cost


def _saving_sentence(window_saving: Decimal, monthly_saving: Decimal, days: int) -> str:
    if days == MONTH_DAYS:
        return f"That is {dollars(window_saving)} in 30 days: {dollars(monthly_saving)} a month."
    return f"That is {dollars(window_saving)} in {days} days; scaled by 30/{days}, {dollars(monthly_saving)} a month."


def usd(amount: Decimal) -> str:
    return f"{amount:.10f}"


def recommendations_for(
    *, organization: Organization, days: int = 30, now: datetime | None = None
) -> list[Recommendation]:
    """The organization's recommendations from the last ``days`` days, largest saving first."""
    if days < 1:
        raise ValueError("days must be at least 1.")
    end = now or timezone.now()
    # Answers from the response cache cost nothing: there is nothing left to save on them.
    rows = UsageRecord.objects.filter(
        organization=organization,
        status=UsageStatus.OK,
        cache_hit=False,
        created_at__gte=end - timedelta(days=days),
        created_at__lt=end,
    )
    simple_below = float(settings.MUXER_ROUTER_HEURISTIC_THRESHOLDS[0])
    catalog = get_catalog_sync()
    offered = [m for m in catalog.models.values() if _allowed(organization, m)]

    # Totals per (model, simple) in the database, then the duplicates taken out in Python.
    tallies: dict[tuple[str, bool], Tally] = defaultdict(Tally)
    grouped = (
        rows.annotate(simple=Case(When(complexity__lt=simple_below, then=V(True)), default=V(False)))
        .values("model", "simple")
        .annotate(
            n_requests=Count("id"),
            n_input=Sum("input_tokens"),
            n_cached=Sum("cached_input_tokens"),
            n_output=Sum("output_tokens"),
            cost=Sum("cost_usd"),
            largest_request=Max(F("input_tokens") + F("output_tokens")),
            largest_output=Max("output_tokens"),
        )
    )
    for group in grouped:
        tallies[(group["model"], bool(group["simple"]))] = Tally(
            requests=group["n_requests"],
            input_tokens=group["n_input"] or 0,
            cached_input_tokens=group["n_cached"] or 0,
            output_tokens=group["n_output"] or 0,
            cost_usd=group["cost"] or Decimal(0),
            largest_request_tokens=group["largest_request"] or 0,
            largest_output_tokens=group["largest_output"] or 0,
        )

    found: list[Recommendation] = []
    duplicates = _duplicates(rows, simple_below)
    if duplicates.requests:
        found += _duplicate_recommendation(duplicates, days)
        for key, tally in duplicates.by_group.items():
            tallies[key].add(tally, sign=-1)

    for name in sorted({model for model, _ in tallies}):
        used = catalog.get(name)
        if used is None:
            continue
        simple = tallies.get((name, True), Tally())
        rest = tallies.get((name, False), Tally())
        if used.quality_tier > ECONOMY_TIER and simple.requests > 0:
            suggestion = _simple_on_expensive(used, simple, offered, days)
            if suggestion is not None:
                found.append(suggestion)
            else:
                rest.add(simple)
        else:
            rest.add(simple)
        if rest.requests > 0:
            suggestion = _cheaper_equivalent(used, rest, offered, days)
            if suggestion is not None:
                found.append(suggestion)
    found.sort(key=lambda r: (-r.monthly_saving_usd, r.kind, r.model))
    return found


@dataclass
class Duplicates:
    requests: int = 0
    repeated_requests: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    by_group: dict[tuple[str, bool], Tally] = field(default_factory=lambda: defaultdict(Tally))


def _duplicates(rows: Any, simple_below: float) -> Duplicates:
    """Requests whose fingerprint an earlier request in the window already had, and their rows' cost."""
    repeated = (
        rows.exclude(request_fingerprint="")
        .values("request_fingerprint")
        .annotate(requests=Count("request_id", distinct=True))
        .filter(requests__gt=1)
        .values("request_fingerprint")
    )
    first_request: dict[str, str] = {}
    counted: set[str] = set()
    result = Duplicates()
    fields = ["request_fingerprint", "request_id", "model", "complexity", "input_tokens", "cached_input_tokens",
              "output_tokens", "cost_usd"]  # fmt: skip
    candidates = rows.filter(request_fingerprint__in=repeated).order_by("created_at", "id").values_list(*fields)
    for fingerprint, request_id, model, complexity, input_tokens, cached, output_tokens, cost in candidates:
        first = first_request.setdefault(fingerprint, request_id)
        if first == request_id:
            continue
        if request_id not in counted:
            counted.add(request_id)
            result.requests += 1
        result.cost_usd += cost
        simple = complexity is not None and complexity < simple_below
        result.by_group[(model, simple)].add(
            Tally(
                requests=1,
                input_tokens=input_tokens,
                cached_input_tokens=cached,
                output_tokens=output_tokens,
                cost_usd=cost,
            )
        )
    result.repeated_requests = len(first_request)
    return result


def _duplicate_recommendation(duplicates: Duplicates, days: int) -> list[Recommendation]:
    saving = monthly(duplicates.cost_usd, days)
    if saving <= 0:
        return []
    return [
        Recommendation(
            kind="duplicate_requests",
            title="Cache repeated requests",
            detail=(
                f"In the last {days} days, {duplicates.repeated_requests} distinct requests were sent again "
                f"{duplicates.requests} times with identical bodies; those repeats cost "
                f"{dollars(duplicates.cost_usd)}. An exact-match response cache would have answered them for "
                f"nothing. {_saving_sentence(duplicates.cost_usd, saving, days)}"
            ),
            monthly_saving_usd=saving,
            evidence={
                "window_days": days,
                "duplicate_requests": duplicates.requests,
                "distinct_requests_repeated": duplicates.repeated_requests,
                "window_cost_usd": usd(duplicates.cost_usd),
            },
        )
    ]


def _simple_on_expensive(
    used: CatalogModel, simple: Tally, offered: list[CatalogModel], days: int
) -> Recommendation | None:
    candidates = [
        m
        for m in offered
        if m.quality_tier == ECONOMY_TIER
        and _can_replace(m, used)
        and m.context_window >= simple.largest_request_tokens
        and m.max_output_tokens >= simple.largest_output_tokens
    ]
    cheapest = _cheapest(candidates, simple)
    if cheapest is None:
        return None
    alternative, alternative_cost = cheapest
    saving = monthly(simple.cost_usd - alternative_cost, days)
    if saving <= 0:
        return None
    threshold = settings.MUXER_ROUTER_HEURISTIC_THRESHOLDS[0]
    return Recommendation(
        kind="simple_on_expensive",
        title=f"Send simple requests on {used.name} to {alternative.name}",
        detail=(
            f"In the last {days} days, {simple.requests} requests on {used.name} (quality tier {used.quality_tier}) "
            f"were simple by the heuristic router's score (complexity below {threshold}) and cost "
            f"{dollars(simple.cost_usd)}. {alternative.name}, the cheapest economy model with the same capabilities, "
            f"would have charged {dollars(alternative_cost)} for the same tokens at its current prices. "
            f"{_saving_sentence(simple.cost_usd - alternative_cost, saving, days)} "
            'Routing with model "auto" sends simple requests to economy models.'
        ),
        monthly_saving_usd=saving,
        evidence={
            "window_days": days,
            "requests": simple.requests,
            "input_tokens": simple.input_tokens,
            "output_tokens": simple.output_tokens,
            "window_cost_usd": usd(simple.cost_usd),
            "alternative_cost_usd": usd(alternative_cost),
        },
        model=used.name,
        suggested_model=alternative.name,
    )


def _cheaper_equivalent(
    used: CatalogModel, rest: Tally, offered: list[CatalogModel], days: int
) -> Recommendation | None:
    candidates = [
        m
        for m in offered
        if m.quality_tier == used.quality_tier and _can_replace(m, used) and m.context_window >= used.context_window
    ]
    cheapest = _cheapest(candidates, rest)
    if cheapest is None:
        return None
    alternative, alternative_cost = cheapest
    saving = monthly(rest.cost_usd - alternative_cost, days)
    if saving <= 0:
        return None
    return Recommendation(
        kind="cheaper_equivalent",
        title=f"Switch {used.name} to {alternative.name}",
        detail=(
            f"In the last {days} days, {rest.requests} requests on {used.name} cost {dollars(rest.cost_usd)}. "
            f"{alternative.name} is in the same quality tier ({used.quality_tier}), has at least its capabilities "
            f"and context window, and would have charged {dollars(alternative_cost)} for the same tokens at its "
            f"current prices. {_saving_sentence(rest.cost_usd - alternative_cost, saving, days)}"
        ),
        monthly_saving_usd=saving,
        evidence={
            "window_days": days,
            "requests": rest.requests,
            "input_tokens": rest.input_tokens,
            "output_tokens": rest.output_tokens,
            "window_cost_usd": usd(rest.cost_usd),
            "alternative_cost_usd": usd(alternative_cost),
        },
        model=used.name,
        suggested_model=alternative.name,
    )
