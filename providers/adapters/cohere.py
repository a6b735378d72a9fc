"""The Cohere v2 chat wire format (``POST {base_url}/chat``), translated to and from OpenAI's.

Requests: system and developer messages become one leading ``system`` turn
(Cohere wants the system turn first); user content keeps its text and
``image_url`` parts; an assistant's tool calls stay OpenAI-shaped, and text
beside them becomes ``tool_plan``, Cohere's slot for it; tool results keep
``tool_call_id``. Sampling maps ``top_p`` to ``p``, ``stop`` to
``stop_sequences``, JSON mode to ``{"type": "json_object", "json_schema"?}``.

Cohere has no named ``tool_choice``. A named choice is sent as ``REQUIRED``
with only that tool in ``tools``: the model must call a tool and that is the
only one it has, which is exactly OpenAI's "call this function".

Responses: text content items are joined; ``thinking`` items and the
``tool_plan`` are the model's reasoning and are not shown, as OpenAI shows
none (a tool-call turn has ``content: null``); citations have no OpenAI
equivalent and are dropped. ``ERROR`` and ``TIMEOUT`` finishes are failures,
not answers.

Usage: Cohere reports ``billed_units`` (what it invoices) and ``tokens``
(everything the model read, its own prompt template included, so usually
more input). The catalog's Cohere prices are per billed token, so the
gateway bills, records and reports ``billed_units``, falling back to
``tokens`` field by field where a billed count is missing. The client sees
the same figures it is charged for, in non-streamed bodies and in the
streamed usage chunk alike (the proxy builds that chunk from the recorded
usage, so there can only be one figure).

Embeddings (``POST {base_url}/embed``): texts only, as ``search_document``
float vectors (see ``embed_body``), in runs of at most 96 texts, Cohere's
limit per call; the usage is ``meta.billed_units.input_tokens`` summed over
the runs. Over-long texts are left to Cohere's default truncation (``END``).
"""

from __future__ import annotations

import time
import uuid
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
from .embeddings import batches, estimated_usage, float_values, malformed, openai_embeddings, text_inputs

PROVIDER = "cohere"
# Cohere's documented bounds for p; OpenAI allows top_p in [0, 1].
P_MIN, P_MAX = 0.01, 0.99
PENALTY_MIN, PENALTY_MAX = 0.0, 1.0

FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
FAILED_FINISHES = frozenset({"ERROR", "TIMEOUT"})

# OpenAI parameters whose request cannot be honoured: dropping them would
# silently change what the client asked for.
_UNSUPPORTED = {
    "functions": "the legacy 'functions' parameter; use 'tools'",
    "function_call": "the legacy 'function_call' parameter; use 'tool_choice'",
    "logit_bias": "'logit_bias' (token ids are specific to OpenAI's tokenizers)",
    "audio": "audio output",
    "web_search_options": "web search",
}


def _unsupported(what: str) -> ProviderError:
    return ProviderError(
        f"cohere does not support {what}.",
        status=400,
        retryable=False,
        code="unsupported_parameter",
        type="invalid_request_error",
    )


