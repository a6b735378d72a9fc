"""The gateway's Prometheus metrics, and the ``/metrics`` endpoint.

django-prometheus counts what passes through Django (requests by view, the
database, the cache). The proxy's consumers bypass Django's middleware, so
they record their own metrics here (``routing/consumers.py``).

Labels stay bounded: organization ids, catalog model and provider names,
strategies, HTTP statuses and fixed vocabularies. Never a key id, a user id,
or anything a client can choose freely (a requested model name that is not in
the catalog never becomes a label).

With several worker processes on a host, set ``PROMETHEUS_MULTIPROC_DIR`` to
an empty directory (wiped before the workers start): every process writes
its samples there and ``/metrics`` adds them up, whichever worker answers.

A few values are read when Prometheus scrapes rather than counted as they
happen, because they belong to the deployment, not to one process: circuit
breaker states, budget utilisation, the dependencies' health and the usage
stream's backlog (:class:`DeploymentCollector`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Iterator
from functools import cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Seconds: from a cached answer (milliseconds) to a long generation (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# The gateway's own work is a few milliseconds; the buckets resolve it.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

requests = Counter(
    "muxer_requests",
    "Proxy requests answered, by organization, the model and provider that answered, strategy and HTTP status.",
    ["endpoint", "org", "model", "provider", "strategy", "status"],
)
request_duration = Histogram(
    "muxer_request_duration_seconds",
    "Proxy requests: from the first byte received to the last byte sent.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
upstream_latency = Histogram(
    "muxer_upstream_latency_seconds",
    "Successful provider calls: from sending to the whole answer (a stream's last event).",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
time_to_first_token = Histogram(
    "muxer_time_to_first_token_seconds",
    "Streamed provider calls: from sending to the first content event.",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
gateway_overhead = Histogram(
    "muxer_gateway_overhead_seconds",
    "The gateway's own time per request: everything but waiting for providers "
    "(auth, parsing, limits, PII, routing, budgets, cache, answer handling).",
    ["endpoint"],
    buckets=OVERHEAD_BUCKETS,
)
provider_errors = Counter(
    "muxer_provider_errors",
    "Failed provider calls (each attempt, retried or not), by the status the gateway gave the failure.",
    ["provider", "model", "status"],
)
tokens = Counter(
    "muxer_tokens",
    "Tokens recorded in the usage ledger, by direction (input or output).",
    ["org", "model", "provider", "direction"],
)
cost_usd = Counter(
    "muxer_cost_usd",
    "Cost recorded in the usage ledger, in US dollars (the ledger keeps the exact Decimal).",
    ["org", "model", "provider"],
)
rate_limited = Counter(
    "muxer_rate_limited",
    "Requests refused by a rate limit (429 rate_limit_exceeded).",
    ["org", "endpoint"],
)
budget_refusals = Counter(
    "muxer_budget_refusals",
    "Requests refused because a budget had no room (429 budget_exceeded).",
    ["org"],
)
pii_detections = Counter(
    "muxer_pii_detections",
    "PII entities found in requests, by entity type and the action the organization's policy took.",
    ["org", "entity", "action"],
)
cache_requests = Counter(
    "muxer_cache_requests",
    "Response cache lookups of eligible requests: hit, miss, or bypass (X-Muxer-Cache: bypass).",
    ["org", "result"],
)
routing_decision = Histogram(
    "muxer_routing_decision_seconds",
    "Time to choose a route (pure CPU; no I/O).",
    ["strategy"],
    buckets=DECISION_BUCKETS,
)
auth_failures = Counter(
    "muxer_auth_failures",
    "Refused credentials: api_key (proxy and API), login (console, admin, token endpoint).",
    ["kind"],
)
audit_events = Counter(
    "muxer_audit_events",
    "Audit events recorded, by action.",
    ["action"],
)
store_errors = Counter(
    "muxer_store_errors",
    "Failures talking to a backing store that the request path survived (fail-open or fallback).",
    ["store", "operation"],
)
store_transitions = Counter(
    "muxer_store_transitions",
    "A process marking a backing store down (its first failure) or up (it answers again), per store.",
    ["store", "to"],
)
store_fallbacks = Counter(
    "muxer_store_fallbacks",
    "Operations answered by their fallback because the store was down (per-process limits, the ledger, direct writes).",
    ["store", "operation"],
)
overloaded = Counter(
    "muxer_overloaded",
    "Proxy requests refused at once (503 overloaded) because the worker had MUXER_MAX_INFLIGHT_REQUESTS in flight.",
    ["endpoint"],
)
# Sampled once a second by the server loop (muxer_project/serve.py), not per request: the hot path only counts.
inflight_requests = Gauge(
    "muxer_inflight_requests",
    "Proxy requests in flight, summed over the live workers (sampled each second).",
    multiprocess_mode="livesum",
)


# --- read at scrape time --------------------------------------------------------------------------

CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_DEPENDENCY_CACHE_SECONDS = 5.0
_dependencies: tuple[float, dict[str, bool]] = (0.0, {})


class DeploymentCollector(Collector):
    """Values that belong to the deployment (shared Redis and database), read when Prometheus scrapes.

    Every instance reports the same numbers, so dashboards and rules take
    ``max by (...)`` over instances. A store that cannot be read leaves its
    metrics out rather than failing the scrape; ``muxer_dependency_up`` says why.
    """

    def collect(self) -> Iterator[Metric]:
        health = dependency_health()
        up = GaugeMetricFamily(
            "muxer_dependency_up", "Whether a backing store answers (1) or not (0).", labels=["dependency"]
        )
        for name, ok in sorted(health.items()):
            up.add_metric([name], 1.0 if ok else 0.0)
        yield up
        # Breakers and budget counters live in Redis (and the catalog and budgets in the database).
        if health.get("database", False) and health.get("redis", False):
            yield from _guarded("circuits", _circuit_states)
            yield from _guarded("budgets", _budget_utilisation)
            if settings.REDIS_URL:
                yield from _guarded("usage stream", _usage_backlog)


def _guarded(what: str, produce: object) -> Iterator[Metric]:
    assert callable(produce)
    try:
        yield from produce()
    except Exception as exc:  # noqa: BLE001 - one unreadable source must not fail the whole scrape
        logger.warning("metrics: %s unreadable (%s)", what, type(exc).__name__)


def dependency_health() -> dict[str, bool]:
    """The readiness checks' verdicts, reused for a few seconds so frequent scrapes cost no extra I/O."""
    global _dependencies
    checked_at, found = _dependencies
    if time.monotonic() - checked_at > _DEPENDENCY_CACHE_SECONDS:
        from muxer_project.health import check_dependencies

        found = {name: result.ok for name, result in check_dependencies().items()}
        _dependencies = (time.monotonic(), found)
    return found


