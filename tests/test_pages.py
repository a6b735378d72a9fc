from __future__ import annotations

from django.test import Client


def test_landing_page_points_at_the_api(client: Client) -> None:
    response = client.get("/", HTTP_HOST="gw.example.com")
    assert response.status_code == 200
    assert b"http://gw.example.com/v1" in response.content


def test_unknown_api_path_gets_an_openai_shaped_404(client: Client) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
