"""``GET /api/orgs/<org>/usage/`` (grouped sums) and ``/usage/export.csv`` (raw records as CSV)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections
from django.http import StreamingHttpResponse
from django.test import AsyncClient
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from accounts.models import APIKey, Organization, Role, Team, User
from billing.models import UsageRecord, UsageStatus
from billing.rollups import usage_records_expire, usage_rollup_build
from billing.selectors import EXPORT_COLUMNS, UsageQuery, usage_records_pages
from tests.billing.test_rollups import make_record
from tests.conftest import Tenant
from tests.factories import MembershipFactory, OrganizationFactory, TeamFactory, issue_key
from tests.routing.harness import in_thread

NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)
RANGE = {"since": "2026-03-10", "until": "2026-03-12"}


@pytest.fixture(autouse=True)
def now(monkeypatch: pytest.MonkeyPatch) -> datetime:
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    return NOW


@dataclass
class Usage:
    organization: Organization
    owner: User
    member: User
    key_a: APIKey
    key_b: APIKey
    team: Team
    theirs: APIKey
    their_team: Team
    records: list[UsageRecord]


@pytest.fixture
def usage(tenant: Tenant) -> Usage:
    """Five records of ours over three days (cost $0.001635 in all) and one of another organization's."""
    org, owner, member = tenant.organization, tenant.owner, tenant.member
    team = TeamFactory.create(organization=org)
    key_a = issue_key(org, created_by=owner, name="a").api_key
    key_b = issue_key(org, created_by=owner, name="b", team=team).api_key
    other = OrganizationFactory.create()
    their_team = TeamFactory.create(organization=other)
    theirs = issue_key(other, name="theirs", team=their_team).api_key
    at = datetime(2026, 3, 10, tzinfo=UTC)
    records = [
        make_record(key_a, created_at=at + timedelta(hours=9), tokens=(100, 50, 20, 0), cost="0.001", user=owner),
        make_record(
            key_a, created_at=at + timedelta(hours=15), status=UsageStatus.ERROR, tokens=(40, 0, 0, 0), cost="0",
            user=owner, prompt_features=[[1.0, 2.0]], error_code="upstream_error",
        ),
        make_record(
            key_b, created_at=at + timedelta(days=1, hours=10), model="claude-haiku-4-5", provider="anthropic",
            tokens=(200, 80, 0, 30), cost="0.0004", user=member, stream=True, route_strategy="cascade",
        ),
        make_record(
            key_b, created_at=at + timedelta(days=2) - timedelta(seconds=1), status=UsageStatus.ESCALATED,
            tokens=(10, 5, 0, 0), cost="0.00001", user=member, request_id="req_cascade", attempt=1,
        ),
        make_record(
            key_b, created_at=at + timedelta(days=2), model="gpt-4o", tokens=(10, 20, 0, 0), cost="0.000225",
            user=member, request_id="req_cascade", attempt=2,
        ),
    ]  # fmt: skip
    make_record(theirs, created_at=at + timedelta(hours=12), tokens=(999, 999, 0, 0), cost="9")
    return Usage(org, owner, member, key_a, key_b, team, theirs, their_team, records)


def url(organization: Organization, name: str = "usage") -> str:
    return reverse(name, args=[organization.slug])


def get(user: User | None, organization: Organization, name: str = "usage", **params: Any) -> Any:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client.get(url(organization, name), params)


def metrics(requests: int, errors: int, tokens: tuple[int, int, int, int], cost: str) -> dict[str, Any]:
    return {
        "requests": requests,
        "errors": errors,
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "cached_input_tokens": tokens[2],
        "reasoning_tokens": tokens[3],
        "cost_usd": cost,
    }


ALL = metrics(3, 2, (360, 155, 20, 30), "0.0016350000")


def assert_error(response: Any, status: int, param: str | None) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


# --- who may read ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER, Role.BILLING])
def test_every_member_reads_the_usage(usage: Usage, role: str) -> None:
    user = MembershipFactory.create(organization=usage.organization, role=role).user

    response = get(user, usage.organization, **RANGE)

    assert response.status_code == 200
    assert response.json()["totals"] == ALL


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["usage", "usage-export"])
def test_the_outsider_gets_404(usage: Usage, outsider: User, name: str) -> None:
    assert_error(get(outsider, usage.organization, name, **RANGE), 404, None)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["usage", "usage-export"])
