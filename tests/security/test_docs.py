"""The API docs pages work offline: every asset comes from this server, and the CSP lets them run."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

ASSET = re.compile(rb'(?:src|href)="([^"]+)"')


def assets_of(html: bytes) -> list[str]:
    return [m.decode() for m in ASSET.findall(html)]


@pytest.mark.parametrize("name", ["api-docs", "api-redoc"])
def test_the_docs_page_loads_nothing_from_elsewhere(client: Client, name: str) -> None:
    response = client.get(reverse(name))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"http://" not in response.content
    assert b"https://" not in response.content
    assets = assets_of(response.content)
    assert assets
    for url in assets:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url


@pytest.mark.parametrize("name", ["api-docs", "api-redoc"])
def test_every_asset_of_the_docs_page_is_served(client: Client, name: str) -> None:
    page = client.get(reverse(name))

    static = [url for url in assets_of(page.content) if url.startswith("/static/")]
    assert any(url.endswith(".js") for url in static)
    for url in static:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.getvalue()


def test_swagger_runs_without_inline_scripts(client: Client) -> None:
    page = client.get(reverse("api-docs"))

    csp = page["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    scripts = re.findall(rb"<script([^>]*)>(.*?)</script>", page.content, re.S)
    assert scripts
    for attributes, body in scripts:
        assert b"src=" in attributes
        assert body.strip() == b""


def test_swaggers_own_script_points_at_the_schema(client: Client) -> None:
    page = client.get(reverse("api-docs"))
    script_url = next(url for url in assets_of(page.content) if url.startswith(reverse("api-docs")))

    script = client.get(script_url.replace("&amp;", "&"))

    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert reverse("schema").encode() in script.content
    assert b"SwaggerUIBundle" in script.content
    assert b'"validatorUrl": null' in script.content  # no badge from validator.swagger.io


def test_the_schema_documents_the_auth_and_gdpr_endpoints(client: Client) -> None:
    response = client.get(reverse("schema"), HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ["/api/auth/token/", "/api/auth/token/refresh/", "/api/auth/token/verify/", "/api/auth/logout/",
                 "/api/me/export/", "/api/me/erase/", "/api/orgs/{org}/export/"]:  # fmt: skip
        assert path in paths, path
    assert "jwtAuth" in response.json()["components"]["securitySchemes"]
