"""DRF and Django error responses in the OpenAI error shape."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from muxer_project.errors import DATABASE_UNAVAILABLE, APIError, service_unavailable

logger = logging.getLogger(__name__)

_CODES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    406: ("invalid_request_error", "not_acceptable"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("requests", "rate_limit_exceeded"),
}


def _first_problem(detail: Any, path: str = "") -> tuple[str | None, str]:
    """The first field error in a DRF ``detail`` tree, as (param, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            sub = f"{path}.{key}" if path else str(key)
            return _first_problem(value, "" if key == "non_field_errors" else sub)
    if isinstance(detail, list) and detail:
        return _first_problem(detail[0], path)
    return path or None, str(detail)


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, APIError):
        return Response(exc.body(), status=exc.status, headers=exc.headers)
    if isinstance(exc, DATABASE_UNAVAILABLE):
        # The database is down or dropped the connection: a retryable 503, not a 500.
        logger.warning("database unavailable in %s (%s)", type(context.get("view")).__name__, type(exc).__name__)
        unavailable = service_unavailable()
        return Response(unavailable.body(), status=503, headers=unavailable.headers)
    if isinstance(exc, RequestDataTooBig):
        too_big = APIError(413, "The request body is larger than the API's limit.", code="request_too_large")
        return Response(too_big.body(), status=413)
    response = exception_handler(exc, context)
    if response is None:
        return None
    type_, code = _CODES.get(response.status_code, ("invalid_request_error", None))
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_problem(exc.detail)
        if param:
            message = f"'{param}': {message}"
    else:
        param, message = None, str(getattr(exc, "detail", exc))
    response.data = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return response


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(
        {
            "error": {
                "message": f"No route for {request.path}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "not_found",
            }
        },
        status=404,
    )


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(
        {
            "error": {
                "message": "Bad request.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
        status=400,
    )


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"error": {"message": "The gateway failed unexpectedly.", "type": "server_error", "param": None, "code": None}},
        status=500,
    )