def test_anonymous_callers_are_refused(usage: Usage, name: str) -> None:
    assert get(None, usage.organization, name).status_code in (401, 403)


@pytest.mark.django_db
def test_the_outsider_sees_only_their_own_organizations_usage(usage: Usage, outsider: User) -> None:
    theirs = usage.theirs.organization
    MembershipFactory.create(organization=theirs, user=outsider, role=Role.OWNER)

    body = get(outsider, theirs, **RANGE).json()

    assert body["totals"] == metrics(1, 0, (999, 999, 0, 0), "9.0000000000")


@pytest.mark.django_db
def test_writing_is_not_allowed(usage: Usage) -> None:
    client = APIClient()
    client.force_authenticate(usage.owner)

    assert client.post(url(usage.organization), {}, format="json").status_code == 405


# --- sums and groups ------------------------------------------------------------------------


@pytest.mark.django_db
def test_without_grouping_there_is_one_row_and_the_totals(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, **RANGE).json()

    assert body["object"] == "usage"
    assert (body["since"], body["until"]) == ("2026-03-10T00:00:00+00:00", "2026-03-13T00:00:00+00:00")
    assert body["group_by"] == []
    assert body["rollups_before"] is None
    assert body["data"] == [ALL]
    assert body["totals"] == ALL


@pytest.mark.django_db
def test_the_default_range_is_the_last_30_days(usage: Usage) -> None:
    make_record(usage.key_a, created_at=NOON_31_DAYS_AGO, cost="5")

    body = get(usage.owner, usage.organization).json()

    assert (body["since"], body["until"]) == ("2026-02-18T12:00:00+00:00", "2026-03-20T12:00:00+00:00")
    assert body["totals"] == ALL


NOON_31_DAYS_AGO = NOW - timedelta(days=31)


@pytest.mark.django_db
def test_grouped_by_model(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, group_by="model", **RANGE).json()

    assert body["group_by"] == ["model"]
    assert body["data"] == [
        {"model": "claude-haiku-4-5", **metrics(1, 0, (200, 80, 0, 30), "0.0004000000")},
        {"model": "gpt-4o", **metrics(1, 0, (10, 20, 0, 0), "0.0002250000")},
        # One success, one error and one escalated cascade attempt; every attempt is spend.
        {"model": "gpt-4o-mini", **metrics(1, 2, (150, 55, 20, 0), "0.0010100000")},
    ]
    assert body["totals"] == ALL


@pytest.mark.django_db
def test_grouped_by_utc_day(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, group_by="day", **RANGE).json()

    assert body["data"] == [
        {"day": "2026-03-10", **metrics(1, 1, (140, 50, 20, 0), "0.0010000000")},
        {"day": "2026-03-11", **metrics(1, 1, (210, 85, 0, 30), "0.0004100000")},
        {"day": "2026-03-12", **metrics(1, 0, (10, 20, 0, 0), "0.0002250000")},
    ]


@pytest.mark.django_db
def test_grouped_by_team_with_no_team_last(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, group_by="team", **RANGE).json()

    assert body["data"] == [
        {"team": usage.team.pk, **metrics(2, 1, (220, 105, 0, 30), "0.0006350000")},
        {"team": None, **metrics(1, 1, (140, 50, 20, 0), "0.0010000000")},
    ]


@pytest.mark.django_db
def test_grouped_by_status(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, group_by="status", **RANGE).json()

    assert body["data"] == [
        {"status": "error", **metrics(0, 1, (40, 0, 0, 0), "0.0000000000")},
        {"status": "escalated", **metrics(0, 1, (10, 5, 0, 0), "0.0000100000")},
        {"status": "ok", **metrics(3, 0, (310, 150, 20, 30), "0.0016250000")},
    ]


@pytest.mark.django_db
def test_grouped_by_user(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, group_by="user", **RANGE).json()

    assert body["data"] == [
        {"user": usage.owner.pk, **metrics(1, 1, (140, 50, 20, 0), "0.0010000000")},
        {"user": usage.member.pk, **metrics(2, 1, (220, 105, 0, 30), "0.0006350000")},
    ]