def _invalid(message: str) -> ProviderError:
    return ProviderError(
        message, status=400, retryable=False, code="invalid_request_error", type="invalid_request_error"
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# --- OpenAI request -> Cohere request ------------------------------------------------


def _joined_text(content: Any) -> str:
    """The text of a string or of text (and refusal) parts, concatenated."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "refusal":
            texts.append(str(part.get("refusal") or ""))
    return "".join(texts)


def _text_parts(content: Any, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and role == "assistant":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        else:
            raise _unsupported(f"'{kind}' content parts in {role} messages")
    return parts


def _user_content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            source = part["image_url"]
            image: dict[str, Any] = {"url": source["url"]}
            if source.get("detail"):
                image["detail"] = source["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _unsupported(f"'{kind}' content parts")
    return parts


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
    return {
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": function.get("name"), "arguments": arguments},
    }


def _assistant(message: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {"role": "assistant"}
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    if tool_calls:
        converted["tool_calls"] = [_tool_call(call) for call in tool_calls]
        # Text said alongside a tool call is what Cohere calls the tool plan.
        plan = _joined_text(content)
        if plan:
            converted["tool_plan"] = plan
    else:
        converted["content"] = _text_parts(content, "assistant")
    return converted


def cohere_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system: list[str] = []
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role in ("system", "developer"):
            system.append(_joined_text(message.get("content")))
        elif role == "user":
            converted.append({"role": "user", "content": _user_content(message["content"])})
        elif role == "assistant":
            converted.append(_assistant(message))
        elif role == "tool":
            converted.append(
                {
                    "role": "tool",
                    "tool_call_id": message["tool_call_id"],
                    "content": _text_parts(message.get("content") or "", "tool"),
                }
            )
        else:
            raise _unsupported("the legacy 'function' role; send tool results with role 'tool'")
    if system:
        # Cohere rejects a system turn anywhere but first; OpenAI allows several anywhere.
        converted.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return converted


def _cohere_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    converted: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        converted["description"] = function["description"]
    # OpenAI lets a function without arguments omit its schema; Cohere wants one.
    converted["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "function", "function": converted}


def _tools(body: dict[str, Any], tools: list[dict[str, Any]] | None, choice: Any) -> None:
    if not tools:
        if isinstance(choice, dict) or choice == "required":
            raise _invalid("'tool_choice' needs 'tools'.")
        return
    chosen = tools
    if choice == "required":
        body["tool_choice"] = "REQUIRED"
    elif choice == "none":
        body["tool_choice"] = "NONE"
    elif isinstance(choice, dict):
        if choice.get("type") != "function":
            raise _unsupported(f"tool_choice of type {choice.get('type')!r}")
        name = (choice.get("function") or {}).get("name")
        chosen = [tool for tool in tools if tool["function"]["name"] == name]
        if not chosen:
            raise _invalid(f"'tool_choice' names '{name}', which is not in 'tools'.")
        # No named choice in Cohere: require a call, with the named tool the only one offered.
        body["tool_choice"] = "REQUIRED"
    body["tools"] = [_cohere_tool(tool) for tool in chosen]
    # Cohere's strictness is per request, not per tool: any strict tool makes all strict.
    if any(tool["function"].get("strict") is True for tool in chosen):
        body["strict_tools"] = True


def _response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not response_format or response_format.get("type") == "text":
        return None
    converted: dict[str, Any] = {"type": "json_object"}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema:
            converted["json_schema"] = schema
    return converted


def _penalty(request: dict[str, Any], name: str) -> float | None:
    value = request.get(name)
    if value is None:
        return None
    if not PENALTY_MIN <= value <= PENALTY_MAX:
        raise _invalid(f"cohere accepts '{name}' between 0 and 1 only; got {value!r}.")
    return float(value)


def _reject_unsupported(request: dict[str, Any]) -> None:
    n = request.get("n")
    if n is not None and n != 1:
        raise _unsupported("n > 1 (it returns one choice per request)")
    for name, what in _UNSUPPORTED.items():
        value = request.get(name)
        # An empty web_search_options still asks for search; an empty bias or function list asks nothing.
        if value or (name == "web_search_options" and value is not None):
            raise _unsupported(what)
    if "audio" in (request.get("modalities") or ()):
        raise _unsupported("audio output")


def chat_body(model: CatalogModel, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The Cohere request for an OpenAI chat-completions request.

    Dropped because Cohere has no equivalent and leaving them out changes no
    answer's meaning: ``user``, ``metadata``, ``store``, ``service_tier``,
    ``logprobs``/``top_logprobs`` (the answer just carries no logprobs),
    ``parallel_tool_calls``, ``reasoning_effort``, ``prediction``,
    ``verbosity``, ``prompt_cache_key``, ``safety_identifier``, ``stream_options``
    (usage always comes with ``message-end``).
    """
    _reject_unsupported(request)
    body: dict[str, Any] = {"model": model.name, "messages": cohere_messages(request["messages"])}
    if stream:
        body["stream"] = True
    _tools(body, request.get("tools"), request.get("tool_choice"))
    response_format = _response_format(request.get("response_format"))
    if response_format is not None:
        body["response_format"] = response_format
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    stop = request.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if request.get("temperature") is not None:
        body["temperature"] = request["temperature"]
    top_p = request.get("top_p")
    if top_p is not None:
        # top_p=1 (no nucleus cut, a common client default) is out of Cohere's
        # range; the nearest value it accepts means nearly the same.
        body["p"] = min(max(float(top_p), P_MIN), P_MAX)
    if request.get("seed") is not None:
        body["seed"] = request["seed"]
    for name in ("frequency_penalty", "presence_penalty"):
        value = _penalty(request, name)
        if value is not None:
            body[name] = value
    return body


# --- Cohere response -> OpenAI response -------------------------------------------------


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # Cohere documents these counts as possibly fractional.
    return round(value)


def usage_from_cohere(raw: Any) -> Usage | None:
    """Billed units where Cohere gives them, else actual tokens (see the module docstring)."""
    if not isinstance(raw, dict):
        return None
    billed = _dict(raw.get("billed_units"))
    tokens = _dict(raw.get("tokens"))
    counts: dict[str, int | None] = {}
    for key in ("input_tokens", "output_tokens"):
        billed_count = _count(billed.get(key))
        counts[key] = billed_count if billed_count is not None else _count(tokens.get(key))
    if counts["input_tokens"] is None and counts["output_tokens"] is None:
        return None
    input_tokens = counts["input_tokens"] or 0
    cached = _count(raw.get("cached_tokens")) or 0
    return Usage(
        input_tokens=input_tokens,
        output_tokens=counts["output_tokens"] or 0,
        # Cached tokens are counted against the whole prompt; keep them a part of what is billed.
        cached_input_tokens=min(cached, input_tokens),
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens, "audio_tokens": 0},
    }


