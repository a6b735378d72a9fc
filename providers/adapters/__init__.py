"""The adapter registry: one adapter per wire format, and per provider where a provider has its own dialect."""

from __future__ import annotations

from ..catalog import CatalogModel
from . import anthropic, cohere, gemini, openai_compat
from .base import Adapter, ChatResult, ChatStream, EmbeddingResult, ProviderError, StreamProgress, Usage
from .openai import OpenAIAdapter

_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    **anthropic.ADAPTERS,
    **gemini.ADAPTERS,
    **cohere.ADAPTERS,
    **openai_compat.ADAPTERS,
}


def adapter_for(model: CatalogModel) -> Adapter | None:
    """The provider's own dialect if it has one, else its wire format's adapter."""
    return _ADAPTERS.get(model.provider) or _ADAPTERS.get(model.wire_format)


__all__ = [
    "Adapter",
    "ChatResult",
    "ChatStream",
    "EmbeddingResult",
    "ProviderError",
    "StreamProgress",
    "Usage",
    "adapter_for",
]