@pytest.mark.django_db
def test_grouped_by_several_fields(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, group_by="provider, api_key,provider", **RANGE).json()

    assert body["group_by"] == ["provider", "api_key"]
    assert [(row["provider"], row["api_key"], row["requests"], row["errors"]) for row in body["data"]] == [
        ("anthropic", usage.key_b.pk, 1, 0),
        ("openai", usage.key_a.pk, 1, 1),
        ("openai", usage.key_b.pk, 1, 1),
    ]
    assert body["totals"] == ALL


# --- filters -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"model": "gpt-4o-mini"}, metrics(1, 2, (150, 55, 20, 0), "0.0010100000")),
        ({"provider": "anthropic"}, metrics(1, 0, (200, 80, 0, 30), "0.0004000000")),
        ({"status": "error"}, metrics(0, 1, (40, 0, 0, 0), "0.0000000000")),
        ({"model": "gpt-4o-mini", "status": "ok"}, metrics(1, 0, (100, 50, 20, 0), "0.0010000000")),
        ({"model": "no-such-model"}, metrics(0, 0, (0, 0, 0, 0), "0.0000000000")),
    ],
)
def test_filters(usage: Usage, params: dict[str, str], expected: dict[str, Any]) -> None:
    body = get(usage.owner, usage.organization, **RANGE, **params).json()

    assert body["totals"] == expected


@pytest.mark.django_db
def test_filtered_by_api_key_and_by_team(usage: Usage) -> None:
    by_key = get(usage.owner, usage.organization, api_key=usage.key_b.pk, **RANGE).json()
    by_team = get(usage.owner, usage.organization, team=usage.team.pk, **RANGE).json()

    assert by_key["totals"] == by_team["totals"] == metrics(2, 1, (220, 105, 0, 30), "0.0006350000")


@pytest.mark.django_db
def test_a_date_until_includes_its_whole_day(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, since="2026-03-11", until="2026-03-11").json()

    # 10:00 and 23:59:59 on the 11th; not midnight on the 12th.
    assert (body["totals"]["requests"], body["totals"]["errors"]) == (1, 1)


@pytest.mark.django_db
def test_datetimes_are_since_inclusive_and_until_exclusive(usage: Usage) -> None:
    body = get(usage.owner, usage.organization, since="2026-03-11T10:00:00Z", until="2026-03-12T00:00:00Z").json()

    assert body["totals"] == metrics(1, 1, (210, 85, 0, 30), "0.0004100000")
    # A datetime without an offset is UTC; with one, it is converted.
    naive = get(usage.owner, usage.organization, since="2026-03-11T10:00:00", until="2026-03-12T01:00:00+01:00")
    assert naive.json()["totals"] == body["totals"]


@pytest.mark.django_db
@pytest.mark.parametrize("param", ["api_key", "team"])
def test_another_organizations_key_or_team_is_404(usage: Usage, param: str) -> None:
    foreign: dict[str, Any] = {param: usage.theirs.pk if param == "api_key" else usage.their_team.pk}

    response = get(usage.owner, usage.organization, **foreign, **RANGE)

    assert_error(response, 404, None)
    assert b"theirs" not in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("param", ["api_key", "team"])
def test_an_unknown_key_or_team_is_404(usage: Usage, param: str) -> None:
    unknown: dict[str, Any] = {param: 987654}

    assert_error(get(usage.owner, usage.organization, **unknown), 404, None)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "last tuesday"}, "since"),
        ({"since": "2026-02-30"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"since": "2026-03-12", "until": "2026-03-10"}, "until"),
        ({"since": "2026-03-12T00:00:00Z", "until": "2026-03-12T00:00:00Z"}, "until"),
        ({"group_by": "day,week"}, "group_by"),
        ({"status": "fine"}, "status"),
        ({"api_key": "abc"}, "api_key"),
        ({"team": "0"}, "team"),
        ({"modle": "gpt-4o"}, "modle"),
    ],
)
@pytest.mark.parametrize("name", ["usage", "usage-export"])
def test_bad_parameters_are_400_naming_the_parameter(
    usage: Usage, params: dict[str, str], param: str, name: str
) -> None:
    response = get(usage.owner, usage.organization, name, **params)

    assert_error(response, 400, param)
    assert response.json()["error"]["message"].startswith(f"'{param}': ")


