"""``POST /v1/feedback``: a client rates an answer by its request id; the labels retrain the organization's router."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import APIKeyAuthentication
from accounts.auth import KeyIdentity
from muxer_project.errors import APIError

from . import services
from .openapi import error_responses


class StrictCharField(serializers.CharField):
    """A JSON string, not a number turned into one."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: not a string of digits, not 5.0, and not ``true``."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class FeedbackRequestSerializer(serializers.Serializer[Any]):
    request_id = StrictCharField(max_length=64, help_text="The id of a request this organization made: req_...")
    rating = StrictIntegerField(min_value=1, max_value=5, help_text="1 (bad) to 5 (good).")
    comment = StrictCharField(
        max_length=2000,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="Replaces the comment given before; left out, keeps it.",
    )

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, Mapping):
            extra = sorted(set(data) - set(self.fields))
            if extra:
                raise serializers.ValidationError({extra[0]: ["Unrecognized request argument."]})
        return super().to_internal_value(data)


class FeedbackSerializer(serializers.Serializer[Any]):
    object = serializers.CharField(default="feedback")
    request_id = serializers.CharField()
    rating = serializers.IntegerField()
    comment = serializers.CharField()
    model = serializers.CharField(help_text="The model that answered (a cascade's last attempt).")
    created_at = serializers.DateTimeField()


def request_not_found() -> APIError:
    # The same answer for another organization's request: never confirm it exists.
    return APIError(
        404, "No request with that id was made by this organization.", code="request_not_found", param="request_id"
    )


class FeedbackView(APIView):
    """Rate an answer. Posting again for the same request id replaces the rating."""

    authentication_classes = [APIKeyAuthentication]

    @extend_schema(
        operation_id="v1_feedback_create",
        request=FeedbackRequestSerializer,
        responses={
            201: FeedbackSerializer,
            200: FeedbackSerializer,
            **error_responses(
                400,
                401,
                413,
                described={
                    403: "The API key lacks the 'proxy' scope.",
                    404: "No request with that id in the organization.",
                },
            ),
        },
    )
    def post(self, request: Request) -> Response:
        identity = request.auth
        assert isinstance(identity, KeyIdentity)
        serializer = FeedbackRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            recorded = services.feedback_record(
                organization_id=identity.organization_id,
                api_key_id=identity.key_id,
                request_id=data["request_id"],
                rating=data["rating"],
                comment=data.get("comment"),
            )
        except services.UnknownRequest:
            raise request_not_found() from None
        feedback = recorded.feedback
        body = FeedbackSerializer(
            {
                "object": "feedback",
                "request_id": feedback.request_id,
                "rating": feedback.rating,
                "comment": feedback.comment,
                "model": recorded.model,
                "created_at": feedback.created_at,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED if recorded.created else status.HTTP_200_OK)
