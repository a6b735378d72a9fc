"""What every provider adapter provides, in the client's (OpenAI) terms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..catalog import CatalogModel
from ..http import upstream_send

ErrorMapper = Callable[[int, bytes, httpx.Headers, str], "ProviderError"]


class ProviderError(Exception):
    """The single error type adapters raise. ``status`` is what the client should get."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retryable: bool,
        code: str = "upstream_error",
        type: str = "upstream_error",
        upstream_status: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.code = code
        self.type = type
        self.upstream_status = upstream_status
        self.retry_after = retry_after


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(slots=True)
class ChatResult:
    body: dict[str, Any]
    usage: Usage


@dataclass(slots=True)
class StreamProgress:
    """What a stream has produced so far; read after the stream ends, is cut, or fails."""

    usage: Usage | None = None
    completion_chars: int = 0
    error: dict[str, Any] | None = None
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class ChatStream(ABC):
    progress: StreamProgress

    @abstractmethod
    async def open(self) -> None:
        """Send the request; raise :class:`ProviderError` if the provider refuses it."""

    @abstractmethod
    def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """OpenAI ``chat.completion.chunk`` objects, without the usage-only chunk."""

    @abstractmethod
    async def close(self) -> None: ...


@dataclass(slots=True)
class EmbeddingResult:
    """An OpenAI ``list`` of ``embedding`` objects, and the input tokens it cost."""

    body: dict[str, Any]
    usage: Usage


class Adapter(ABC):
    @abstractmethod
    async def chat(self, model: CatalogModel, request: dict[str, Any]) -> ChatResult: ...

    @abstractmethod
    def stream(self, model: CatalogModel, request: dict[str, Any]) -> ChatStream: ...

    async def embed(self, model: CatalogModel, request: dict[str, Any]) -> EmbeddingResult:
        """``POST /v1/embeddings`` in OpenAI terms; adapters of providers that embed override this."""
        raise ProviderError(
            f"{model.provider} does not offer embeddings through ModelMuxer.",
            status=400,
            retryable=False,
            code="invalid_request_error",
            type="invalid_request_error",
        )


def _is_timeout(exc: httpx.HTTPError) -> bool:
    # httpx-aiohttp maps every aiohttp connection error, a refused connection
    # included, to httpx.ConnectTimeout; the aiohttp error it chains tells the truth
    # (aiohttp's timeouts are TimeoutErrors).
    if exc.__cause__ is not None:
        return isinstance(exc.__cause__, TimeoutError)
    return isinstance(exc, httpx.TimeoutException)


def error_from_exception(exc: httpx.HTTPError, provider: str) -> ProviderError:
    if _is_timeout(exc):
        return ProviderError(f"{provider} did not answer in time.", status=504, retryable=True, code="upstream_timeout")
    reason = type(exc.__cause__ or exc).__name__
    return ProviderError(f"Could not reach {provider}: {reason}.", status=502, retryable=True)


async def provider_post(
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    provider: str,
    on_error: ErrorMapper,
    stream: bool = False,
) -> httpx.Response:
    """POST through the shared seam; a transport failure or an HTTP error status becomes a ``ProviderError``.

    ``on_error(status, body, headers, provider)`` reads the provider's own error body.
    """
    try:
        response = await upstream_send(url, content=content, headers=headers, stream=stream)
    except httpx.HTTPError as exc:
        raise error_from_exception(exc, provider) from None
    if response.status_code >= 400:
        if stream:
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        else:
            body = response.content
        raise on_error(response.status_code, body, response.headers, provider)
    return response