def completion_id(cohere_id: Any) -> str:
    if isinstance(cohere_id, str) and cohere_id:
        return f"chatcmpl-{cohere_id.replace('-', '')}"
    return f"chatcmpl-{uuid.uuid4().hex}"


def failed_finish(finish_reason: str, detail: Any) -> ProviderError:
    """A non-streamed answer that Cohere itself marks as failed."""
    suffix = f": {str(detail)[:300]}" if detail else ""
    if finish_reason == "TIMEOUT":
        return ProviderError(
            f"cohere timed out generating the answer{suffix}", status=504, retryable=True, code="upstream_timeout"
        )
    return ProviderError(f"cohere failed generating the answer{suffix}", status=502, retryable=True)


def _openai_tool_calls(calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        return []
    return [_tool_call(call) for call in calls if isinstance(call, dict)]


def chat_result(model: CatalogModel, data: dict[str, Any]) -> ChatResult:
    finish = data.get("finish_reason")
    if finish in FAILED_FINISHES:
        raise failed_finish(str(finish), data.get("error"))
    message = data.get("message") or {}
    text = "".join(
        str(item.get("text") or "")
        for item in message.get("content") or ()
        if isinstance(item, dict) and item.get("type") == "text"
    )
    tool_calls = _openai_tool_calls(message.get("tool_calls"))
    openai_message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        openai_message["tool_calls"] = tool_calls
    usage = usage_from_cohere(data.get("usage"))
    body: dict[str, Any] = {
        "id": completion_id(data.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model.name,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": openai_message,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(str(finish), "stop"),
            }
        ],
    }
    if usage is None:
        usage = Usage(estimated=True)
    else:
        body["usage"] = openai_usage(usage)
    return ChatResult(body=body, usage=usage)


# --- errors ------------------------------------------------------------------------------


def _upstream_message(content: bytes) -> str:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return ""
    message = data.get("message") if isinstance(data, dict) else None
    return str(message)[:500] if message else ""


def error_from_response(status: int, content: bytes, headers: httpx.Headers, provider: str = "cohere") -> ProviderError:
    """Map Cohere's HTTP error (``{"message": ...}``) to what the client should see."""
    if status in (400, 404, 409, 413, 422):
        # The request itself was judged; Cohere's message helps the client fix it.
        message = _upstream_message(content) or f"HTTP {status}"
        code = "context_length_exceeded" if message.startswith("too many tokens") else "invalid_request_error"
        return ProviderError(
            f"cohere rejected the request: {message}",
            status=400,
            retryable=False,
            code=code,
            type="invalid_request_error",
            upstream_status=status,
        )
    if status in (401, 402, 403):
        # Our key or our account's billing: never echo the text, which may quote the key.
        return ProviderError(
            f"cohere refused the gateway's credentials (HTTP {status}).",
            status=502,
            retryable=False,
            upstream_status=status,
        )
    if status == 429:
        return ProviderError(
            "cohere is rate limiting the gateway (HTTP 429).",
            status=503,
            retryable=True,
            upstream_status=status,
            retry_after=headers.get("retry-after"),
        )
    if status in (498, 499, 501):
        # Refused for good (a blocked or invalid-token request, a cancelled one,
        # a feature Cohere does not implement): the same call cannot succeed,
        # though another model on the route may.
        return ProviderError(
            f"cohere refused the request (HTTP {status}).", status=502, retryable=False, upstream_status=status
        )
    if status == 504:
        return ProviderError(
            "cohere did not answer in time (HTTP 504).",
            status=504,
            retryable=True,
            code="upstream_timeout",
            upstream_status=status,
        )
    return ProviderError(
        f"cohere failed with HTTP {status}.", status=502, retryable=status >= 500, upstream_status=status
    )


