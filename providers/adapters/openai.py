"""The OpenAI chat-completions wire format, also spoken by OpenAI-compatible providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from ..catalog import CatalogModel
from .base import (
    Adapter,
    ChatResult,
    ChatStream,
    EmbeddingResult,
    ProviderError,
    StreamProgress,
    Usage,
    error_from_exception,
    provider_post,
)


def usage_from_openai(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _upstream_message(content: bytes) -> tuple[str, str | None]:
    try:
        error = orjson.loads(content).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return "", None
    if not isinstance(error, dict):
        return str(error)[:500], None
    return str(error.get("message") or "")[:500], error.get("code")


def error_from_response(status: int, content: bytes, headers: httpx.Headers, provider: str) -> ProviderError:
    """Map a provider's HTTP error to what the client should see."""
    message, code = _upstream_message(content)
    if status in (400, 404, 409, 413, 422):
        # The provider judged the request itself; its message helps the client fix it.
        return ProviderError(
            f"{provider} rejected the request: {message or f'HTTP {status}'}",
            status=400,
            retryable=False,
            code=code or "invalid_request_error",
            type="invalid_request_error",
            upstream_status=status,
        )
    if status in (401, 403):
        # Our credential, not the client's: never echo the provider's text, which may quote the key.
        return ProviderError(
            f"{provider} refused the gateway's credentials (HTTP {status}).",
            status=502,
            retryable=False,
            upstream_status=status,
        )
    if status == 429:
        return ProviderError(
            f"{provider} is rate limiting the gateway (HTTP 429).",
            status=503,
            retryable=True,
            upstream_status=status,
            retry_after=headers.get("retry-after"),
        )
    return ProviderError(
        f"{provider} failed with HTTP {status}.", status=502, retryable=status >= 500, upstream_status=status
    )


class OpenAIAdapter(Adapter):
    def url(self, model: CatalogModel) -> str:
        return f"{model.base_url}/chat/completions"

    def headers(self, model: CatalogModel) -> dict[str, str]:
        # A provider that needs no key (a local server, the fake upstream) still
        # gets a bearer, since OpenAI-compatible servers tend to demand one.
        return {"authorization": f"Bearer {model.credential or 'unused'}", "content-type": "application/json"}

    def body(self, model: CatalogModel, request: dict[str, Any], *, stream: bool) -> bytes:
        body = dict(request)
        body["model"] = model.name
        if stream:
            body["stream"] = True
            body["stream_options"] = {**(request.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return orjson.dumps(body)

    async def chat(self, model: CatalogModel, request: dict[str, Any]) -> ChatResult:
        response = await provider_post(
            self.url(model),
            content=self.body(model, request, stream=False),
            headers=self.headers(model),
            provider=model.provider,
            on_error=error_from_response,
        )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ProviderError(f"{model.provider} sent a malformed answer.", status=502, retryable=True) from None
        usage = usage_from_openai(data.get("usage"))
        if usage is None:
            usage = Usage(estimated=True)
        data["model"] = model.name
        return ChatResult(body=data, usage=usage)

    def stream(self, model: CatalogModel, request: dict[str, Any]) -> ChatStream:
        return OpenAIChatStream(self, model, request)

    async def embed(self, model: CatalogModel, request: dict[str, Any]) -> EmbeddingResult:
        body = orjson.dumps({**request, "model": model.name})
        response = await provider_post(
            f"{model.base_url}/embeddings",
            content=body,
            headers=self.headers(model),
            provider=model.provider,
            on_error=error_from_response,
        )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ProviderError(f"{model.provider} sent a malformed answer.", status=502, retryable=True) from None
        usage = usage_from_openai(data.get("usage")) or Usage(estimated=True)
        data["model"] = model.name
        return EmbeddingResult(body=data, usage=usage)


class OpenAIChatStream(ChatStream):
    def __init__(self, adapter: OpenAIAdapter, model: CatalogModel, request: dict[str, Any]) -> None:
        self.adapter = adapter
        self.model = model
        self.request = request
        self.progress = StreamProgress()
        self.response: httpx.Response | None = None

    async def open(self) -> None:
        response = await provider_post(
            self.adapter.url(self.model),
            content=self.adapter.body(self.model, self.request, stream=True),
            headers=self.adapter.headers(self.model),
            stream=True,
            provider=self.model.provider,
            on_error=error_from_response,
        )
        self.response = response

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        assert self.response is not None, "open() first"
        progress = self.progress
        name = self.model.name
        try:
            async for line in self.response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    progress.finished = True
                    break
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if "error" in chunk and "choices" not in chunk:
                    progress.error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": "error"}
                    yield chunk
                    break
                usage = chunk.pop("usage", None)
                if usage:
                    progress.usage = usage_from_openai(usage)
                choices = chunk.get("choices")
                if not choices:
                    continue
                for choice in choices:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        progress.completion_chars += len(content)
                chunk["model"] = name
                yield chunk
        except httpx.HTTPError as exc:
            error = error_from_exception(exc, self.model.provider)
            progress.error = {"message": error.message, "type": error.type, "code": error.code}
            yield {"error": {**progress.error, "param": None}}

    async def close(self) -> None:
        if self.response is not None:
            await self.response.aclose()
