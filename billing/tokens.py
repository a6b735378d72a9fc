"""A fast token estimate for when a provider reports no usage (about 4 characters per token)."""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
# Role markers and separators each message adds in chat templates.
TOKENS_PER_MESSAGE = 4


def estimate_text_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN) if chars > 0 else 0


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                chars += len(str(function.get("arguments") or "")) + len(str(function.get("name") or ""))
    return estimate_text_tokens(chars) + TOKENS_PER_MESSAGE * len(messages)