# --- after retention: older days from the rollups --------------------------------------------


@pytest.mark.django_db
def test_days_whose_records_aged_out_are_read_from_the_rollups(usage: Usage, settings: SettingsWrapper) -> None:
    settings.MUXER_USAGE_RETENTION_DAYS = 5  # the cutoff is 2026-03-15: all five records go
    for day in (date(2026, 3, 10), date(2026, 3, 11), date(2026, 3, 12)):
        usage_rollup_build(day=day)
    assert usage_records_expire().deleted == 6
    make_record(usage.key_a, created_at=datetime(2026, 3, 16, 8, tzinfo=UTC), tokens=(1, 2, 0, 0), cost="1")

    body = get(usage.owner, usage.organization, since="2026-03-10", until="2026-03-16", group_by="day").json()

    assert body["rollups_before"] == "2026-03-15"
    assert body["data"] == [
        {"day": "2026-03-10", **metrics(1, 1, (140, 50, 20, 0), "0.0010000000")},
        {"day": "2026-03-11", **metrics(1, 1, (210, 85, 0, 30), "0.0004100000")},
        {"day": "2026-03-12", **metrics(1, 0, (10, 20, 0, 0), "0.0002250000")},
        {"day": "2026-03-16", **metrics(1, 0, (1, 2, 0, 0), "1.0000000000")},
    ]
    grouped = get(usage.owner, usage.organization, since="2026-03-10", until="2026-03-16", group_by="team").json()
    assert grouped["data"][0] == {"team": usage.team.pk, **metrics(2, 1, (220, 105, 0, 30), "0.0006350000")}
    filtered = get(usage.owner, usage.organization, since="2026-03-10", api_key=usage.key_b.pk).json()
    assert filtered["totals"] == metrics(2, 1, (220, 105, 0, 30), "0.0006350000")


@pytest.mark.django_db
@pytest.mark.parametrize("params", [{"group_by": "user"}, {"group_by": "day,status"}, {"status": "ok"}])
def test_per_user_or_status_detail_before_the_cutoff_is_400(
    usage: Usage, settings: SettingsWrapper, params: dict[str, str]
) -> None:
    settings.MUXER_USAGE_RETENTION_DAYS = 5

    response = get(usage.owner, usage.organization, since="2026-03-10", **params)

    assert_error(response, 400, "since")
    assert "2026-03-15" in response.json()["error"]["message"]
    # From the cutoff on, the records answer it.
    assert get(usage.owner, usage.organization, since="2026-03-15", **params).status_code == 200


@pytest.mark.django_db
def test_zero_retention_reads_only_records(usage: Usage, settings: SettingsWrapper) -> None:
    settings.MUXER_USAGE_RETENTION_DAYS = 0

    body = get(usage.owner, usage.organization, since="2000-01-01", group_by="user").json()

    assert body["rollups_before"] is None
    assert body["totals"] == ALL


# --- CSV export -----------------------------------------------------------------------------


def csv_rows(response: Any) -> list[list[str]]:
    content = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(content)))


@pytest.mark.django_db
def test_the_export_is_the_raw_records_as_csv(usage: Usage) -> None:
    response = get(usage.member, usage.organization, "usage-export", **RANGE)

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        f'attachment; filename="usage-{usage.organization.slug}-20260310-20260313.csv"'
    )
    header, *rows = csv_rows(response)
    assert header == list(EXPORT_COLUMNS)
    assert header == [
        "created_at", "request_id", "attempt", "api_key_id", "team_id", "user_id", "model", "provider", "status",
        "http_status", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "cost_usd",
        "latency_ms", "stream", "route_strategy",
    ]  # fmt: skip
    assert [row[1] for row in rows] == [r.request_id for r in usage.records]
    b = usage.key_b
    assert rows[2] == [
        "2026-03-11T10:00:00Z", usage.records[2].request_id, "1", str(b.pk), str(usage.team.pk),
        str(usage.member.pk), "claude-haiku-4-5", "anthropic", "ok", "200", "200", "80", "0", "30",
        "0.0004000000", "120", "true", "cascade",
    ]  # fmt: skip
    assert rows[1][4] == ""  # no team
    assert rows[1][8:10] == ["error", "502"]


