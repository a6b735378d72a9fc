"""Organizations' own provider keys (BYOK): set, list (masked), delete."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import OrganizationScopedView, acting_user
from accounts.permissions import Perm
from routing.openapi import ORG_ERRORS, error_responses, list_of

from . import services
from .models import Provider, ProviderCredential

NO_KEY = "No such organization or provider, or the organization has no key of its own for it."


class ProviderCredentialSerializer(serializers.ModelSerializer[ProviderCredential]):
    provider: serializers.SlugRelatedField[Provider] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    key = serializers.CharField(source="masked", read_only=True)

    class Meta:
        model = ProviderCredential
        fields = ["provider", "key", "created_at", "updated_at"]


class ProviderCredentialSetSerializer(serializers.Serializer[Any]):
    api_key = serializers.CharField(min_length=8, max_length=4096, trim_whitespace=True)


class ProviderCredentialListView(OrganizationScopedView):
    perms = {"GET": Perm.CREDENTIALS_MANAGE}

    @extend_schema(
        operation_id="org_credentials_list",
        responses={
            200: list_of(ProviderCredentialSerializer, name="ProviderCredentialList"),
            **error_responses(*ORG_ERRORS),
        },
    )
    def get(self, request: Request, org: str) -> Response:
        rows = ProviderCredential.objects.filter(organization=self.organization).select_related("provider")
        return Response({"object": "list", "data": ProviderCredentialSerializer(rows, many=True).data})


class ProviderCredentialDetailView(OrganizationScopedView):
    perms = {"GET": Perm.CREDENTIALS_MANAGE, "PUT": Perm.CREDENTIALS_MANAGE, "DELETE": Perm.CREDENTIALS_MANAGE}

    def provider(self, slug: str) -> Provider:
        provider = Provider.objects.filter(slug=slug).exclude(slug="fake").first()
        if provider is None:
            raise NotFound("No such provider.")
        return provider

    def credential(self, slug: str) -> ProviderCredential:
        found = (
            ProviderCredential.objects.filter(organization=self.organization, provider=self.provider(slug))
            .select_related("provider", "organization")
            .first()
        )
        if found is None:
            raise NotFound("This organization has no key of its own for that provider.")
        return found

    @extend_schema(
        operation_id="org_credentials_retrieve",
        responses={200: ProviderCredentialSerializer, **error_responses(*ORG_ERRORS, described={404: NO_KEY})},
    )
    def get(self, request: Request, org: str, provider: str) -> Response:
        return Response(ProviderCredentialSerializer(self.credential(provider)).data)

    @extend_schema(
        operation_id="org_credentials_set",
        request=ProviderCredentialSetSerializer,
        responses={200: ProviderCredentialSerializer, **error_responses(400, *ORG_ERRORS, 413)},
    )
    def put(self, request: Request, org: str, provider: str) -> Response:
        target = self.provider(provider)
        serializer = ProviderCredentialSetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        credential = services.provider_credential_set(
            organization=self.organization,
            provider=target,
            api_key=serializer.validated_data["api_key"],
            actor=acting_user(request),
        )
        return Response(ProviderCredentialSerializer(credential).data)

    @extend_schema(
        operation_id="org_credentials_delete",
        responses={204: None, **error_responses(*ORG_ERRORS, described={404: NO_KEY})},
    )
    def delete(self, request: Request, org: str, provider: str) -> Response:
        services.provider_credential_delete(credential=self.credential(provider), actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
