"""The request context: every response carries X-Request-ID, and events written during a request record
the client's address, user agent and request id, in sync and async code alike."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory
from django.urls import reverse
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from accounts.models import Organization, User
from audit import context
from audit.middleware import RequestContextMiddleware
from audit.models import AuditEvent
from audit.services import audit_event_record
from tests.factories import issue_key

GENERATED = re.compile(r"req_[0-9a-f]{32}")


def recording_view(request: HttpRequest) -> HttpResponse:
    event = audit_event_record(action="test.in_request", organization=None)
    return HttpResponse(str(event.pk))


async def async_recording_view(request: HttpRequest) -> HttpResponse:
    bound = context.current()
    return HttpResponse(bound.request_id if bound else "none")


def call(request: HttpRequest) -> HttpResponse:
    response = RequestContextMiddleware(recording_view)(request)
    assert isinstance(response, HttpResponse)
    return response


# --- the request id -----------------------------------------------------------------------------


def test_every_response_has_a_request_id(client: Client) -> None:
    response = client.get("/")

    assert GENERATED.fullmatch(response.headers["X-Request-ID"])


def test_two_requests_get_two_ids(client: Client) -> None:
    assert client.get("/").headers["X-Request-ID"] != client.get("/").headers["X-Request-ID"]


def test_a_sane_incoming_request_id_is_kept(client: Client) -> None:
    response = client.get("/", HTTP_X_REQUEST_ID="trace-42.a_B")

    assert response.headers["X-Request-ID"] == "trace-42.a_B"


@pytest.mark.parametrize("incoming", ["", "a" * 65, "has space", "semi;colon", "new\nline", "ünicode", "<script>"])
def test_an_unsafe_incoming_request_id_is_replaced(client: Client, incoming: str) -> None:
    response = client.get("/", HTTP_X_REQUEST_ID=incoming)

    assert GENERATED.fullmatch(response.headers["X-Request-ID"])


def test_an_api_error_carries_the_request_id_too(client: Client) -> None:
    response = client.get("/api/orgs/nope/audit-events/", HTTP_X_REQUEST_ID="err-1")

    assert response.status_code in (401, 403)
    assert response.headers["X-Request-ID"] == "err-1"


# --- the client's address -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_peer_address_is_recorded(rf: RequestFactory) -> None:
    response = call(rf.get("/", REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR="203.0.113.1"))

    assert AuditEvent.objects.get(pk=int(response.content)).ip == "198.51.100.7"


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "203.0.113.1", "198.51.100.7"),  # no trusted proxy: the header is the client's to forge
        (1, "203.0.113.66, 203.0.113.1", "203.0.113.1"),  # the one proxy's entry; the forged one left of it ignored
        (2, "203.0.113.66, 203.0.113.1, 10.0.0.2", "203.0.113.1"),
        (3, "203.0.113.1, 10.0.0.2", "203.0.113.1"),  # fewer entries than proxies: the farthest
        (1, "", "198.51.100.7"),  # no header: the peer
        (1, "[2001:db8::9]:4431", "2001:db8::9"),
        (1, "203.0.113.1:51234", "203.0.113.1"),
        (1, "not-an-address", None),
    ],
)
def test_forwarded_for_is_believed_only_as_far_as_the_trusted_proxies(
    rf: RequestFactory, settings: SettingsWrapper, proxies: int, forwarded: str, expected: str | None
) -> None:
    settings.MUXER_TRUSTED_PROXY_COUNT = proxies
    request = rf.get("/", REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR=forwarded)

    assert context.client_ip(request) == expected


@pytest.mark.parametrize("remote", ["", "unix:/run/app.sock", "garbage"])
def test_a_peer_that_is_not_an_address_records_none(rf: RequestFactory, remote: str) -> None:
    assert context.client_ip(rf.get("/", REMOTE_ADDR=remote)) is None


def test_an_ipv6_peer_is_stored_canonically(rf: RequestFactory) -> None:
    assert context.client_ip(rf.get("/", REMOTE_ADDR="2001:DB8:0:0:0:0:0:1")) == "2001:db8::1"


# --- the user agent -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_user_agent_is_cut_to_300_characters_without_control_characters(rf: RequestFactory) -> None:
    response = call(rf.get("/", HTTP_USER_AGENT="x\x00y\nz" + "a" * 400))

    agent = AuditEvent.objects.get(pk=int(response.content)).user_agent
    assert agent == ("xyz" + "a" * 400)[:300]


# --- the context reaches the row ---------------------------------------------------------------


@pytest.mark.django_db
def test_the_request_id_in_the_row_is_the_one_in_the_response(rf: RequestFactory) -> None:
    response = call(rf.get("/", HTTP_X_REQUEST_ID="abc-123", HTTP_USER_AGENT="pytest", REMOTE_ADDR="192.0.2.4"))

    event = AuditEvent.objects.get(pk=int(response.content))
    assert (event.request_id, event.user_agent, event.ip) == ("abc-123", "pytest", "192.0.2.4")
    assert response.headers["X-Request-ID"] == "abc-123"


@pytest.mark.django_db
def test_outside_a_request_the_context_is_empty() -> None:
    event = audit_event_record(action="test.outside", organization=None)

    assert (event.ip, event.user_agent, event.request_id) == (None, "", "")
    assert context.current() is None


@pytest.mark.django_db
def test_explicit_context_wins_over_the_request(rf: RequestFactory) -> None:
    with context.bound(context.context_for(rf.get("/", HTTP_X_REQUEST_ID="from-request"))):
        event = audit_event_record(action="test.explicit", organization=None, request_id="from-task", ip="192.0.2.9")

    assert (event.request_id, event.ip) == ("from-task", "192.0.2.9")


@pytest.mark.django_db
def test_the_context_ends_with_the_request(rf: RequestFactory) -> None:
    call(rf.get("/"))

    assert context.current() is None


@pytest.mark.django_db
def test_an_api_write_records_the_callers_context(organization: Organization, owner: User) -> None:
    client = APIClient(REMOTE_ADDR="192.0.2.10", HTTP_USER_AGENT="openai-python/1.0")
    client.force_authenticate(owner)

    response = client.post(
        reverse("key-list", args=[organization.slug]), {"name": "ctx"}, format="json", HTTP_X_REQUEST_ID="ctx-1"
    )

    assert response.status_code == 201, response.content
    event = AuditEvent.objects.get(action="api_key.created", target_id=str(response.json()["id"]))
    assert (event.ip, event.user_agent, event.request_id) == ("192.0.2.10", "openai-python/1.0", "ctx-1")
    assert response.headers["X-Request-ID"] == "ctx-1"


@pytest.mark.django_db(transaction=True)
async def test_an_api_write_under_asgi_records_the_callers_context(organization: Organization, owner: User) -> None:
    admin_key = (await sync_to_async(issue_key)(organization, created_by=owner, scopes=["admin"])).secret
    client = AsyncClient()

    response = await client.post(
        reverse("key-list", args=[organization.slug]),
        {"name": "async ctx"},
        content_type="application/json",
        headers={"X-Request-ID": "async-1", "Authorization": f"Bearer {admin_key}", "User-Agent": "async-agent/2"},
    )

    assert response.status_code == 201, response.content
    assert response.headers["X-Request-ID"] == "async-1"
    event = await AuditEvent.objects.aget(action="api_key.created", target_id=str(response.json()["id"]))
    assert (event.user_agent, event.request_id, event.ip) == ("async-agent/2", "async-1", "127.0.0.1")


async def test_the_async_middleware_binds_the_context(rf: RequestFactory) -> None:
    middleware = RequestContextMiddleware(async_recording_view)

    response = await middleware(rf.get("/", HTTP_X_REQUEST_ID="async-ctx"))  # type: ignore[misc]

    assert response.content == b"async-ctx"
    assert response.headers["X-Request-ID"] == "async-ctx"
    assert context.current() is None
