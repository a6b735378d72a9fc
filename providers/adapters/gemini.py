"""Adapter for the gemini wire format (not written yet; registered once ADAPTERS is filled)."""

from __future__ import annotations

from .base import Adapter

# Keys are wire formats ("anthropic", "gemini", "cohere") or, for dialects of the
# OpenAI format, provider slugs ("mistral", "groq", "together").
ADAPTERS: dict[str, Adapter] = {}
