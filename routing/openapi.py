"""OpenAPI documentation shared by the API's views, and what drf-spectacular cannot see: the Channels proxy endpoints.

Views document their answers with :func:`list_of` (the ``{"object": "list", "data": [...]}``
envelope every list endpoint returns) and :func:`error_responses` (the statuses a view can
really answer with, each in the OpenAI error shape that ``routing.errors`` renders).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema_field, inline_serializer
from rest_framework import serializers

ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
}


class ErrorDetailSerializer(serializers.Serializer[Any]):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True, help_text="The parameter or field at fault, if one is.")
    code = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer[Any]):
    """Every 4xx and 5xx answer of the API: ``{"error": {"message", "type", "param", "code"}}``."""

    error = ErrorDetailSerializer()


# What each status means on the management API; a view passes its own wording where it says more.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body or a query parameter is not valid.",
    401: "No credentials, or they are not valid (unknown, revoked or expired).",
    403: "Your role, or the API key's scope, does not allow this.",
    404: "No such organization (or you are not a member of it), or no such object in it.",
    409: "The change conflicts with the current state.",
    413: "The request body is larger than the API's limit.",
    429: "Too many requests; see Retry-After.",
}

# Every view under /api/orgs/<org>/: a caller must sign in (401), be a member (404) with the right role (403).
ORG_ERRORS = (401, 403, 404)


def error_responses(
    *statuses: int, described: Mapping[int, str] | None = None
) -> dict[tuple[int, str], OpenApiResponse]:
    """The error answers of a view, for ``extend_schema(responses={...})``.

    ``statuses`` take their description from :data:`ERROR_DESCRIPTIONS`; ``described``
    adds statuses, or rewords them, with what this view means by them. Errors are JSON
    whatever the view's renderers (a CSV export's too), so the media type is explicit.
    """
    wording = {**{status: ERROR_DESCRIPTIONS[status] for status in statuses}, **(described or {})}
    return {
        (status, "application/json"): OpenApiResponse(ErrorSerializer, description=wording[status])
        for status in sorted(wording)
    }


@extend_schema_field({"type": "string", "enum": ["list"]})
class ListObjectField(serializers.CharField):
    """The ``object`` of a list envelope: always ``"list"``."""


def list_of(
    item: type[serializers.BaseSerializer[Any]] | serializers.BaseSerializer[Any],
    *,
    name: str,
    extra: Mapping[str, serializers.Field[Any, Any, Any, Any]] | None = None,
) -> serializers.Serializer[Any]:
    """The list envelope ``{"object": "list", "data": [item, ...], **extra}`` as a named schema component.

    ``item`` is the serializer (class or instance) of one element of ``data``; ``extra``
    documents the keys a view adds beside ``data`` (``unread_count``, ``has_more``...).
    """
    element = item.__class__ if isinstance(item, serializers.BaseSerializer) else item
    return inline_serializer(  # type: ignore[no-any-return]
        name=name,
        fields={"object": ListObjectField(), "data": element(many=True), **(extra or {})},
    )


CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "A catalog model name, or 'auto' to let ModelMuxer choose."},
        "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "response_format": {"type": "object"},
        "seed": {"type": "integer"},
        "user": {"type": "string"},
    },
}


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "accounts.api.APIKeyAuthentication"
    name = "ModelMuxerAPIKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A ModelMuxer API key, mm_live_..."}


def add_proxy_endpoints(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    error_response = {"content": {"application/json": {"schema": ERROR}}}
    result.setdefault("paths", {})["/v1/chat/completions"] = {
        "post": {
            "operationId": "v1_chat_completions_create",
            "summary": "Create a chat completion (OpenAI-compatible; SSE when stream is true)",
            "tags": ["v1"],
            "security": [{"ModelMuxerAPIKey": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST}}},
            "responses": {
                "200": {
                    "description": "A chat.completion object, or an SSE stream of chat.completion.chunk objects. "
                    "Headers: x-request-id, x-muxer-model, x-muxer-provider, x-muxer-cost-usd, and x-muxer-pii "
                    "(entity types and counts) when the organization's PII guard found any. "
                    "Request header X-Muxer-PII-Restore: false leaves masked values masked in the answer. "
                    "Response cache: a request with temperature 0, or with request header X-Muxer-Cache: use, is "
                    "answered from the organization's exact-match cache when the same request was answered before "
                    "(x-muxer-cache: hit, x-muxer-cost-usd: 0, no provider call) and otherwise kept for next time "
                    "(x-muxer-cache: miss); X-Muxer-Cache: bypass neither reads nor writes it (x-muxer-cache: bypass). "
                    "No x-muxer-cache header: the cache did not apply.",
                    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
                },
                **{
                    str(status): {"description": description, **error_response}
                    for status, description in (
                        (
                            400,
                            "Malformed body or invalid parameter; too_many_messages, context_length_exceeded, "
                            "or pii_blocked (a PII type the organization's policy blocks)",
                        ),
                        (401, "Missing, malformed, unknown, revoked or expired API key"),
                        (403, "The key may not use this model"),
                        (404, "Unknown model"),
                        (413, "Body over the size limit"),
                        (502, "The provider failed"),
                        (504, "The provider timed out"),
                    )
                },
            },
        }
    }
    result["paths"]["/v1/embeddings"] = {
        "post": {
            "operationId": "v1_embeddings_create",
            "summary": "Create embeddings (OpenAI-compatible)",
            "tags": ["v1"],
            "security": [{"ModelMuxerAPIKey": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model", "input"],
                            "properties": {
                                "model": {"type": "string"},
                                "input": {"oneOf": [{"type": "string"}, {"type": "array"}]},
                                "encoding_format": {"enum": ["float", "base64"]},
                                "dimensions": {"type": "integer", "minimum": 1},
                                "user": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "responses": {"200": {"description": "A list of embedding objects with usage."}},
        }
    }
    result["paths"]["/v1/messages"] = {
        "post": {
            "operationId": "v1_messages_create",
            "summary": "Create a message in Anthropic's Messages format, routed to any catalog model",
            "tags": ["v1"],
            "security": [{"ModelMuxerAPIKey": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {
                "200": {
                    "description": "An Anthropic message, or named SSE events when stream is true.",
                    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
                }
            },
        }
    }
    return result
