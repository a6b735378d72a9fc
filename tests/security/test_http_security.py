"""Security headers everywhere, a CSP on HTML pages, and CORS for the API's browser clients."""

from __future__ import annotations

import pytest
from channels.testing import HttpCommunicator
from django.http import HttpResponseBase
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from accounts.http_security import cors_headers, cors_is_preflight
from muxer_project.asgi import application

pytestmark = pytest.mark.django_db

APP = "https://app.example.com"


@pytest.fixture
def cors(settings: Settings) -> None:
    settings.CORS_ALLOWED_ORIGINS = [APP]


def test_api_responses_carry_the_security_headers(client: Client) -> None:
    response = client.get(reverse("org-list"))

    assert response.status_code == 401
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_console_pages_carry_the_security_headers_and_a_csp(client: Client) -> None:
    response = client.get(reverse("console-login"))

    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    csp = {d.split()[0]: d.split()[1:] for d in response["Content-Security-Policy"].split("; ")}
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]


def test_json_responses_get_no_csp(client: Client) -> None:
    assert "Content-Security-Policy" not in client.get(reverse("org-list"))


def test_the_csp_comes_from_settings(client: Client, settings: Settings) -> None:
    settings.MUXER_CONTENT_SECURITY_POLICY = "default-src 'none'"

    assert client.get(reverse("console-login"))["Content-Security-Policy"] == "default-src 'none'"


def preflight(client: Client, origin: str, path: str = "/api/orgs/") -> HttpResponseBase:
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type, x-stainless-os, openai-organization",
    )


def test_a_preflight_from_an_allowed_origin_is_answered(client: Client, cors: None) -> None:
    response = preflight(client, APP)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == APP
    allowed = {h.strip() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os", "openai-organization", "x-api-key",
            "anthropic-version", "idempotency-key", "x-muxer-strategy"} <= allowed  # fmt: skip
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response


def test_a_preflight_from_another_origin_gets_no_cors_headers(client: Client, cors: None) -> None:
    response = preflight(client, "https://evil.example")

    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Headers" not in response


def test_no_origin_is_allowed_by_default(client: Client) -> None:
    assert "Access-Control-Allow-Origin" not in preflight(client, APP)


def test_an_allowed_origin_may_read_the_gateway_headers(client: Client, cors: None) -> None:
    response = client.get(reverse("org-list"), HTTP_ORIGIN=APP)

    assert response["Access-Control-Allow-Origin"] == APP
    exposed = {h.strip() for h in response["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "retry-after", "x-ratelimit-remaining-requests", "x-muxer-cost-usd"} <= exposed


def test_cors_covers_only_the_api(client: Client, cors: None) -> None:
    response = client.get(reverse("console-login"), HTTP_ORIGIN=APP)

    assert "Access-Control-Allow-Origin" not in response


# --- the helper for the /v1/ consumers (Channels, outside Django's middleware) ---


def test_the_consumer_helper_answers_a_preflight_like_the_middleware(client: Client, cors: None) -> None:
    scope_headers = [
        (b"origin", APP.encode()),
        (b"access-control-request-method", b"POST"),
        (b"access-control-request-headers", b"authorization"),
    ]
    assert cors_is_preflight("OPTIONS", scope_headers)
    assert not cors_is_preflight("POST", scope_headers)

    ours = dict(cors_headers("OPTIONS", scope_headers))
    middleware = preflight(client, APP)

    assert ours[b"access-control-allow-origin"] == APP.encode()
    for name in ["access-control-allow-headers", "access-control-allow-methods", "access-control-max-age"]:
        assert ours[name.encode()].decode() == middleware[name]
    assert b"access-control-expose-headers" in ours


def test_the_consumer_helper_adds_nothing_for_another_origin(cors: None) -> None:
    headers = cors_headers("POST", [(b"origin", b"https://evil.example")])

    assert headers == [(b"vary", b"origin")]
    assert cors_headers("POST", []) == [(b"vary", b"origin")]


def test_the_consumer_helper_exposes_headers_on_an_actual_request(cors: None) -> None:
    headers = dict(cors_headers("POST", [(b"origin", APP.encode())]))

    assert headers[b"access-control-allow-origin"] == APP.encode()
    assert b"x-request-id" in headers[b"access-control-expose-headers"]
    assert b"access-control-allow-methods" not in headers


# --- the /v1/ consumers themselves -----------------------------------------------------


async def consumer_response(method: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> dict[bytes, bytes]:
    communicator = HttpCommunicator(application, method, "/v1/chat/completions", body=body, headers=headers)
    response = await communicator.get_response(timeout=10)
    return {b":status": str(response["status"]).encode(), **dict(response["headers"])}


@pytest.mark.asyncio
async def test_the_proxy_answers_a_browser_preflight_from_an_allowed_origin(cors: None) -> None:
    got = await consumer_response(
        "OPTIONS",
        [(b"origin", APP.encode()), (b"access-control-request-method", b"POST"),
         (b"access-control-request-headers", b"authorization, content-type")],
    )  # fmt: skip

    assert got[b":status"] == b"204"
    assert got[b"access-control-allow-origin"] == APP.encode()
    assert b"authorization" in got[b"access-control-allow-headers"]


@pytest.mark.asyncio
async def test_proxy_answers_carry_cors_only_for_an_allowed_origin(cors: None) -> None:
    allowed = await consumer_response("POST", [(b"origin", APP.encode())], b"{}")
    other = await consumer_response("POST", [(b"origin", b"https://evil.example")], b"{}")
    preflight_elsewhere = await consumer_response(
        "OPTIONS", [(b"origin", b"https://evil.example"), (b"access-control-request-method", b"POST")]
    )

    assert allowed[b":status"] == b"401"
    assert allowed[b"access-control-allow-origin"] == APP.encode()
    assert b"x-ratelimit-limit-requests" in allowed[b"access-control-expose-headers"]
    assert allowed[b"x-content-type-options"] == b"nosniff"
    assert b"access-control-allow-origin" not in other
    assert b"access-control-allow-origin" not in preflight_elsewhere
