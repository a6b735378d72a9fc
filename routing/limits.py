"""Input limits on the proxy: how many messages a request may carry and how many tokens its prompt may need.

The body size limit (``MUXER_MAX_BODY_BYTES``, a 413) is applied while the body
is read, in ``GatewayConsumer``. These run on the parsed request, before the
rate limits count it: ``MUXER_MAX_MESSAGES`` (``too_many_messages``), and
``MUXER_MAX_INPUT_TOKENS`` and the named model's context window
(``context_length_exceeded``, OpenAI's code for the same refusal). Token counts
are the gateway's estimate (``billing.tokens``), the same one routing and
budgets use. A routed request needs no context check here: routers only
choose models whose window fits.
"""

from __future__ import annotations

from django.conf import settings

from muxer_project.errors import APIError
from providers.catalog import CatalogModel


def too_many_messages(count: int, *, param: str = "messages") -> APIError:
    return APIError(
        400,
        f"The request has {count} messages; the gateway accepts at most {settings.MUXER_MAX_MESSAGES}.",
        code="too_many_messages",
        param=param,
    )


def check_message_count(count: int, *, param: str = "messages") -> None:
    if count > settings.MUXER_MAX_MESSAGES:
        raise too_many_messages(count, param=param)


def check_input_tokens(tokens: int, *, param: str = "messages") -> None:
    """The gateway-wide cap on a request's estimated input tokens."""
    if tokens > settings.MUXER_MAX_INPUT_TOKENS:
        raise APIError(
            400,
            f"The request's input comes to about {tokens} tokens; "
            f"the gateway accepts at most {settings.MUXER_MAX_INPUT_TOKENS}.",
            code="context_length_exceeded",
            param=param,
        )


def check_context_window(
    model: CatalogModel, prompt_tokens: int, output_tokens: int | None, *, param: str = "messages"
) -> None:
    """A prompt (and the answer's ``max_tokens``, when set) must fit the model's context window."""
    needed = prompt_tokens + (output_tokens or 0)
    if needed <= model.context_window:
        return
    parts = f"{prompt_tokens} in the {param}" + (f", {output_tokens} for the completion" if output_tokens else "")
    raise APIError(
        400,
        f"The model '{model.name}' has a context window of {model.context_window} tokens, "
        f"but this request needs about {needed} ({parts}). Shorten the input or the completion.",
        code="context_length_exceeded",
        param=param,
    )
