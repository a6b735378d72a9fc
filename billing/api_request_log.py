"""One usage record's kept request and response bodies (the opt-in request log), for owners and admins (DRF).

A non-member gets 404, a role without ``request_log.view`` 403, and a record of
another organization, or one without kept bodies, 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import OrganizationScopedView
from accounts.permissions import Perm
from routing.openapi import ORG_ERRORS, error_responses

from .models import RequestLog
from .request_log import request_log_for_usage


class UsageBodiesSerializer(serializers.ModelSerializer[RequestLog]):
    object = serializers.SerializerMethodField()
    request_id = serializers.CharField(source="usage.request_id")
    attempt = serializers.IntegerField(source="usage.attempt")
    request = serializers.JSONField(source="request_body", help_text="The request as the client sent it, PII masked.")
    response = serializers.JSONField(
        source="response_body",
        allow_null=True,
        help_text="The answer as the client got it (a stream assembled), PII masked; null when none came.",
    )

    class Meta:
        model = RequestLog
        fields = ["object", "usage_id", "request_id", "attempt", "created_at", "request", "response"]

    def get_object(self, obj: RequestLog) -> str:
        return "usage.bodies"


class UsageBodiesView(OrganizationScopedView):
    perms = {"GET": Perm.REQUEST_LOG_VIEW}

    @extend_schema(
        operation_id="usage_bodies_retrieve",
        responses={
            200: UsageBodiesSerializer,
            **error_responses(
                *ORG_ERRORS,
                described={
                    404: "No such organization (or you are not a member of it), or no bodies kept for "
                    "this usage record in it."
                },
            ),
        },
        description="The request and response bodies kept with one usage record, when the organization keeps them "
        "(`request_log_enabled`). Personal data and secrets are masked whatever the PII policy, and long values "
        "are cut.",
    )
    def get(self, request: Request, org: str, usage_id: int) -> Response:
        log = request_log_for_usage(organization=self.organization, usage_id=usage_id)
        if log is None:
            raise NotFound("No bodies are kept for this usage record.")
        data: dict[str, Any] = UsageBodiesSerializer(log).data
        return Response(data)
