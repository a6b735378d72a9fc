"""The served OpenAPI schema documents the answers the API really gives (schemathesis checks it against them too).

Every list endpoint is documented as the ``{"object": "list", "data": [...]}`` envelope
it returns, every error as the OpenAI error shape, and every view under
``/api/orgs/<org>/`` with its 401, 403 and 404. The query parameters that take a date
accept what the schema says, and refuse the rest with a 400.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from routing.openapi import ORG_ERRORS

from .endpoints import World, build_world

ERROR_REF = "#/components/schemas/Error"


@cache
def openapi() -> dict[str, Any]:
    schema: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    return schema


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = openapi()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in openapi()["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_every_org_scoped_operation_documents_its_401_403_404_in_the_error_shape() -> None:
    missing = [
        f"{method.upper()} {path} {status}"
        for path, method, operation in operations()
        if path.startswith("/api/orgs/{org}/")
        for status in ORG_ERRORS
        if operation["responses"].get(str(status), {}).get("content", {}).get("application/json", {}).get("schema")
        != {"$ref": ERROR_REF}
    ]
    assert missing == []


def test_every_4xx_of_the_management_api_is_the_error_shape_in_json() -> None:
    documented = [
        (f"{method.upper()} {path} {status}", response.get("content", {}))
        for path, method, operation in operations()
        if path.startswith("/api/") and path != "/api/schema/"
        for status, response in operation["responses"].items()
        if status.startswith("4")
    ]
    assert len(documented) > 150
    assert [
        where for where, content in documented if content != {"application/json": {"schema": {"$ref": ERROR_REF}}}
    ] == []
    error = resolve({"$ref": ERROR_REF})["properties"]["error"]
    assert sorted(resolve(error)["required"]) == ["code", "message", "param", "type"]


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/api/orgs/", set()),
        ("/api/orgs/{org}/keys/", set()),
        ("/api/orgs/{org}/teams/", set()),
        ("/api/orgs/{org}/members/", set()),
        ("/api/orgs/{org}/invitations/", set()),
        ("/api/orgs/{org}/budgets/", set()),
        ("/api/orgs/{org}/credentials/", set()),
        ("/api/orgs/{org}/notifications/", {"unread_count"}),
        ("/api/orgs/{org}/recommendations/", {"days", "total_monthly_saving_usd"}),
        ("/api/orgs/{org}/audit-events/", {"has_more", "next_before"}),
        ("/v1/models", set()),
    ],
)
def test_a_list_is_documented_as_its_envelope(path: str, extra: set[str]) -> None:
    body = resolve(openapi()["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(body["properties"]) == {"object", "data", *extra}
    assert set(body["required"]) == {"object", "data", *extra}
    assert resolve(body["properties"]["object"]) == {"type": "string", "enum": ["list"]}
    assert body["properties"]["data"]["type"] == "array"


def test_date_parameters_are_documented_as_a_date_or_a_datetime() -> None:
    either = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]}
    for path in ("usage/", "usage/export.csv", "audit-events/", "audit-events/export"):
        parameters = {
            p["name"]: p["schema"] for p in openapi()["paths"][f"/api/orgs/{{org}}/{path}"]["get"]["parameters"]
        }
        assert parameters["since"] == either, path
        assert parameters["until"] == either, path


def test_only_the_summary_documents_group_by() -> None:
    def names(path: str) -> set[str]:
        return {p["name"] for p in openapi()["paths"][f"/api/orgs/{{org}}/{path}"]["get"]["parameters"]}

    assert "group_by" in names("usage/")
    assert "group_by" not in names("usage/export.csv")


@pytest.fixture
def world(catalog: None) -> World:
    return build_world("dated")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["usage/", "usage/export.csv", "audit-events/", "audit-events/export"])
@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("until", "9999-12-31"),  # a day past it would overflow
        ("since", "0001-01-01"),
        ("until", "0001-01-01T00:00:00+05:00"),  # in UTC, before year 1
        ("since", "1899-12-31T23:59:59Z"),
    ],
)
def test_a_date_out_of_range_is_a_400_naming_it(world: World, path: str, param: str, value: str) -> None:
    client = APIClient()
    response = client.get(f"/api/orgs/{world.slug}/{path}", {param: value}, HTTP_AUTHORIZATION=world.bearer("owner"))
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["param"] == param
    assert "1900-01-01" in response.json()["error"]["message"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["usage/", "audit-events/"])
def test_dates_at_the_edges_of_the_range_are_accepted(world: World, path: str) -> None:
    response = APIClient().get(
        f"/api/orgs/{world.slug}/{path}",
        {"since": "1900-01-01", "until": "8999-12-30T23:59:59-05:00"},
        HTTP_AUTHORIZATION=world.bearer("owner"),
    )
    assert response.status_code == 200, response.content
    assert response.json()["object"] in ("usage", "list")
