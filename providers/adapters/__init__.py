from __future__ import annotations

from .base import Adapter, ChatResult, ChatStream, ProviderError, StreamProgress, Usage
from .openai import OpenAIAdapter

_ADAPTERS: dict[str, Adapter] = {"openai": OpenAIAdapter()}


def adapter_for(wire_format: str) -> Adapter | None:
    return _ADAPTERS.get(wire_format)


__all__ = ["Adapter", "ChatResult", "ChatStream", "ProviderError", "StreamProgress", "Usage", "adapter_for"]
