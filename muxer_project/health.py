"""Liveness and readiness.

``/healthz`` (liveness) answers from memory: the process runs and serves
HTTP. A failing dependency must not make an orchestrator restart a healthy
process, so it does no I/O at all.

``/readyz`` (readiness) asks each dependency, each within
``MUXER_READY_TIMEOUT_SECONDS``, so a frozen store makes the check fail fast
rather than hang the probe:

- the database answers ``SELECT 1``;
- Redis answers ``PING`` (when ``REDIS_URL`` is set);
- the Celery broker accepts a connection (unless tasks run eagerly);
- at least one enabled model's circuit breaker is closed: with every circuit
  open the instance could only answer 503s.

A worker that has been told to stop (SIGTERM, see ``muxer_project/serve.py``)
answers 503 ``draining`` at once, without asking anything, so a load balancer
takes it out of rotation while it finishes what it is serving.

A failing check makes the answer 503 only when it is listed in
``MUXER_READY_REQUIRES`` (none by default); otherwise the answer is 200 with
``"status": "degraded"`` and the same detail. The database, Redis, the broker
and the breakers are shared by every instance: failing readiness on them would
take every instance out of rotation at once, leaving a load balancer nothing
to send to, while the gateway is built to keep serving through their outages
(cached keys, per-process limits, budgets against the ledger). Their state is
watched by ``muxer_dependency_up`` and its alerts instead.

These paths, and ``/metrics``, are answered by :class:`ProbeMiddleware` ahead
of the rest of the middleware: an orchestrator or Prometheus reaches an
instance by its address over plain HTTP, so neither the ``ALLOWED_HOSTS``
check nor the HTTPS redirect may apply to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from muxer_project.lifespan import process_state


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str
    latency_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        status = "ok" if self.ok else "failing"
        return {"status": status, "detail": self.detail, "latency_ms": round(self.latency_ms, 1)}


def _timed(probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail = probe()
    except Exception as exc:  # noqa: BLE001 - a failing dependency is the answer, not an error
        # The exception's type only: messages can carry connection strings and their passwords.
        return Check(False, type(exc).__name__, (time.perf_counter() - started) * 1000)
    return Check(True, detail, (time.perf_counter() - started) * 1000)


@cache
def _probe_client(url: str) -> redis.Redis:
    """A client of its own with short timeouts: the shared ones wait longer, as requests should."""
    timeout = settings.MUXER_READY_TIMEOUT_SECONDS
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=2)


def check_database() -> Check:
    def probe() -> str:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL statement_timeout = %s", [int(settings.MUXER_READY_TIMEOUT_SECONDS * 1000)])
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return connection.vendor

    return _timed(probe)


def check_redis() -> Check:
    if not settings.REDIS_URL:
        return Check(True, "not configured: the in-process cache and counters serve")

    def probe() -> str:
        _probe_client(settings.REDIS_URL).ping()
        return "pong"

    return _timed(probe)


def check_broker() -> Check:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return Check(True, "eager: tasks run in the calling process")
    url = settings.CELERY_BROKER_URL
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):

        def probe() -> str:
            _probe_client(url).ping()
            return "pong"

        return _timed(probe)

    def connect() -> str:
        from muxer_project.celery import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=settings.MUXER_READY_TIMEOUT_SECONDS)
        return scheme

    return _timed(connect)


def check_providers() -> Check:
    """At least one enabled model of an enabled provider has a closed (or half-open) breaker."""

    def probe() -> str:
        from providers.models import Model
        from providers.resilience import open_circuits

        enabled = {
            f"{provider}/{name}"
            for provider, name in Model.objects.filter(enabled=True, provider__enabled=True).values_list(
                "provider__slug", "name"
            )
        }
        if not enabled:
            raise LookupError("no enabled model")
        opened = {key for key, state in open_circuits().items() if state == "open"}
        serving = enabled - opened
        if not serving:
            raise ConnectionRefusedError("every circuit is open")
        return f"{len(serving)} of {len(enabled)} models' circuits closed"

    result = _timed(probe)
    if not result.ok and result.detail in ("LookupError", "ConnectionRefusedError"):
        reason = "no enabled model" if result.detail == "LookupError" else "every circuit is open"
        return Check(False, reason, result.latency_ms)
    return result


def check_dependencies() -> dict[str, Check]:
    """The stores every instance shares: the database, Redis and the Celery broker."""
    return {"database": check_database(), "redis": check_redis(), "broker": check_broker()}


def readiness() -> tuple[str, dict[str, Check]]:
    """``ok``, ``degraded`` (a check failing that readiness does not require) or ``unavailable``."""
    checks = check_dependencies()
    # The breakers live in the database's catalog and Redis: with either down, asking them would only hang.
    if not checks["database"].ok:
        checks["providers"] = Check(False, "needs the database")
    elif not checks["redis"].ok:
        checks["providers"] = Check(False, "needs Redis")
    else:
        checks["providers"] = check_providers()
    failing = {name for name, check in checks.items() if not check.ok}
    if not failing:
        return "ok", checks
    return ("unavailable" if failing & set(settings.MUXER_READY_REQUIRES) else "degraded"), checks


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. No I/O."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 503 while draining or when a check ``MUXER_READY_REQUIRES`` lists fails; else 200 with each
    check's detail (``degraded`` when one fails).

    Circuits that are not closed are listed too: one open circuit is not fatal,
    since other models still serve.
    """
    from providers.resilience import open_circuits

    if process_state.draining:
        draining = JsonResponse({"status": "draining"}, status=503, headers={"Cache-Control": "no-store"})
        draining._has_been_logged = True  # type: ignore[attr-defined]
        return draining
    status, checks = readiness()
    circuits: dict[str, str] | str = "unknown"
    if checks["redis"].ok:
        try:
            circuits = open_circuits()
        except Exception as exc:  # noqa: BLE001
            circuits = type(exc).__name__
    response = JsonResponse(
        {
            "status": status,
            "checks": {name: check.as_dict() for name, check in checks.items()},
            "circuits": circuits,
        },
        status=503 if status == "unavailable" else 200,
        headers={"Cache-Control": "no-store"},
    )
    # An unready instance is an answer, not a server error: the access log has it, django.request need not.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


class ProbeMiddleware:
    """``/healthz``, ``/readyz`` and ``/metrics`` answered first, before host validation and the HTTPS redirect
    (see the module's docstring); each view does its own access control. Everything else goes on as usual."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        from muxer_project.metrics import metrics_view

        self.get_response = get_response
        self.probes: dict[str, Callable[[HttpRequest], HttpResponse]] = {
            "/healthz": healthz,
            "/readyz": readyz,
            "/metrics": metrics_view,
        }

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.probes.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)
