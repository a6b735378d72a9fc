"""Structured logs: every line is one JSON object (structlog), and none carries a secret or PII.

All loggers, ours and the libraries', go through one formatter, so a line
from Django or Celery has the same shape as ours: ``timestamp``, ``level``,
``logger``, ``event`` and any bound fields, including the ``request_id`` of
the request being served. The access log (``muxer.access``) writes one line
per request with its outcome (:func:`access_line`).

Before a line is written, :func:`scrub` replaces anything shaped like a
credential (ModelMuxer and provider API keys, bearer tokens, JWTs) or like
PII (email addresses, card and phone numbers) in every string value. The code
avoids logging such values in the first place; the scrubber is the net under it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

ACCESS_LOGGER = "muxer.access"
_access = logging.getLogger(ACCESS_LOGGER)

_SCRUBBED = (
    # ModelMuxer API keys and invitation tokens (a key's 16-character lookup prefix alone is not secret).
    (re.compile(r"\bmm_(?:live|inv)_[A-Za-z0-9]{20,}"), "[api-key]"),
    # Provider keys: OpenAI/Anthropic/Together (sk-...), Groq (gsk_...), Google (AIza...).
    (re.compile(r"\b(?:sk|gsk)[-_][A-Za-z0-9_\-]{16,}"), "[provider-key]"),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"), "[provider-key]"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+"), "[jwt]"),
    (re.compile(r"(?i:\b(bearer|basic))\s+[A-Za-z0-9._~+/\-]{8,}=*"), r"\1 [credential]"),
    (re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"), "[email]"),
    # 13-19 digits, optionally grouped by spaces or dashes: card numbers and the like.
    (re.compile(r"\b(?:\d[ \-]?){12,18}\d\b"), "[number]"),
    # Phone numbers written with a leading + or in the common (555) 123-4567 shape.
    (re.compile(r"\+\d[\d \-().]{7,}\d|\(\d{3}\)\s?\d{3}-\d{4}"), "[phone]"),
)


# One pass that finds whether any of the patterns matches: most values (ids, names, numbers) match none,
# and a line is written per request.
_ANY = re.compile("|".join(f"(?:{pattern.pattern})" for pattern, _ in _SCRUBBED))


def scrub_text(text: str) -> str:
    if len(text) < 6 or _ANY.search(text) is None:
        return text
    for pattern, replacement in _SCRUBBED:
        text = pattern.sub(replacement, text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {key: _scrub_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(item) for item in value]
    return value


# Fields whose values the gateway itself produces from a fixed vocabulary or an id format; scrubbing them
# would only cost time on every line.
_SAFE_FIELDS = frozenset(
    {"timestamp", "level", "logger", "request_id", "endpoint", "method", "route", "model", "provider", "strategy",
     "cache", "key_prefix"}
)  # fmt: skip


def scrub(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: scrub every string value (the message, fields, a formatted traceback)."""
    event.pop("color_message", None)  # uvicorn's copy of the message with terminal colours
    for key, value in event.items():
        if key not in _SAFE_FIELDS:
            event[key] = _scrub_value(value)
    return event


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=repr).decode()


SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
]


class StructuredFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter, with a short path for the access log's line.

    That line is written once per request on the proxy's hot path, and its
    fields are the gateway's own (ids, names, numbers): it is rendered directly
    as the same JSON the processor chain would make, about five times faster.
    Only its free-text fields are scrubbed.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "access", None)
        if record.name != ACCESS_LOGGER or not isinstance(fields, dict):
            return super().format(record)
        line = {
            key: scrub_text(value) if key in ("route_reason", "error_code") and isinstance(value, str) else value
            for key, value in fields.items()
        }
        line.update(
            event=record.getMessage(),
            level=record.levelname.lower(),
            logger=record.name,
            timestamp=datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
        )
        return _dumps(line)


def logging_config(*, level: str, json: bool) -> dict[str, Any]:
    """The LOGGING setting: every record through structlog's formatter, JSON (or, for a terminal, console)."""
    renderer = structlog.processors.JSONRenderer(_dumps) if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": StructuredFormatter if json else structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": SHARED_PROCESSORS,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    scrub,
                    renderer,
                ],
            }
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # httpx logs every outbound request at INFO; on the proxy path that is one line per call.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            # Our access log replaces the servers' and Django's own request lines.
            "django.request": {"level": "ERROR"},
            "django.server": {"level": "WARNING"},
            # The servers install handlers of their own before the app loads; once it does, their lines
            # go through the same formatter as everyone's.
            "uvicorn": {"handlers": ["console"], "propagate": False},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
            "daphne": {"handlers": ["console"], "propagate": False},
            "daphne.access": {"level": "WARNING"},
        },
    }


def access_line(**fields: Any) -> None:
    """The request's one access-log line. Fields that are None are left out.

    The fields travel as one extra (``access``), which :class:`StructuredFormatter` renders directly.
    """
    if _access.isEnabledFor(logging.INFO):
        _access.info("request", extra={"access": {key: value for key, value in fields.items() if value is not None}})


class AccessLogMiddleware:
    """One access-log line for each request Django serves (the proxy's consumers write their own).

    The path is logged as its URL pattern (``console/reset/<uidb64>/<token>/``),
    never the raw path or query string, which can carry tokens and addresses.
    """

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=_request_id()):
            response = self.get_response(request)
            self._log(request, response, started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=_request_id()):
            response = await self.get_response(request)
            self._log(request, response, started)
        return response

    @staticmethod
    def _log(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
        match = request.resolver_match
        kwargs = match.kwargs if match is not None else {}
        access_line(
            request_id=_request_id(),
            method=request.method,
            route="/" + match.route if match is not None else "<unmatched>",
            status=response.status_code,
            org=kwargs.get("org"),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
        )


def _request_id() -> str | None:
    """The id the audit's request context gave this request (it runs first and answers with X-Request-ID)."""
    from audit.context import current

    context = current()
    return context.request_id if context is not None else None