# --- embeddings ---------------------------------------------------------------------------

# Cohere embeds at most this many texts in one call; longer inputs are sent in runs.
EMBED_BATCH_TEXTS = 96
EMBED_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})
DEFAULT_INPUT_TYPE = "search_document"


def embed_body(model: CatalogModel, request: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """The ``/v2/embed`` body for (one run of) an OpenAI embeddings request's texts.

    ``input_type`` is required by Cohere's v3+ models and has no OpenAI
    counterpart: ``search_document`` unless the request names another (an
    ``input_type`` key, which the gateway's schema does not let clients send
    yet). ``dimensions`` is ``output_dimension``; ``encoding_format`` is
    applied to the floats asked for here; ``user`` is dropped.
    """
    input_type = request.get("input_type") or DEFAULT_INPUT_TYPE
    if input_type not in EMBED_INPUT_TYPES:
        raise _invalid(f"cohere's input_type must be one of {', '.join(sorted(EMBED_INPUT_TYPES))}.")
    body: dict[str, Any] = {
        "model": model.name,
        "input_type": input_type,
        "embedding_types": ["float"],
        "texts": texts,
    }
    if request.get("dimensions") is not None:
        body["output_dimension"] = request["dimensions"]
    return body


def embed_answer(data: dict[str, Any], count: int) -> tuple[list[list[float] | str], Usage | None]:
    """The float vectors of an ``embeddings_by_type`` answer, and its billed input tokens."""
    embeddings = data.get("embeddings")
    # embeddings_by_type keys vectors by type; the older embeddings_floats answer is a bare list.
    vectors = embeddings.get("float") if isinstance(embeddings, dict) else embeddings
    if not isinstance(vectors, list) or len(vectors) != count or not all(isinstance(v, list) for v in vectors):
        raise malformed(PROVIDER)
    billed = _count(_dict(_dict(data.get("meta")).get("billed_units")).get("input_tokens"))
    usage = None if billed is None else Usage(input_tokens=billed)
    return [float_values(vector, PROVIDER) for vector in vectors], usage


# --- streaming ----------------------------------------------------------------------------


class StreamTranslator:
    """Cohere stream events in, OpenAI ``chat.completion.chunk`` dicts out; fills ``progress``."""

    def __init__(self, model_name: str, progress: StreamProgress) -> None:
        self.model_name = model_name
        self.progress = progress
        self.id = completion_id(None)
        self.created = int(time.time())
        # Cohere numbers a stream's tool calls by event index; OpenAI wants 0, 1, ... per call.
        self.call_index: dict[Any, int] = {}
        self.ended = False

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def error(self, message: str, code: str = "upstream_error") -> dict[str, Any]:
        self.progress.error = {"message": message, "type": "upstream_error", "code": code}
        return {"error": {**self.progress.error, "param": None}}

    def _text(self, text: Any) -> list[dict[str, Any]]:
        if not isinstance(text, str) or not text:
            return []
        self.progress.completion_chars += len(text)
        return [self.chunk({"content": text})]

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        delta = _dict(event.get("delta"))
        message = _dict(delta.get("message"))
        if kind == "message-start":
            if event.get("id"):
                self.id = completion_id(event["id"])
            return [self.chunk({"role": "assistant", "content": "", "refusal": None})]
        if kind in ("content-start", "content-delta"):
            # Thinking arrives as content.thinking, never as content.text, so it is left out.
            return self._text(_dict(message.get("content")).get("text"))
        if kind == "tool-call-start":
            calls = message.get("tool_calls")
            # Documented as one object; tolerate a list.
            return [self._call_start(event.get("index"), call) for call in _as_list(calls)]
        if kind == "tool-call-delta":
            chunks = []
            for call in _as_list(message.get("tool_calls")):
                arguments = (call.get("function") or {}).get("arguments")
                if isinstance(arguments, str) and arguments:
                    index = self.call_index.get(event.get("index"), len(self.call_index) - 1)
                    chunks.append(
                        self.chunk({"tool_calls": [{"index": max(index, 0), "function": {"arguments": arguments}}]})
                    )
            return chunks
        if kind == "message-end":
            return self._end(delta)
        # content-end, tool-plan-delta, tool-call-end, citation-*, debug: nothing for OpenAI.
        return []

    def _call_start(self, event_index: Any, call: dict[str, Any]) -> dict[str, Any]:
        index = len(self.call_index)
        self.call_index[event_index if event_index is not None else f"call-{index}"] = index
        function = call.get("function") or {}
        arguments = function.get("arguments")
        return self.chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                        "type": "function",
                        "function": {
                            "name": function.get("name"),
                            "arguments": arguments if isinstance(arguments, str) else "",
                        },
                    }
                ]
            }
        )

    def _end(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        self.ended = True
        usage = usage_from_cohere(delta.get("usage"))
        if usage is not None:
            # Tokens were spent (and billed) even when the generation failed.
            self.progress.usage = usage
        finish = str(delta.get("finish_reason") or "COMPLETE")
        if finish in FAILED_FINISHES:
            detail = delta.get("error")
            suffix = f": {str(detail)[:300]}" if detail else ""
            if finish == "TIMEOUT":
                return [self.error(f"cohere timed out mid-stream{suffix}", "upstream_timeout")]
            return [self.error(f"cohere failed mid-stream{suffix}")]
        self.progress.finished = True
        return [self.chunk({}, FINISH_REASONS.get(finish, "stop"))]


def _as_list(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


class CohereChatStream(ChatStream):
    def __init__(self, adapter: CohereAdapter, model: CatalogModel, request: dict[str, Any]) -> None:
        self.adapter = adapter
        self.model = model
        self.request = request
        self.progress = StreamProgress()
        self.response: httpx.Response | None = None

    async def open(self) -> None:
        content = orjson.dumps(chat_body(self.model, self.request, stream=True))
        response = await provider_post(
            self.adapter.url(self.model),
            content=content,
            headers=self.adapter.headers(self.model, stream=True),
            stream=True,
            provider=self.model.provider,
            on_error=error_from_response,
        )
        self.response = response

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        assert self.response is not None, "open() first"
        translator = StreamTranslator(self.model.name, self.progress)
        try:
            async for line in self.response.aiter_lines():
                # The event type is repeated inside the data, so `event:` lines are not needed.
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(event, dict):
                    continue
                for chunk in translator.feed(event):
                    yield chunk
                if translator.ended:
                    return
        except httpx.HTTPError as exc:
            error = error_from_exception(exc, self.model.provider)
            yield translator.error(error.message, error.code)
            return
        # A Cohere stream is complete only with its message-end event.
        yield translator.error("cohere ended the stream before it finished.")

    async def close(self) -> None:
        if self.response is not None:
            await self.response.aclose()


class CohereAdapter(Adapter):
    def url(self, model: CatalogModel) -> str:
        return f"{model.base_url}/chat"

    def headers(self, model: CatalogModel, *, stream: bool) -> dict[str, str]:
        return {
            "authorization": f"Bearer {model.credential or 'unused'}",
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }

    async def chat(self, model: CatalogModel, request: dict[str, Any]) -> ChatResult:
        content = orjson.dumps(chat_body(model, request, stream=False))
        response = await provider_post(
            self.url(model),
            content=content,
            headers=self.headers(model, stream=False),
            provider=model.provider,
            on_error=error_from_response,
        )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise ProviderError("cohere sent a malformed answer.", status=502, retryable=True)
        return chat_result(model, data)

    def stream(self, model: CatalogModel, request: dict[str, Any]) -> ChatStream:
        return CohereChatStream(self, model, request)

    async def embed(self, model: CatalogModel, request: dict[str, Any]) -> EmbeddingResult:
        texts = text_inputs(request, PROVIDER)
        vectors: list[list[float] | str] = []
        usage = Usage()
        for run in batches(texts, EMBED_BATCH_TEXTS):
            content = orjson.dumps(embed_body(model, request, run))
            response = await provider_post(
                f"{model.base_url}/embed",
                content=content,
                headers=self.headers(model, stream=False),
                provider=model.provider,
                on_error=error_from_response,
            )
            try:
                data = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                raise malformed(PROVIDER)
            run_vectors, run_usage = embed_answer(data, len(run))
            run_usage = run_usage or estimated_usage(run)
            vectors += run_vectors
            usage.input_tokens += run_usage.input_tokens
            usage.estimated = usage.estimated or run_usage.estimated
        return openai_embeddings(model, vectors, usage, request.get("encoding_format"))


ADAPTERS: dict[str, Adapter] = {"cohere": CohereAdapter()}
