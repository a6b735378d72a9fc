from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import APIKeyAuthentication
from accounts.auth import KeyIdentity
from muxer_project.errors import model_not_found
from providers.catalog import Catalog, get_catalog_sync
from providers.credentials import catalog_for, organization_keys_sync

from .openapi import error_responses, list_of
from .schema import RoutingOptions, parse_chat_request, parse_max_cost, parse_strategy, too_large
from .selection import select_route, servable
from .semantic import semantic_model_for_sync
from .strategies.base import permitted

NO_PROXY = "The API key lacks the 'proxy' scope."


class ModelSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


def catalog_for_key(identity: KeyIdentity) -> Catalog:
    """The catalog as the key's organization sees it, its own provider keys included."""
    keys = organization_keys_sync(identity.organization_id)
    return catalog_for(get_catalog_sync(), identity.organization_id, keys)


def key_identity(request: Request) -> KeyIdentity:
    assert isinstance(request.auth, KeyIdentity)
    return request.auth


class ModelListView(APIView):
    """``GET /v1/models``: the models this key may use, in OpenAI's list shape."""

    authentication_classes = [APIKeyAuthentication]

    @extend_schema(
        operation_id="v1_models_list",
        responses={200: list_of(ModelSerializer, name="ModelList"), **error_responses(401, described={403: NO_PROXY})},
    )
    def get(self, request: Request) -> Response:
        identity = key_identity(request)
        data = [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": m.provider}
            for m in catalog_for_key(identity).models.values()
            if servable(m) and permitted(m, identity)
        ]
        return Response({"object": "list", "data": data})


class ModelDetailView(ModelListView):
    @extend_schema(
        operation_id="v1_models_retrieve",
        responses={
            200: ModelSerializer,
            **error_responses(401, described={403: NO_PROXY, 404: "No such model, or not one this key may use."}),
        },
    )
    def get(self, request: Request, model: str) -> Response:  # type: ignore[override]
        identity = key_identity(request)
        found = catalog_for_key(identity).get(model)
        if found is None or not servable(found) or not permitted(found, identity):
            raise model_not_found(model)
        return Response({"id": found.name, "object": "model", "created": found.created, "owned_by": found.provider})


class RouteView(APIView):
    """``POST /v1/route``: the decision the gateway would make for a chat request, without calling any provider.

    Takes the body of ``/v1/chat/completions`` and its ``X-Muxer-Strategy`` and
    ``X-Muxer-Max-Cost`` headers; answers with the model, provider, reason,
    confidence, estimated cost, fallbacks and, for a cascade, its steps.
    """

    authentication_classes = [APIKeyAuthentication]

    @extend_schema(
        operation_id="v1_route_create",
        request=inline_serializer(
            "RouteRequest",
            fields={
                "model": serializers.CharField(help_text="auto, muxer/<strategy> or a model name"),
                "messages": serializers.ListField(child=serializers.DictField()),
            },
        ),
        responses={
            200: inline_serializer(
                "RouteDecision",
                fields={
                    "object": serializers.CharField(),
                    "strategy": serializers.CharField(),
                    "model": serializers.CharField(),
                    "provider": serializers.CharField(),
                    "quality_tier": serializers.CharField(),
                    "reason": serializers.CharField(),
                    "confidence": serializers.FloatField(),
                    "score": serializers.FloatField(allow_null=True),
                    "estimated_cost_usd": serializers.CharField(),
                    "max_output_tokens": serializers.IntegerField(allow_null=True),
                    "max_cost_usd": serializers.CharField(allow_null=True),
                    "fallbacks": serializers.ListField(child=serializers.DictField()),
                    "cascade": serializers.ListField(child=serializers.DictField()),
                },
            ),
            **error_responses(
                401,
                413,
                described={
                    400: "The body or a header is not valid, or no model this key may use can serve it.",
                    403: "The API key lacks the 'proxy' scope, or may not use the model.",
                    404: "No such model.",
                },
            ),
        },
    )
    def post(self, request: Request) -> Response:
        identity = key_identity(request)
        if len(request.body) > settings.MUXER_MAX_BODY_BYTES:
            raise too_large(settings.MUXER_MAX_BODY_BYTES)
        chat = parse_chat_request(request.body)
        strategy = request.headers.get("X-Muxer-Strategy")
        max_cost = request.headers.get("X-Muxer-Max-Cost")
        options = RoutingOptions(
            strategy=None if strategy is None else parse_strategy(strategy.strip(), param="X-Muxer-Strategy"),
            max_cost_usd=None if max_cost is None else parse_max_cost(max_cost, param="X-Muxer-Max-Cost"),
        )
        decision = select_route(
            catalog=catalog_for_key(identity),
            identity=identity,
            request=chat,
            semantic=semantic_model_for_sync(identity.organization_id) if chat.routed else None,
            options=options,
        )
        return Response(decision.as_dict())
