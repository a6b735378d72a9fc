"""The one error type every API surface raises, rendered in OpenAI's shape.

``{"error": {"message", "type", "param", "code"}}`` with a precise HTTP status.
Messages never contain secrets: no API keys, provider keys or prompt text.
"""

from __future__ import annotations

from typing import Any

import orjson


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())


def invalid_request(message: str, *, param: str | None = None, code: str | None = "invalid_request_error") -> APIError:
    return APIError(400, message, type="invalid_request_error", param=param, code=code)


def invalid_api_key(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def model_not_found(model: str, reason: str = "does not exist") -> APIError:
    return APIError(
        404, f"The model '{model}' {reason}.", type="invalid_request_error", code="model_not_found", param="model"
    )


def permission_denied(message: str) -> APIError:
    return APIError(403, message, type="invalid_request_error", code="permission_denied")


def not_found(message: str = "Not found.") -> APIError:
    return APIError(404, message, type="invalid_request_error", code="not_found")
