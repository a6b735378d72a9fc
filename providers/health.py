"""How each provider is doing, for operators: its models' circuit breakers and its recent traffic.

The breakers come from :func:`providers.resilience.open_circuits` (Redis when
``REDIS_URL`` is set, shared by every gateway; else this process's memory).
The traffic comes from the usage records of the last ``window``: one grouped
query for every provider (or every model of one provider), never one per row.
The median latency is PostgreSQL's ``percentile_cont``; on SQLite (development)
an aggregate function of the same meaning is registered on the connection.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections, router
from django.db.models import Aggregate, Count, FloatField, Max, Q
from django.utils import timezone

from billing.models import UsageRecord, UsageStatus

from .models import Model, Provider
from .resilience import CLOSED, HALF_OPEN, OPEN, open_circuits

WINDOW = timedelta(hours=1)


class Median(Aggregate):
    """The median of a numeric column (``percentile_cont(0.5)``)."""

    function = "MUXER_MEDIAN"
    name = "Median"
    output_field = FloatField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            function="PERCENTILE_CONT",
            template="%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)",
            **extra,
        )


class _SqliteMedian:
    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self) -> float | None:
        return float(statistics.median(self.values)) if self.values else None


def _register_median() -> None:
    alias = router.db_for_read(UsageRecord)
    connection = connections[alias]
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        connection.connection.create_aggregate("MUXER_MEDIAN", 1, _SqliteMedian)


@dataclass(frozen=True)
class TrafficStats:
    """Requests that reached a provider in the window, and how they went."""

    requests: int = 0
    errors: int = 0
    p50_latency_ms: float | None = None
    last_error_at: datetime | None = None
    last_error_code: str = ""

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def traffic_by(*, group: str, since: datetime, provider: str | None = None) -> dict[str, TrafficStats]:
    """Usage since ``since`` grouped by ``"provider"`` or ``"model"`` (optionally of one provider's slug).

    Two queries whatever the number of groups: the aggregate, and the code of each group's last error.
    """
    if group not in ("provider", "model"):
        raise ValueError("Group by provider or model.")
    _register_median()
    rows = UsageRecord.objects.filter(created_at__gte=since)
    if provider is not None:
        rows = rows.filter(provider=provider)
    error = Q(status=UsageStatus.ERROR)
    totals = (
        rows.order_by()
        .values(group)
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=error),
            p50=Median("latency_ms"),
            last_error_at=Max("created_at", filter=error),
        )
    )
    found = {row[group]: row for row in totals}
    last_errors: Q | None = None
    for name, row in found.items():
        if row["last_error_at"] is not None:
            this = Q(**{group: name, "created_at": row["last_error_at"]})
            last_errors = this if last_errors is None else last_errors | this
    codes: dict[str, str] = {}
    if last_errors is not None:
        for name, code in rows.filter(error & last_errors).order_by("created_at").values_list(group, "error_code"):
            codes[name] = code or "error"
    return {
        name: TrafficStats(
            requests=row["requests"],
            errors=row["errors"],
            p50_latency_ms=row["p50"],
            last_error_at=row["last_error_at"],
            last_error_code=codes.get(name, ""),
        )
        for name, row in found.items()
    }


def circuits_by_provider() -> dict[str, dict[str, str]]:
    """Each provider's models whose breaker is not closed: ``{provider: {model: "open" | "half_open"}}``."""
    grouped: dict[str, dict[str, str]] = {}
    for key, state in open_circuits().items():
        provider, _, model = key.partition("/")
        grouped.setdefault(provider, {})[model] = state
    return grouped


@dataclass(frozen=True)
class ProviderHealth:
    enabled: bool
    enabled_models: int
    circuits: dict[str, str] = field(default_factory=dict)
    traffic: TrafficStats = field(default_factory=TrafficStats)

    @property
    def status(self) -> str:
        """``disabled``, ``down`` (every enabled model's circuit open), ``degraded`` (a circuit not closed, or
        errors at the breaker's error rate), ``idle`` (no traffic in the window) or ``ok``."""
        if not self.enabled:
            return "disabled"
        open_count = sum(1 for state in self.circuits.values() if state == OPEN)
        if self.enabled_models and open_count >= self.enabled_models:
            return "down"
        rate = self.traffic.error_rate
        if self.circuits or (rate is not None and rate >= settings.MUXER_BREAKER_ERROR_RATE):
            return "degraded"
        return "ok" if self.traffic.requests else "idle"

    @property
    def circuit_summary(self) -> str:
        if not self.circuits:
            return CLOSED
        counts = {state: sum(1 for s in self.circuits.values() if s == state) for state in (OPEN, HALF_OPEN)}
        return ", ".join(f"{count} {state.replace('_', '-')}" for state, count in counts.items() if count)


def provider_health(*, providers: list[Provider], since: datetime | None = None) -> dict[str, ProviderHealth]:
    """Health of ``providers`` (annotated with ``enabled_models``, or counted here in one query), by slug."""
    since = since or timezone.now() - WINDOW
    traffic = traffic_by(group="provider", since=since)
    circuits = circuits_by_provider()
    counts: dict[int, int] = {}
    if providers and not all(hasattr(p, "enabled_models") for p in providers):
        counts = dict(
            Model.objects.filter(provider__in=providers, enabled=True)
            .order_by()
            .values_list("provider_id")
            .annotate(n=Count("id"))
            .values_list("provider_id", "n")
        )
    return {
        p.slug: ProviderHealth(
            enabled=p.enabled,
            enabled_models=getattr(p, "enabled_models", None) or counts.get(p.pk, 0),
            circuits=circuits.get(p.slug, {}),
            traffic=traffic.get(p.slug, TrafficStats()),
        )
        for p in providers
    }


@dataclass(frozen=True)
class ModelHealth:
    name: str
    enabled: bool
    circuit: str
    traffic: TrafficStats


def provider_model_health(*, provider: Provider, since: datetime | None = None) -> list[ModelHealth]:
    """Each of ``provider``'s models: enabled or not, its circuit, and its traffic in the window."""
    since = since or timezone.now() - WINDOW
    traffic = traffic_by(group="model", since=since, provider=provider.slug)
    circuits = circuits_by_provider().get(provider.slug, {})
    return [
        ModelHealth(
            name=model.name,
            enabled=model.enabled,
            circuit=circuits.get(model.name, CLOSED),
            traffic=traffic.get(model.name, TrafficStats()),
        )
        for model in Model.objects.filter(provider=provider).order_by("name")
    ]
