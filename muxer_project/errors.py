"""The one error type every API surface raises, rendered in OpenAI's shape.

``{"error": {"message", "type", "param", "code"}}`` with a precise HTTP status.
Messages never contain secrets: no API keys, provider keys or prompt text.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

logger = logging.getLogger(__name__)

# What the database raises when it cannot be reached, refuses connections, or drops them mid-query (or a
# statement times out). Other database errors are bugs and stay 500s.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
# Seconds a client is told to wait before retrying a 503 of a store outage.
RETRY_AFTER_OUTAGE_SECONDS = 5


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())


def invalid_request(message: str, *, param: str | None = None, code: str | None = "invalid_request_error") -> APIError:
    return APIError(400, message, type="invalid_request_error", param=param, code=code)


def invalid_api_key(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def model_not_found(model: str, reason: str = "does not exist") -> APIError:
    return APIError(
        404, f"The model '{model}' {reason}.", type="invalid_request_error", code="model_not_found", param="model"
    )


def permission_denied(message: str) -> APIError:
    return APIError(403, message, type="invalid_request_error", code="permission_denied")


def not_found(message: str = "Not found.") -> APIError:
    return APIError(404, message, type="invalid_request_error", code="not_found")


def service_unavailable(message: str = "The gateway cannot reach its database; try again shortly.") -> APIError:
    """A dependency the request needs is down: retryable, never a 500."""
    return APIError(
        503,
        message,
        type="server_error",
        code="service_unavailable",
        headers={"retry-after": str(RETRY_AFTER_OUTAGE_SECONDS)},
    )


def overloaded() -> APIError:
    """The worker is at its cap of requests in flight; another worker (or this one in a second) can serve."""
    return APIError(
        503,
        "The gateway is at capacity; retry shortly.",
        type="server_error",
        code="overloaded",
        headers={"retry-after": "1"},
    )


_UNAVAILABLE_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>Temporarily unavailable</title>"
    "<h1>Temporarily unavailable</h1><p>ModelMuxer cannot reach its database right now. "
    "Please try again in a moment.</p></html>"
)


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A view that hits an unreachable database answers 503 (JSON for the API, a plain page for the console),
    not a 500. No template: rendering the site's base template would ask the database for the user again."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        logger.warning("database unavailable on %s (%s)", request.method, type(exception).__name__)
        return database_unavailable_response(request)


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    error = service_unavailable()
    if request.path.startswith(("/v1/", "/api/")):
        response: HttpResponse = JsonResponse(error.body(), status=503, headers=error.headers)
    else:
        response = HttpResponse(_UNAVAILABLE_PAGE, status=503, headers=error.headers)
    # An outage is logged once above; django.request need not log it again as an error.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response
