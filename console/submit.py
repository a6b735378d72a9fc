"""The console's write handlers: a form (or a button) sent to a management-API view, then the page the browser gets.

Every management page answers a POST the same way: validate the form, call
the API view in-process (:func:`console.bridge.api_call`), and then either
re-render the page with the API's refusal at the API's status, or flash a
message and redirect (Post/Redirect/Get). :func:`submit` is that sequence;
a handler passes in only what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from rest_framework.views import APIView

from .bridge import APIResult, api_call
from .forms_manage import APIForm


def not_found_or(result: APIResult) -> APIResult:
    """The result, unless the API did not find what the URL names: then the console page is a 404 too."""
    if result.status == 404:
        raise Http404(result.message or "Not found.")
    return result


def no_store(response: HttpResponse) -> HttpResponse:
    """A page with a secret on it is kept by no cache."""
    response["Cache-Control"] = "no-store"
    return response


def done(request: HttpRequest, message: str, to: str, *args: Any) -> HttpResponse:
    """Flash ``message`` and redirect to the URL named ``to`` (with ``args``)."""
    messages.success(request, message)
    return redirect(to, *args)


def submit(
    request: HttpRequest,
    view: type[APIView],
    *,
    method: str,
    page: Callable[..., HttpResponse],
    success: Callable[[APIResult], HttpResponse],
    form: APIForm | None = None,
    query: dict[str, Any] | None = None,
    raise_404: bool = True,
    **api_kwargs: Any,
) -> HttpResponse:
    """Send ``form`` (or, for a button, no body) to the API view ``view``; the response for the browser.

    - ``form`` does not validate: ``page(status=400)``; ``page`` renders the page with this bound form.
    - The API answers 404: :class:`~django.http.Http404`, unless ``raise_404`` is false (the URL's own
      object exists, and what the API did not find is shown as a refusal).
    - The API refuses: with a form, its message goes on the form (:meth:`APIForm.add_api_error`) and the
      answer is ``page(status=<the API's status>)``; without one, ``page(error=<its message>, status=...)``.
    - The API accepts: ``success(result)``, usually :func:`done`.

    The body is ``form.api_body()``, ``query`` the query string, and ``api_kwargs`` the API view's URL
    arguments (``org=``, ``key_id=``, ...).
    """
    if form is not None and not form.is_valid():
        return page(status=400)
    body = None if form is None else form.api_body()
    result = api_call(request, view, method=method, data=body, query=query, **api_kwargs)
    if raise_404:
        not_found_or(result)
    if result.ok:
        return success(result)
    if form is None:
        return page(error=result.message, status=result.status)
    form.add_api_error(result)
    return page(status=result.status)
