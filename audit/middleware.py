"""Binds the audit's request context (IP, user agent, request id) and answers with ``X-Request-ID``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import NoReverseMatch, reverse

from .context import REQUEST_ID_HEADER, bound, context_for


@cache
def _admin_prefix() -> str | None:
    try:
        return reverse("admin:index")
    except NoReverseMatch:
        return None


def _is_admin(request: HttpRequest) -> bool:
    prefix = _admin_prefix()
    return prefix is not None and request.path.startswith(prefix)


class RequestContextMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        with bound(context_for(request, is_admin=_is_admin(request))) as context:
            response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        response.headers[REQUEST_ID_HEADER] = context.request_id
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        with bound(context_for(request, is_admin=_is_admin(request))) as context:
            response = await self.get_response(request)  # type: ignore[misc]
        response.headers[REQUEST_ID_HEADER] = context.request_id
        return response
