"""What the embedding adapters of providers other than OpenAI share.

The client always gets OpenAI's ``list`` of ``embedding`` objects, whatever
the provider's shape. Three rules hold for every such provider:

- Input is text. OpenAI also takes token arrays (``int[]``, ``int[][]``), but
  those are ids of OpenAI's tokenizers: another provider's model would read
  them as different text, or refuse them, so they are refused with a 400
  before any call.
- ``encoding_format: "base64"`` is base64 of the little-endian float32 values,
  as OpenAI sends it, even when the provider only answers with floats.
- Usage the provider does not report is estimated (about four characters a
  token), written into the body so that OpenAI clients find ``usage``, and
  marked ``estimated`` so the gateway records it as such.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from typing import Any

from billing.tokens import estimate_text_tokens

from ..catalog import CatalogModel
from .base import EmbeddingResult, ProviderError, Usage

BASE64 = "base64"
_FLOAT32 = 4


def text_inputs(request: dict[str, Any], provider: str) -> list[str]:
    """The request's input as texts; token arrays are refused (see the module docstring)."""
    value = request["input"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise ProviderError(
        f"{provider} embeds text only: 'input' holds token ids, which are OpenAI's tokenizer's and mean "
        "nothing to this model. Send the text itself.",
        status=400,
        retryable=False,
        code="invalid_request_error",
        type="invalid_request_error",
    )


def unsupported_embedding_option(provider: str, param: str, why: str) -> ProviderError:
    return ProviderError(
        f"{provider} does not support {why}; remove '{param}' or choose another model.",
        status=400,
        retryable=False,
        code="unsupported_parameter",
        type="invalid_request_error",
    )


def malformed(provider: str) -> ProviderError:
    return ProviderError(f"{provider} sent a malformed answer.", status=502, retryable=True)


def batches(texts: list[str], size: int) -> list[list[str]]:
    """The texts in runs of at most ``size``, for providers that cap the inputs of one call."""
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def float_values(value: Any, provider: str) -> list[float] | str:
    """One provider vector as floats, or as a base64 string the provider already encoded."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    raise malformed(provider)


def encoded(values: list[float] | str, encoding_format: str | None, provider: str) -> list[float] | str:
    """A vector in the encoding the client asked for."""
    if encoding_format == BASE64:
        if isinstance(values, str):
            return values
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    if isinstance(values, list):
        return values
    try:
        raw = base64.b64decode(values, validate=True)
    except (binascii.Error, ValueError):
        raise malformed(provider) from None
    if len(raw) % _FLOAT32:
        raise malformed(provider)
    return list(struct.unpack(f"<{len(raw) // _FLOAT32}f", raw))


def estimated_usage(texts: Sequence[str]) -> Usage:
    return Usage(input_tokens=sum(estimate_text_tokens(len(text)) for text in texts), estimated=True)


def openai_embeddings(
    model: CatalogModel,
    vectors: Sequence[list[float] | str],
    usage: Usage,
    encoding_format: str | None,
) -> EmbeddingResult:
    """The OpenAI ``list`` for the provider's vectors, in input order."""
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encoded(values, encoding_format, model.provider)}
            for index, values in enumerate(vectors)
        ],
        "model": model.name,
        "usage": {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens},
    }
    return EmbeddingResult(body=body, usage=usage)