@pytest.mark.django_db
def test_the_export_never_includes_prompt_features_or_other_organizations(usage: Usage) -> None:
    content = b"".join(get(usage.owner, usage.organization, "usage-export", **RANGE).streaming_content)

    assert b"prompt_features" not in content
    assert b"[[1.0, 2.0]]" not in content
    assert b"9.0000000000" not in content
    assert {row[3] for row in csv_rows(get(usage.owner, usage.organization, "usage-export", **RANGE))[1:]} == {
        str(usage.key_a.pk),
        str(usage.key_b.pk),
    }


@pytest.mark.django_db
def test_the_export_takes_the_same_filters(usage: Usage) -> None:
    response = get(usage.owner, usage.organization, "usage-export", api_key=usage.key_b.pk, status="ok", **RANGE)

    assert [row[6] for row in csv_rows(response)[1:]] == ["claude-haiku-4-5", "gpt-4o"]


@pytest.mark.django_db
def test_format_csv_or_accept_text_csv_on_the_usage_endpoint_exports(usage: Usage) -> None:
    client = APIClient()
    client.force_authenticate(usage.owner)

    by_format = client.get(url(usage.organization), {"format": "csv", **RANGE})
    by_accept = client.get(url(usage.organization), RANGE, HTTP_ACCEPT="text/csv")

    assert by_format["Content-Type"] == by_accept["Content-Type"] == "text/csv; charset=utf-8"
    rows = csv_rows(by_format)
    assert rows == csv_rows(by_accept)
    assert len(rows) == 6


@pytest.mark.django_db
def test_export_pages_continue_past_records_with_the_same_time(usage: Usage) -> None:
    same = datetime(2026, 3, 11, 10, tzinfo=UTC)  # record 2's time, three more times
    extra = [make_record(usage.key_a, created_at=same) for _ in range(3)]
    query = UsageQuery(since=datetime(2026, 3, 10, tzinfo=UTC), until=datetime(2026, 3, 13, tzinfo=UTC))

    pages = list(usage_records_pages(organization=usage.organization, query=query, page_size=2))

    assert [len(page) for page in pages] == [2, 2, 2, 2]
    ids = [row[1] for page in pages for row in page]
    expected = [*usage.records[:3], *extra, *usage.records[3:]]
    assert ids == [r.request_id for r in expected]


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_export_streams_page_by_page(tenant: Tenant) -> None:
    def setup() -> None:
        key = issue_key(tenant.organization, created_by=tenant.owner).api_key
        for second in range(2500):  # more than one page of 2,000
            make_record(key, created_at=datetime(2026, 3, 11, tzinfo=UTC) + timedelta(seconds=second))

    await in_thread(setup)
    client = AsyncClient()
    await client.aforce_login(tenant.member)

    response = await client.get(url(tenant.organization, "usage-export"), RANGE)

    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response.is_async
    chunks = [chunk async for chunk in response.streaming_content]
    # The pages were read on the shared database thread; close its connection as a server would.
    await in_thread(connections.close_all)
    assert len(chunks) == 3  # the header, then two pages
    lines = b"".join(chunks).decode().splitlines()
    assert len(lines) == 2501
    assert lines[-1].startswith("2026-03-11T00:41:39Z,")


# --- on PostgreSQL: exact sums --------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db
def test_sums_are_exact_to_ten_places(usage: Usage) -> None:
    for cost in ("12345678.1234567891", "0.0000000001", "7.7777777777"):
        make_record(usage.key_a, created_at=datetime(2026, 3, 10, 1, tzinfo=UTC), cost=cost)

    body = get(usage.owner, usage.organization, **RANGE).json()

    assert Decimal(body["totals"]["cost_usd"]) == Decimal("12345685.9012345669") + Decimal("0.001635")
