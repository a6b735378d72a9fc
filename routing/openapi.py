"""OpenAPI documentation for what drf-spectacular cannot see: the Channels proxy endpoints."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

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
                    "Request header X-Muxer-PII-Restore: false leaves masked values masked in the answer.",
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
