"""HTTP hardening that Django does not ship: a Content-Security-Policy on HTML pages, and CORS
headers for the Channels consumers on ``/v1/`` (which Django's middleware never sees)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from corsheaders.conf import conf as cors
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Sets ``MUXER_CONTENT_SECURITY_POLICY`` on every HTML response that has no policy of its own."""

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        policy: str = settings.MUXER_CONTENT_SECURITY_POLICY
        if (
            policy
            and "Content-Security-Policy" not in response
            and response.get("Content-Type", "").startswith("text/html")
        ):
            response["Content-Security-Policy"] = policy
        return response


Headers = list[tuple[bytes, bytes]]


def cors_origin_allowed(origin: str) -> bool:
    """Whether ``origin`` may call the API from a browser, by the ``CORS_*`` settings."""
    if cors.CORS_ALLOW_ALL_ORIGINS:
        return True
    try:
        url = urlsplit(origin)
    except ValueError:
        return False
    if origin == "null":
        return "null" in cors.CORS_ALLOWED_ORIGINS
    allowed = (urlsplit(o) for o in cors.CORS_ALLOWED_ORIGINS)
    return any(a.scheme == url.scheme and a.netloc == url.netloc for a in allowed) or any(
        re.match(pattern, origin) for pattern in cors.CORS_ALLOWED_ORIGIN_REGEXES
    )


def cors_is_preflight(method: str, headers: Headers) -> bool:
    return method == "OPTIONS" and any(name == b"access-control-request-method" for name, _ in headers)


def cors_headers(method: str, headers: Headers) -> Headers:
    """The CORS response headers for a request with these (ASGI, lower-case) headers.

    What ``corsheaders.middleware.CorsMiddleware`` adds to Django's responses,
    for an ASGI consumer: ``Vary: Origin`` always; the allow headers only for
    an allowed ``Origin``; and for a preflight the allowed methods, request
    headers and max age.
    """
    out: Headers = [(b"vary", b"origin")]
    origin = next((value.decode("latin-1") for name, value in headers if name == b"origin"), None)
    if not origin or not cors_origin_allowed(origin):
        return out
    if cors.CORS_ALLOW_ALL_ORIGINS and not cors.CORS_ALLOW_CREDENTIALS:
        out.append((b"access-control-allow-origin", b"*"))
    else:
        out.append((b"access-control-allow-origin", origin.encode("latin-1")))
    if cors.CORS_ALLOW_CREDENTIALS:
        out.append((b"access-control-allow-credentials", b"true"))
    if cors.CORS_EXPOSE_HEADERS:
        out.append((b"access-control-expose-headers", ", ".join(cors.CORS_EXPOSE_HEADERS).encode()))
    if method == "OPTIONS":
        out.append((b"access-control-allow-headers", ", ".join(cors.CORS_ALLOW_HEADERS).encode()))
        out.append((b"access-control-allow-methods", ", ".join(cors.CORS_ALLOW_METHODS).encode()))
        if cors.CORS_PREFLIGHT_MAX_AGE:
            out.append((b"access-control-max-age", str(cors.CORS_PREFLIGHT_MAX_AGE).encode()))
    return out
