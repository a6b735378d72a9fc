"""GDPR endpoints: an organization's full export (owners), and a person's own export and erasure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponseBase, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from muxer_project.errors import APIError
from routing.openapi import ORG_ERRORS, error_responses

from . import gdpr
from .api import OrganizationScopedView, signed_in_user
from .permissions import Perm


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


async def _stream_async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    # Under ASGI each chunk is read on the request's database thread, so a large
    # export streams instead of being gathered into memory first.
    while True:
        chunk = await sync_to_async(_next_chunk)(chunks)
        if chunk is None:
            return
        yield chunk


class OrganizationExportView(OrganizationScopedView):
    perms = {"GET": Perm.ORG_EXPORT}

    @extend_schema(
        operation_id="org_export",
        responses={(200, "application/json"): OpenApiTypes.OBJECT, **error_responses(*ORG_ERRORS)},
        description="Everything the organization owns, as one JSON document: its settings, teams, members, "
        "invitations, API keys, provider credentials, budgets and alerts, notifications, feedback, trained "
        "routers, usage rollups and records, and audit events. Secrets are left out: key and invitation "
        "digests, the webhook secret, provider keys (only their last four characters) and router weights.",
    )
    def get(self, request: Request, org: str) -> HttpResponseBase:
        chunks = gdpr.organization_export_chunks(self.organization)
        content: Iterator[bytes] | AsyncIterator[bytes] = (
            _stream_async(chunks) if isinstance(request._request, ASGIRequest) else chunks
        )
        response = StreamingHttpResponse(content, content_type="application/json")
        name = f"modelmuxer-{self.organization.slug}-{timezone.now():%Y%m%d}.json"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response


class MyExportView(APIView):
    @extend_schema(
        operation_id="me_export",
        responses={200: OpenApiTypes.OBJECT, **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        """What ModelMuxer holds about you: your profile, memberships and the API keys you created."""
        response = Response(gdpr.user_export(signed_in_user(request)))
        response["Cache-Control"] = "no-store"
        return response


class EraseSerializer(serializers.Serializer[Any]):
    confirm = serializers.CharField(max_length=254, help_text="Your email address, to confirm.")


class MyEraseView(APIView):
    @extend_schema(
        operation_id="me_erase",
        request=EraseSerializer,
        responses={
            200: inline_serializer("UserErased", {"object": serializers.CharField(), "id": serializers.IntegerField()}),
            **error_responses(
                401,
                413,
                described={
                    400: "`confirm` is missing or is not your email address.",
                    409: "You are the last owner of an organization that has other members.",
                },
            ),
        },
    )
    def post(self, request: Request) -> Response:
        """Erase yourself: your email and name are removed, you leave every organization and cannot sign in again.

        Usage and audit records keep referring to you by id only.
        """
        user = signed_in_user(request)
        serializer = EraseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if serializer.validated_data["confirm"].strip().lower() != user.email.lower():
            raise serializers.ValidationError({"confirm": ["must be your email address."]})
        try:
            erased = gdpr.user_erase(user=user, actor=user)
        except gdpr.LastOwnerError as error:
            raise APIError(409, str(error), code="last_owner") from None
        return Response({"object": "user.erased", "id": erased.user_id})
