"""``POST /v1/feedback``: an organization rates the answers to its own requests."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.models import APIKey, Organization, User
from accounts.services import api_key_revoke
from billing.models import UsageRecord, UsageStatus
from routing.models import Feedback
from tests.accounts.helpers import assert_openai_error
from tests.factories import issue_key

if TYPE_CHECKING:
    from rest_framework.response import _MonkeyPatchedResponse as Response

pytestmark = pytest.mark.django_db

URL = "/v1/feedback"


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def usage_row(
    organization: Organization,
    api_key: APIKey,
    request_id: str,
    *,
    attempt: int = 1,
    model: str = "fake-small",
    status: str = UsageStatus.OK,
) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=request_id,
        attempt=attempt,
        organization=organization,
        api_key=api_key,
        model=model,
        provider="fake",
        status=status,
        http_status=200,
        created_at=timezone.now(),
    )


@pytest.fixture
def our_key(organization: Organization, owner: User, catalog: None) -> tuple[APIKey, str]:
    issued = issue_key(organization, created_by=owner, name="ours")
    return issued.api_key, issued.secret


@pytest.fixture
def client(our_key: tuple[APIKey, str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {our_key[1]}")
    return client


@pytest.fixture
def request_id(organization: Organization, our_key: tuple[APIKey, str]) -> str:
    """A request of ours that a cascade answered on its second attempt."""
    rid = new_request_id()
    usage_row(organization, our_key[0], rid, attempt=1, model="fake-small", status=UsageStatus.ESCALATED)
    usage_row(organization, our_key[0], rid, attempt=2, model="fake-large")
    return rid


@pytest.fixture
def their_request_id(outsider: User) -> str:
    their_org = outsider.memberships.get().organization
    their_key = issue_key(their_org, created_by=outsider).api_key
    rid = new_request_id()
    usage_row(their_org, their_key, rid, model="fake-medium")
    return rid


def post(client: APIClient, body: Any) -> Response:
    return client.post(URL, body, format="json")


# --- recording -------------------------------------------------------------------------------


def test_it_records_a_rating(
    client: APIClient, request_id: str, organization: Organization, our_key: tuple[APIKey, str]
) -> None:
    response = post(client, {"request_id": request_id, "rating": 4, "comment": "good enough"})

    assert response.status_code == 201, response.content
    row = Feedback.objects.get()
    assert (row.organization_id, row.api_key_id, row.request_id) == (organization.pk, our_key[0].pk, request_id)
    assert (row.rating, row.comment) == (4, "good enough")
    body = response.json()
    assert body == {
        "object": "feedback",
        "request_id": request_id,
        "rating": 4,
        "comment": "good enough",
        "model": "fake-large",
        "created_at": body["created_at"],
    }
    assert body["created_at"].startswith(row.created_at.strftime("%Y-%m-%dT%H:%M:%S"))


def test_the_model_is_the_one_that_answered_a_single_attempt(
    client: APIClient, organization: Organization, our_key: tuple[APIKey, str]
) -> None:
    rid = new_request_id()
    usage_row(organization, our_key[0], rid, model="fake-medium")

    response = post(client, {"request_id": rid, "rating": 1})

    assert response.status_code == 201
    assert response.json()["model"] == "fake-medium"
    assert response.json()["comment"] == ""


def test_any_key_of_the_organization_may_rate_its_requests(
    request_id: str, organization: Organization, owner: User
) -> None:
    other = issue_key(organization, created_by=owner, name="another")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {other.secret}")

    response = post(client, {"request_id": request_id, "rating": 5})

    assert response.status_code == 201
    assert Feedback.objects.get().api_key_id == other.api_key.pk


def test_posting_again_replaces_the_rating(client: APIClient, request_id: str) -> None:
    first = post(client, {"request_id": request_id, "rating": 2, "comment": "wrong"})
    Feedback.objects.update(updated_at=timezone.now() - timedelta(minutes=5))

    again = post(client, {"request_id": request_id, "rating": 5, "comment": "actually right"})

    assert (first.status_code, again.status_code) == (201, 200)
    row = Feedback.objects.get()
    assert (row.rating, row.comment) == (5, "actually right")
    assert row.updated_at > timezone.now() - timedelta(minutes=1)
    assert again.json()["created_at"] == first.json()["created_at"]
    assert (again.json()["rating"], again.json()["comment"]) == (5, "actually right")


def test_posting_again_without_a_comment_keeps_it(client: APIClient, request_id: str) -> None:
    post(client, {"request_id": request_id, "rating": 2, "comment": "too long"})

    again = post(client, {"request_id": request_id, "rating": 3})

    assert again.status_code == 200
    assert again.json()["comment"] == "too long"
    assert Feedback.objects.get().comment == "too long"


def test_an_empty_comment_clears_it(client: APIClient, request_id: str) -> None:
    post(client, {"request_id": request_id, "rating": 2, "comment": "too long"})

    again = post(client, {"request_id": request_id, "rating": 2, "comment": ""})

    assert again.json()["comment"] == ""
    assert Feedback.objects.get().comment == ""


@pytest.mark.parametrize("rating", [1, 5])
def test_the_ends_of_the_scale_are_accepted(rating: int, client: APIClient, request_id: str) -> None:
    response = post(client, {"request_id": request_id, "rating": rating})

    assert response.status_code == 201
    assert Feedback.objects.get().rating == rating


def test_a_comment_of_2000_characters_is_accepted(client: APIClient, request_id: str) -> None:
    response = post(client, {"request_id": request_id, "rating": 3, "comment": "x" * 2000})

    assert response.status_code == 201
    assert len(Feedback.objects.get().comment) == 2000


# --- the request must be ours -----------------------------------------------------------------


def test_an_unknown_request_id_is_a_404(client: APIClient) -> None:
    response = post(client, {"request_id": new_request_id(), "rating": 3})

    assert_openai_error(response, 404, code="request_not_found", param="request_id")
    assert not Feedback.objects.exists()


def test_another_organizations_request_id_is_the_same_404(client: APIClient, their_request_id: str) -> None:
    theirs = post(client, {"request_id": their_request_id, "rating": 1})
    unknown = post(client, {"request_id": new_request_id(), "rating": 1})

    assert_openai_error(theirs, 404, code="request_not_found", param="request_id")
    assert theirs.json() == unknown.json()
    assert "fake-medium" not in theirs.content.decode()
    assert not Feedback.objects.exists()


def test_their_feedback_does_not_block_ours(
    client: APIClient, request_id: str, their_request_id: str, outsider: User
) -> None:
    """Ratings are per organization; theirs on their own request leaves ours alone."""
    their_org = outsider.memberships.get().organization
    their_client = APIClient()
    their_client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_key(their_org, created_by=outsider).secret}")

    assert post(their_client, {"request_id": their_request_id, "rating": 1}).status_code == 201
    assert post(their_client, {"request_id": request_id, "rating": 1}).status_code == 404
    assert post(client, {"request_id": request_id, "rating": 5}).status_code == 201

    ratings = dict(Feedback.objects.values_list("request_id", "rating"))
    assert ratings == {their_request_id: 1, request_id: 5}


# --- bad input: 400 in OpenAI's shape, naming the field, and nothing written ----------------------

BAD_INPUT: dict[str, tuple[dict[str, Any], str]] = {
    "missing request_id": ({"rating": 3}, "request_id"),
    "missing rating": ({"request_id": "REQ"}, "rating"),
    "rating 0": ({"request_id": "REQ", "rating": 0}, "rating"),
    "rating 6": ({"request_id": "REQ", "rating": 6}, "rating"),
    "rating -1": ({"request_id": "REQ", "rating": -1}, "rating"),
    "rating a string": ({"request_id": "REQ", "rating": "5"}, "rating"),
    "rating true": ({"request_id": "REQ", "rating": True}, "rating"),
    "rating a float": ({"request_id": "REQ", "rating": 4.5}, "rating"),
    "rating a whole float": ({"request_id": "REQ", "rating": 5.0}, "rating"),
    "rating null": ({"request_id": "REQ", "rating": None}, "rating"),
    "rating a list": ({"request_id": "REQ", "rating": [5]}, "rating"),
    "request_id a number": ({"request_id": 12345, "rating": 3}, "request_id"),
    "request_id blank": ({"request_id": "", "rating": 3}, "request_id"),
    "request_id null": ({"request_id": None, "rating": 3}, "request_id"),
    "request_id too long": ({"request_id": "r" * 65, "rating": 3}, "request_id"),
    "comment too long": ({"request_id": "REQ", "rating": 3, "comment": "x" * 2001}, "comment"),
    "comment a number": ({"request_id": "REQ", "rating": 3, "comment": 7}, "comment"),
    "comment null": ({"request_id": "REQ", "rating": 3, "comment": None}, "comment"),
    "an unknown field": ({"request_id": "REQ", "rating": 3, "score": 3}, "score"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_a_400_naming_the_field(case: str, client: APIClient, request_id: str) -> None:
    payload, param = BAD_INPUT[case]
    if payload.get("request_id") == "REQ":
        payload = {**payload, "request_id": request_id}

    response = post(client, payload)

    assert_openai_error(response, 400, code="invalid_request_error", param=param)
    assert response.json()["error"]["message"].startswith(f"'{param}': ")
    assert not Feedback.objects.exists()


@pytest.mark.parametrize("body", ['{"request_id": "req_1", "rating": ', "[]", "5", '"req_1"'])
def test_a_body_that_is_not_a_json_object_is_a_400(body: str, client: APIClient) -> None:
    response = client.post(URL, data=body, content_type="application/json")

    assert_openai_error(response, 400, code="invalid_request_error", param=None)
    assert not Feedback.objects.exists()


def test_a_form_body_is_a_415(client: APIClient, request_id: str) -> None:
    response = client.post(URL, {"request_id": request_id, "rating": "3"})

    assert_openai_error(response, 415, code="unsupported_media_type", param=None)
    assert not Feedback.objects.exists()


def test_get_is_a_405(client: APIClient) -> None:
    assert_openai_error(client.get(URL), 405, code="method_not_allowed", param=None)


# --- authentication ---------------------------------------------------------------------------------


def test_no_key_is_a_401(request_id: str) -> None:
    response = post(APIClient(), {"request_id": request_id, "rating": 3})

    assert_openai_error(response, 401, code="invalid_api_key", param=None)
    assert not Feedback.objects.exists()


def test_a_revoked_key_is_a_401(request_id: str, organization: Organization, owner: User) -> None:
    issued = issue_key(organization, created_by=owner, name="gone")
    api_key_revoke(api_key=issued.api_key, actor=owner)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")

    response = post(client, {"request_id": request_id, "rating": 3})

    assert_openai_error(response, 401, code="invalid_api_key", param=None)
    assert not Feedback.objects.exists()


def test_a_signed_in_user_without_a_key_is_a_401(request_id: str, owner: User) -> None:
    client = APIClient()
    client.force_login(owner)

    response = post(client, {"request_id": request_id, "rating": 3})

    assert_openai_error(response, 401, code="invalid_api_key", param=None)


# --- the schema ----------------------------------------------------------------------------------


def test_the_schema_documents_the_endpoint() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)

    operation = schema["paths"]["/v1/feedback"]["post"]
    assert operation["operationId"] == "v1_feedback_create"
    assert set(operation["responses"]) >= {"200", "201"}
    assert reverse("v1-feedback") == URL
