"""The console's writes go through the management API's own views, in-process.

A console form is a thin client: it turns its fields into the JSON body the
API takes and calls the API view with the signed-in user, so the console
enforces exactly the API's rules (roles, the key creator ceiling, the
policy and scope checks) and shows the API's own error messages. The outer
console request has already passed Django's CSRF check, so the inner one is
marked as checked.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, QueryDict
from rest_framework.views import APIView

_DROPPED_META = ("HTTP_AUTHORIZATION", "CONTENT_TYPE", "CONTENT_LENGTH", "QUERY_STRING", "REQUEST_METHOD")


@dataclass(frozen=True)
class APIResult:
    status: int
    data: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> dict[str, Any]:
        if self.ok or not isinstance(self.data, dict):
            return {}
        return self.data.get("error") or {}

    @property
    def message(self) -> str:
        return str(self.error.get("message") or "")

    @property
    def param(self) -> str | None:
        return self.error.get("param")


def api_call(
    request: HttpRequest,
    view: type[APIView],
    *,
    method: str = "GET",
    data: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    **kwargs: Any,
) -> APIResult:
    """Run ``view`` for ``request.user`` with ``data`` as its JSON body; its status and parsed body."""
    body = b"" if data is None else json.dumps(data, default=str).encode()
    query_string = urlencode(query or {}, doseq=True)
    inner = HttpRequest()
    inner.method = method
    inner.path = inner.path_info = request.path
    inner.META = {k: v for k, v in request.META.items() if k not in _DROPPED_META}
    inner.META.update(
        REQUEST_METHOD=method,
        QUERY_STRING=query_string,
        CONTENT_TYPE="application/json",
        CONTENT_LENGTH=str(len(body)),
    )
    inner.GET = QueryDict(query_string)
    inner.COOKIES = request.COOKIES
    inner._stream = io.BytesIO(body)  # type: ignore[attr-defined]
    inner._read_started = False  # type: ignore[attr-defined]  # DRF asks before reading the body
    inner.user = request.user
    inner.session = request.session
    inner._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
    response = view.as_view()(inner, **kwargs)
    return APIResult(status=response.status_code, data=getattr(response, "data", None))
