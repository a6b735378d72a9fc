"""A fast token estimate for reservations, routing and when a provider reports no usage.

About four characters a token for ASCII text, as OpenAI, Anthropic and Google
all state for English. Text with other characters is measured in UTF-8 bytes
instead, four to a token: byte-level BPE tokenizers spend about a token on each
CJK character (three bytes) and on every two or three Cyrillic or Greek ones
(two bytes each), where counting characters would guess a quarter of that.
tests/billing/test_tokens.py reports the error against provider-reported counts.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
# Role markers and separators each message adds in chat templates.
TOKENS_PER_MESSAGE = 4


def estimate_text_tokens(chars: int) -> int:
    """Tokens in ``chars`` characters of ASCII text (or UTF-8 bytes of any text)."""
    return -(-chars // CHARS_PER_TOKEN) if chars > 0 else 0


def text_units(text: str) -> int:
    """What the estimate counts: characters of ASCII text, UTF-8 bytes of anything else."""
    # isascii() is a single pass in C, so plain English costs no more than len().
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def estimate_tokens(text: str) -> int:
    return estimate_text_tokens(text_units(text))


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    units = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            units += text_units(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    units += text_units(part["text"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                units += text_units(str(function.get("arguments") or "")) + text_units(str(function.get("name") or ""))
    return estimate_text_tokens(units) + TOKENS_PER_MESSAGE * len(messages)