def _circuit_states() -> Iterable[Metric]:
    from providers.models import Model
    from providers.resilience import open_circuits

    states = open_circuits()
    gauge = GaugeMetricFamily(
        "muxer_circuit_state",
        "Each enabled model's circuit breaker: 0 closed, 1 half-open, 2 open.",
        labels=["provider", "model"],
    )
    rows = Model.objects.filter(enabled=True, provider__enabled=True).values_list("provider__slug", "name")
    for provider, model in rows.order_by("provider__slug", "name"):
        state = states.get(f"{provider}/{model}", "closed")
        gauge.add_metric([provider, model], float(CIRCUIT_VALUES.get(state, 2)))
    yield gauge


def _budget_utilisation() -> Iterable[Metric]:
    from billing.budgets import budget_usage
    from billing.models import Budget

    gauge = GaugeMetricFamily(
        "muxer_budget_utilisation_ratio",
        "Each enabled budget's current period: (spent + held) / limit.",
        labels=["org", "budget", "scope", "period"],
    )
    budgets = Budget.objects.filter(enabled=True).select_related("organization").order_by("id")
    for budget in budgets[: settings.MUXER_METRICS_MAX_BUDGETS]:
        usage = budget_usage(budget)
        used = usage.spent_usd + usage.reserved_usd
        ratio = float(used / usage.limit_usd) if usage.limit_usd > 0 else (1.0 if used > 0 else 0.0)
        gauge.add_metric([str(budget.organization_id), str(budget.pk), budget.scope, budget.period], ratio)
    yield gauge


def _usage_backlog() -> Iterable[Metric]:
    from billing.usage import usage_pending

    yield GaugeMetricFamily(
        "muxer_usage_stream_pending",
        "Usage events on the Redis stream not yet written to the ledger.",
        value=float(usage_pending()),
    )


# --- the endpoint ---------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> bytes:
    """Every metric in the text format: this process's (or all workers' on the host) and the deployment's."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        counted = generate_latest(registry)
    else:
        counted = generate_latest(REGISTRY)
    deployment = CollectorRegistry(auto_describe=False)
    deployment.register(DeploymentCollector())
    return counted + generate_latest(deployment)


@cache
def _allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(net, strict=False) for net in settings.MUXER_METRICS_ALLOWED_NETWORKS)


def metrics_access_allowed(request: HttpRequest) -> bool:
    """A scraper with the bearer token, or one connecting from an allowed network."""
    token = settings.MUXER_METRICS_TOKEN
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
            return True
    from audit.context import client_ip

    address = client_ip(request)
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _allowed_networks())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: for Prometheus, from an allowed network or with ``MUXER_METRICS_TOKEN``."""
    if not metrics_access_allowed(request):
        return HttpResponse(
            "Metrics need the bearer token or an allowed network.\n", status=403, content_type="text/plain"
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
