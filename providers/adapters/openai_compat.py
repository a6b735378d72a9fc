"""Mistral, Groq and Together AI: OpenAI's wire format, each with its own differences.

Each adapter is the OpenAI adapter with four seams of its own: the request
body (only what the provider accepts, renamed where it differs), checks that
refuse a request before any call when dropping a parameter would change its
meaning, the answer and every stream chunk turned back into pure OpenAI
objects (provider-only fields removed, stop reasons mapped, usage read where
the provider puts it), and the provider's own error bodies.

Parameters the client sent that the provider does not take are dropped when
that only loses a hint (``user``, ``store``, ``metadata``, ``service_tier``,
``parallel_tool_calls`` on Together, ...). Asking for log probabilities or
audio output is refused with a 400 on all three (none returns them in
OpenAI's shape), as is the deprecated ``functions`` API on Mistral and
Together, and ``n`` > 1 on Groq.

Mistral tool-call ids
---------------------
Mistral refuses a conversation whose tool-call ids are not exactly nine
characters of ``[a-zA-Z0-9]``, so ids minted elsewhere (OpenAI's ``call_...``)
could not be replayed to it. Outgoing, every id that does not already fit is
replaced by ``mistral_tool_call_id(id)``: nine base-62 characters of a hash of
the client's id, the same for the assistant's call and the tool result that
answers it, and for every later request of the conversation, so no state is
kept. Incoming, an id in Mistral's answer that is the image of one of the
request's ids is turned back into the client's id; ids Mistral mints itself
already fit and pass through unchanged both ways.

Embeddings
----------
Mistral and Together AI embed text at ``POST {base_url}/embeddings`` in an
OpenAI-like shape (see ``providers.adapters.embeddings`` for the rules all
non-OpenAI providers share). Both are asked for floats, which are encoded
here when the client wants base64. Mistral takes ``dimensions`` as
``output_dimension`` and reports usage. Together takes only ``model`` and
``input``: ``dimensions`` is refused (its models have one size each), and
its usage, not guaranteed, is estimated when missing. ``user`` is dropped
for both. Groq keeps the OpenAI adapter's pass-through.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from ..catalog import CatalogModel
from .base import (
    ChatResult,
    ChatStream,
    EmbeddingResult,
    ProviderError,
    StreamProgress,
    Usage,
    error_from_exception,
    provider_post,
)
from .embeddings import (
    estimated_usage,
    float_values,
    malformed,
    openai_embeddings,
    text_inputs,
    unsupported_embedding_option,
)
from .openai import OpenAIAdapter, OpenAIChatStream, error_from_response, usage_from_openai

# The keys of OpenAI objects; anything else a provider adds is dropped on the way back.
_COMPLETION_KEYS = ("id", "object", "created", "model", "system_fingerprint")
# Kept from a provider's message besides role, content, refusal and tool_calls.
_MESSAGE_EXTRA_KEYS = ("function_call", "annotations")
_DELTA_KEYS = ("role", "content", "refusal", "tool_calls", "function_call")
_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MISTRAL_TOOL_ID = re.compile(r"[a-zA-Z0-9]{9}")
_DEVELOPER_ROLE = "developer"


def unsupported(provider: str, what: str, param: str) -> ProviderError:
    return ProviderError(
        f"{provider} does not support {what}; remove '{param}' or choose another model.",
        status=400,
        retryable=False,
        code="unsupported_parameter",
        type="invalid_request_error",
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    """A Usage as OpenAI writes it, whatever extra fields the provider's own usage had."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens, "audio_tokens": 0},
    }


def text_of(content: Any) -> str | None:
    """Text of a message: a string, or a list of parts whose thinking parts are left out."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str)
        )
    return str(content)


def _arguments_string(arguments: Any) -> Any:
    # Mistral may send arguments as an object; OpenAI clients expect a JSON string.
    if isinstance(arguments, dict | list):
        return orjson.dumps(arguments).decode()
    return arguments


def provider_error_info(content: bytes) -> tuple[str, str | None, str | None]:
    """(message, code, type) from any of the error bodies these providers send."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return "", None, None
    if not isinstance(data, dict):
        return "", None, None
    error = data.get("error")
    if isinstance(error, str):
        return error[:500], None, None
    if not isinstance(error, dict):
        # Mistral: {"object":"error","message":...} with the message possibly {"detail":[...]},
        # or a bare {"detail":[...]} (422), or an older {"message": "..."}.
        error = data
    message = error.get("message")
    detail = message.get("detail") if isinstance(message, dict) else error.get("detail")
    if detail is not None:
        message = _detail_text(detail)
    code = error.get("code")
    type_ = error.get("type")
    code = code if isinstance(code, str) and code and not code.isdigit() else None
    return str(message or "")[:500], code, type_ if isinstance(type_, str) else None


def _detail_text(detail: Any) -> str:
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for item in detail:
        if isinstance(item, dict):
            where = ".".join(str(piece) for piece in item.get("loc") or () if piece != "body")
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts)


@dataclass(slots=True)
class StreamState:
    """What adapting one stream's chunks needs to remember."""

    # Provider tool-call ids to turn back into the client's.
    ids: dict[str, str] = field(default_factory=dict)
    # Choices whose first delta (the one that carries the role) has gone out.
    started: set[int] = field(default_factory=set)


class CompatAdapter(OpenAIAdapter):
    """The OpenAI adapter for a provider whose OpenAI dialect differs; subclasses fill the seams."""

    # Client fields passed on unchanged (after message translation).
    passed: tuple[str, ...] = ()
    finish_reasons: dict[str, str] = {}

    # --- seams ---------------------------------------------------------------
    def check(self, model: CatalogModel, request: dict[str, Any]) -> None:
        """Refuse, before any call, what cannot be dropped without changing the answer."""
        if request.get("logprobs") or request.get("top_logprobs") is not None:
            raise unsupported(model.provider, "log probabilities", "logprobs")
        if request.get("audio") is not None or "audio" in (request.get("modalities") or ()):
            raise unsupported(model.provider, "audio output", "audio")

    def payload(self, model: CatalogModel, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model.name,
            "messages": [self.message(message) for message in request["messages"]],
        }
        for key in self.passed:
            value = request.get(key)
            if value is not None:
                body[key] = value
        if stream:
            body["stream"] = True
        return body

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        out = dict(message)
        if out.get("role") == _DEVELOPER_ROLE:
            out["role"] = "system"
        # OpenAI-only assistant fields no other provider takes.
        out.pop("refusal", None)
        out.pop("audio", None)
        return out

    def body(self, model: CatalogModel, request: dict[str, Any], *, stream: bool) -> bytes:
        return orjson.dumps(self.payload(model, request, stream=stream))

    def refine(self, error: ProviderError, status: int, message: str, type_: str | None) -> ProviderError:
        """Adjust the generic status mapping where this provider means something else."""
        return error

    def response_ids(self, request: dict[str, Any]) -> dict[str, str]:
        """Provider tool-call ids to turn back into the client's (see Mistral)."""
        return {}

    # --- shared machinery ------------------------------------------------------
    def error(self, status: int, content: bytes, headers: httpx.Headers, provider: str) -> ProviderError:
        message, code, type_ = provider_error_info(content)
        # A numeric code (Mistral's "3280") means nothing to a client; its type names the problem.
        normalized = orjson.dumps({"error": {"message": message, "code": code or type_}})
        return self.refine(error_from_response(status, normalized, headers, provider), status, message, type_)

    def finish(self, reason: Any) -> Any:
        return self.finish_reasons.get(reason, reason) if isinstance(reason, str) else reason

    def tool_calls(self, calls: Any, ids: dict[str, str], *, streamed: bool) -> list[dict[str, Any]] | None:
        if not isinstance(calls, list) or not calls:
            return None
        out = []
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            fixed: dict[str, Any] = {}
            if streamed:
                fixed["index"] = call.get("index", position)
            if call.get("id") is not None:
                fixed["id"] = ids.get(call["id"], call["id"])
                fixed["type"] = "function"
            function = call.get("function")
            if isinstance(function, dict):
                fixed_function = {key: function[key] for key in ("name", "arguments") if key in function}
                if "arguments" in fixed_function:
                    fixed_function["arguments"] = _arguments_string(fixed_function["arguments"])
                elif not streamed:
                    fixed_function["arguments"] = "{}"
                fixed["function"] = fixed_function
            out.append(fixed)
        return out

    def failure(self, provider: str, reason: str) -> dict[str, Any]:
        return {
            "message": f"{provider} stopped generating with an error (finish_reason {reason!r}).",
            "type": "upstream_error",
            "code": "upstream_error",
        }

    def answer(
        self, model: CatalogModel, data: dict[str, Any], request: dict[str, Any]
    ) -> tuple[dict[str, Any], Usage]:
        """The provider's chat completion as OpenAI's, and its usage."""
        ids = self.response_ids(request)
        usage = usage_from_openai(data.get("usage")) or Usage(estimated=True)
        body: dict[str, Any] = {key: data[key] for key in _COMPLETION_KEYS if key in data}
        body["object"] = "chat.completion"
        body["model"] = model.name
        choices = []
        for position, choice in enumerate(data.get("choices") or ()):
            finish = self.finish(choice.get("finish_reason"))
            if finish == "error":
                raise ProviderError(
                    self.failure(model.provider, str(choice.get("finish_reason")))["message"],
                    status=502,
                    retryable=True,
                )
            raw_message = choice.get("message") or {}
            message: dict[str, Any] = {
                "role": raw_message.get("role") or "assistant",
                "content": text_of(raw_message.get("content")),
                "refusal": raw_message.get("refusal"),
            }
            calls = self.tool_calls(raw_message.get("tool_calls"), ids, streamed=False)
            if calls:
                message["tool_calls"] = calls
                # OpenAI sends null, not "", beside tool calls.
                message["content"] = message["content"] or None
            for key in _MESSAGE_EXTRA_KEYS:
                if raw_message.get(key) is not None:
                    message[key] = raw_message[key]
            choices.append(
                {"index": choice.get("index", position), "message": message, "logprobs": None, "finish_reason": finish}
            )
        body["choices"] = choices
        if not usage.estimated:
            body["usage"] = openai_usage(usage)
        return body, usage

    def usage_of(self, chunk: dict[str, Any]) -> Usage | None:
        """Usage a stream chunk carries, wherever this provider puts it."""
        return usage_from_openai(chunk.get("usage"))

    def adapt_chunk(
        self, model: CatalogModel, chunk: dict[str, Any], progress: StreamProgress, state: StreamState
    ) -> list[dict[str, Any]]:
        """OpenAI chunks for one provider chunk; an ``{"error": ...}`` item ends the stream."""
        usage = self.usage_of(chunk)
        if usage is not None:
            progress.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return []
        head = {key: chunk[key] for key in _COMPLETION_KEYS if key in chunk}
        head["object"] = "chat.completion.chunk"
        head["model"] = model.name
        body_choices: list[dict[str, Any]] = []
        finishes: list[dict[str, Any]] = []
        for position, choice in enumerate(choices):
            index = choice.get("index", position)
            raw_delta = choice.get("delta") or {}
            delta = {key: raw_delta[key] for key in _DELTA_KEYS if raw_delta.get(key) is not None}
            if "content" in raw_delta and isinstance(raw_delta["content"], list):
                delta["content"] = text_of(raw_delta["content"])
                if not delta["content"]:
                    del delta["content"]
            calls = self.tool_calls(raw_delta.get("tool_calls"), state.ids, streamed=True)
            if calls:
                delta["tool_calls"] = calls
            else:
                delta.pop("tool_calls", None)
            # OpenAI names the role once, in a choice's first delta, and sends empty
            # content only there; Together repeats both on every chunk.
            if index in state.started:
                delta.pop("role", None)
                if delta.get("content") == "":
                    del delta["content"]
            elif delta or choice.get("finish_reason") is None:
                state.started.add(index)
                delta = {"role": "assistant", **delta}
            raw_finish = choice.get("finish_reason")
            finish = self.finish(raw_finish)
            if finish == "error":
                return [{"error": {**self.failure(model.provider, str(raw_finish)), "param": None}}]
            if finish is None:
                if delta:
                    body_choices.append({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})
                continue
            # OpenAI ends a choice with an empty delta; providers that put the last text
            # beside the finish reason get it split into two chunks.
            if delta:
                body_choices.append({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})
                delta = {}
            finishes.append({"index": index, "delta": delta, "logprobs": None, "finish_reason": finish})
        out = []
        if body_choices:
            out.append({**head, "choices": body_choices})
        if finishes:
            out.append({**head, "choices": finishes})
        return out

    async def chat(self, model: CatalogModel, request: dict[str, Any]) -> ChatResult:
        self.check(model, request)
        response = await provider_post(
            self.url(model),
            content=self.body(model, request, stream=False),
            headers=self.headers(model),
            provider=model.provider,
            on_error=self.error,
        )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ProviderError(f"{model.provider} sent a malformed answer.", status=502, retryable=True) from None
        if not isinstance(data, dict):
            raise ProviderError(f"{model.provider} sent a malformed answer.", status=502, retryable=True)
        body, usage = self.answer(model, data, request)
        return ChatResult(body=body, usage=usage)

    def stream(self, model: CatalogModel, request: dict[str, Any]) -> ChatStream:
        return CompatChatStream(self, model, request)

    # --- embeddings (for the dialects that embed; Groq keeps OpenAI's pass-through) ---
    def embedding_payload(self, model: CatalogModel, request: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        """The provider's ``/embeddings`` body; the input keeps the client's shape (a string or a list)."""
        return {"model": model.name, "input": request["input"] if isinstance(request["input"], str) else texts}

    def embedding_answer(
        self, model: CatalogModel, data: dict[str, Any], texts: list[str], request: dict[str, Any]
    ) -> EmbeddingResult:
        """The provider's OpenAI-like list as OpenAI's own: provider-only fields dropped, usage read or estimated."""
        items = data.get("data")
        if not isinstance(items, list) or len(items) != len(texts) or not all(isinstance(i, dict) for i in items):
            raise malformed(model.provider)
        positions = [item["index"] if isinstance(item.get("index"), int) else i for i, item in enumerate(items)]
        if sorted(positions) != list(range(len(texts))):
            raise malformed(model.provider)
        by_position = dict(zip(positions, items, strict=True))
        vectors = [float_values(by_position[i].get("embedding"), model.provider) for i in range(len(texts))]
        usage = _embedding_usage(data.get("usage")) or estimated_usage(texts)
        return openai_embeddings(model, vectors, usage, request.get("encoding_format"))

    async def embed_texts(self, model: CatalogModel, request: dict[str, Any]) -> EmbeddingResult:
        texts = text_inputs(request, model.provider)
        content = orjson.dumps(self.embedding_payload(model, request, texts))
        response = await provider_post(
            f"{model.base_url}/embeddings",
            content=content,
            headers=self.headers(model),
            provider=model.provider,
            on_error=self.error,
        )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise malformed(model.provider) from None
        if not isinstance(data, dict):
            raise malformed(model.provider)
        return self.embedding_answer(model, data, texts, request)


def _embedding_usage(raw: Any) -> Usage | None:
    # Embeddings usage has no completion side: prompt_tokens, else the total, is what was read.
    if not isinstance(raw, dict):
        return None
    for key in ("prompt_tokens", "total_tokens"):
        count = raw.get(key)
        if isinstance(count, int) and not isinstance(count, bool):
            return Usage(input_tokens=count)
    return None


class CompatChatStream(OpenAIChatStream):
    def __init__(self, adapter: CompatAdapter, model: CatalogModel, request: dict[str, Any]) -> None:
        super().__init__(adapter, model, request)
        self.dialect = adapter

    async def open(self) -> None:
        self.dialect.check(self.model, self.request)
        response = await provider_post(
            self.dialect.url(self.model),
            content=self.dialect.body(self.model, self.request, stream=True),
            headers=self.dialect.headers(self.model),
            stream=True,
            provider=self.model.provider,
            on_error=self.dialect.error,
        )
        self.response = response

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        assert self.response is not None, "open() first"
        progress = self.progress
        state = StreamState(ids=self.dialect.response_ids(self.request))
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
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk and "choices" not in chunk:
                    yield self._fail(self._stream_error(chunk["error"]))
                    return
                for out in self.dialect.adapt_chunk(self.model, chunk, progress, state):
                    if "error" in out:
                        yield self._fail(out["error"])
                        return
                    for choice in out["choices"]:
                        content = choice["delta"].get("content")
                        if content:
                            progress.completion_chars += len(content)
                    yield out
        except httpx.HTTPError as exc:
            error = error_from_exception(exc, self.model.provider)
            yield self._fail({"message": error.message, "type": error.type, "code": error.code})

    def _stream_error(self, error: Any) -> dict[str, Any]:
        if not isinstance(error, dict):
            return {"message": str(error)[:500], "type": "upstream_error", "code": "upstream_error"}
        return {
            "message": str(error.get("message") or "error")[:500],
            "type": str(error.get("type") or "upstream_error"),
            "code": str(error.get("code") or "upstream_error"),
        }

    def _fail(self, error: dict[str, Any]) -> dict[str, Any]:
        self.progress.error = {key: error[key] for key in ("message", "type", "code")}
        return {"error": {**self.progress.error, "param": None}}


# --- Mistral -----------------------------------------------------------------------


def mistral_tool_call_id(client_id: str) -> str:
    """The id Mistral is sent for a client's tool-call id (stable, so a conversation stays paired)."""
    if _MISTRAL_TOOL_ID.fullmatch(client_id):
        return client_id
    number = int.from_bytes(hashlib.blake2b(client_id.encode(), digest_size=8).digest(), "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


def _request_tool_ids(request: dict[str, Any]) -> list[str]:
    ids = []
    for message in request.get("messages") or ():
        if message.get("role") == "tool" and isinstance(message.get("tool_call_id"), str):
            ids.append(message["tool_call_id"])
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                ids.append(call["id"])
    return ids


class MistralAdapter(CompatAdapter):
    passed = (
        "temperature",
        "top_p",
        "stop",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "tool_choice",
        "response_format",
        "parallel_tool_calls",
    )
    finish_reasons = {"model_length": "length"}

    def check(self, model: CatalogModel, request: dict[str, Any]) -> None:
        super().check(model, request)
        if request.get("functions") is not None or request.get("function_call") is not None:
            raise unsupported(model.provider, "the deprecated functions API (use tools)", "functions")
        for message in request["messages"]:
            if message.get("role") == "function":
                raise unsupported(model.provider, "'function' messages (use tool messages)", "messages")
            content = message.get("content")
            for part in content if isinstance(content, list) else ():
                if part.get("type") == "file":
                    raise unsupported(model.provider, "file content parts", "messages")

    def payload(self, model: CatalogModel, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        body = super().payload(model, request, stream=stream)
        limits = [request[key] for key in ("max_completion_tokens", "max_tokens") if request.get(key) is not None]
        if limits:
            body["max_tokens"] = min(limits)
        if request.get("seed") is not None:
            body["random_seed"] = request["seed"]
        tools = request.get("tools")
        if tools:
            body["tools"] = [self._tool(tool) for tool in tools]
        prediction = request.get("prediction")
        if isinstance(prediction, dict) and isinstance(prediction.get("content"), str):
            body["prediction"] = {"type": "content", "content": prediction["content"]}
        return body

    @staticmethod
    def _tool(tool: dict[str, Any]) -> dict[str, Any]:
        function = tool.get("function") or {}
        fields = ("name", "description", "parameters", "strict")
        return {"type": "function", "function": {key: function[key] for key in fields if key in function}}

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        message = super().message(message)
        role = message["role"]
        out: dict[str, Any] = {"role": role}
        content = message.get("content")
        if isinstance(content, list):
            if role == "user":
                out["content"] = [self._part(part) for part in content if part.get("type") != "refusal"]
            else:
                out["content"] = text_of([part for part in content if part.get("type") == "text"])
        elif content is not None:
            out["content"] = content
        if role == "assistant":
            calls = message.get("tool_calls")
            if calls:
                out["tool_calls"] = [
                    {
                        "id": mistral_tool_call_id(str(call.get("id"))),
                        "type": "function",
                        "function": {
                            "name": (call.get("function") or {}).get("name"),
                            "arguments": _arguments_string((call.get("function") or {}).get("arguments", "{}")),
                        },
                    }
                    for call in calls
                ]
        elif role == "tool":
            out["tool_call_id"] = mistral_tool_call_id(str(message.get("tool_call_id")))
            if message.get("name"):
                out["name"] = message["name"]
        return out

    @staticmethod
    def _part(part: dict[str, Any]) -> dict[str, Any]:
        if part.get("type") == "image_url":
            image = part.get("image_url")
            if isinstance(image, dict):
                return {"type": "image_url", "image_url": {k: image[k] for k in ("url", "detail") if k in image}}
            return {"type": "image_url", "image_url": image}
        if part.get("type") == "input_audio":
            audio = part.get("input_audio") or {}
            return {"type": "input_audio", "input_audio": audio.get("data") if isinstance(audio, dict) else audio}
        return {"type": "text", "text": part.get("text", "")}

    async def embed(self, model: CatalogModel, request: dict[str, Any]) -> EmbeddingResult:
        return await self.embed_texts(model, request)

    def embedding_payload(self, model: CatalogModel, request: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        body = super().embedding_payload(model, request, texts)
        if request.get("dimensions") is not None:
            body["output_dimension"] = request["dimensions"]
        # encoding_format is not sent: Mistral does not document the bytes behind its base64,
        # so floats are asked for (its default) and encoded here exactly as OpenAI does.
        return body

    def response_ids(self, request: dict[str, Any]) -> dict[str, str]:
        return {
            mapped: client_id
            for client_id in _request_tool_ids(request)
            if (mapped := mistral_tool_call_id(client_id)) != client_id
        }


# --- Groq ----------------------------------------------------------------------------

_GROQ_SERVICE_TIERS = frozenset({"auto", "on_demand", "flex", "performance"})
_GROQ_MESSAGE_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "function_call"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}


class GroqAdapter(CompatAdapter):
    passed = (
        "temperature",
        "top_p",
        "stop",
        "max_completion_tokens",
        "max_tokens",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "user",
        "functions",
        "function_call",
    )

    def check(self, model: CatalogModel, request: dict[str, Any]) -> None:
        super().check(model, request)
        n = request.get("n")
        if n is not None and n != 1:
            raise unsupported(model.provider, f"more than one choice (n={n})", "n")
        if request.get("logit_bias"):
            raise unsupported(model.provider, "logit_bias", "logit_bias")

    def payload(self, model: CatalogModel, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        body = super().payload(model, request, stream=stream)
        if request.get("service_tier") in _GROQ_SERVICE_TIERS:
            body["service_tier"] = request["service_tier"]
        if stream:
            # Typed only on Groq's chunks, not its params; x_groq.usage is read too.
            body["stream_options"] = {"include_usage": True}
        return body

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        message = super().message(message)
        allowed = _GROQ_MESSAGE_KEYS.get(message["role"])
        # Groq refuses `name` (and any unknown key) on these messages.
        return message if allowed is None else {key: value for key, value in message.items() if key in allowed}

    def usage_of(self, chunk: dict[str, Any]) -> Usage | None:
        usage = super().usage_of(chunk)
        x_groq = chunk.get("x_groq")
        if usage is None and isinstance(x_groq, dict):
            usage = usage_from_openai(x_groq.get("usage"))
        return usage

    def adapt_chunk(
        self, model: CatalogModel, chunk: dict[str, Any], progress: StreamProgress, state: StreamState
    ) -> list[dict[str, Any]]:
        x_groq = chunk.get("x_groq")
        if isinstance(x_groq, dict) and x_groq.get("error"):
            message = f"groq failed mid-stream: {str(x_groq['error'])[:300]}"
            return [{"error": {"message": message, "type": "upstream_error", "code": "upstream_error", "param": None}}]
        return super().adapt_chunk(model, chunk, progress, state)

    def refine(self, error: ProviderError, status: int, message: str, type_: str | None) -> ProviderError:
        if status == 498:
            # Flex-tier capacity: a moment's shortage, like a 429 for the whole tier.
            return ProviderError(
                "groq has no capacity for the request right now (HTTP 498).",
                status=503,
                retryable=True,
                code="capacity_exceeded",
                upstream_status=status,
            )
        if status == 499:
            return ProviderError(
                "groq cancelled the request (HTTP 499).", status=502, retryable=True, upstream_status=499
            )
        return error


# --- Together AI -----------------------------------------------------------------------


class TogetherAdapter(CompatAdapter):
    passed = (
        "temperature",
        "top_p",
        "stop",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "tools",
        "tool_choice",
        "reasoning_effort",
    )
    finish_reasons = {"eos": "stop"}

    def check(self, model: CatalogModel, request: dict[str, Any]) -> None:
        super().check(model, request)
        if request.get("functions") is not None or request.get("function_call") is not None:
            raise unsupported(model.provider, "the deprecated functions API (use tools)", "functions")

    def payload(self, model: CatalogModel, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        body = super().payload(model, request, stream=stream)
        limits = [request[key] for key in ("max_completion_tokens", "max_tokens") if request.get(key) is not None]
        if limits:
            body["max_tokens"] = min(limits)
        response_format = request.get("response_format")
        if isinstance(response_format, dict):
            kind = response_format.get("type")
            if kind == "json_object":
                body["response_format"] = {"type": "json_object"}
            elif kind == "json_schema":
                # Together reads the schema at the top level, not inside OpenAI's wrapper.
                schema = (response_format.get("json_schema") or {}).get("schema")
                body["response_format"] = {"type": "json_schema", "schema": schema}
        return body

    async def embed(self, model: CatalogModel, request: dict[str, Any]) -> EmbeddingResult:
        return await self.embed_texts(model, request)

    def embedding_payload(self, model: CatalogModel, request: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        if request.get("dimensions") is not None:
            # Each Together model has one size; a vector of another length would break the client's index.
            raise unsupported_embedding_option(model.provider, "dimensions", "choosing the vector size")
        # encoding_format is not sent: Together answers floats, which are encoded here if base64 is asked.
        return super().embedding_payload(model, request, texts)

    def refine(self, error: ProviderError, status: int, message: str, type_: str | None) -> ProviderError:
        if status == 403 and type_ == "invalid_request_error":
            # Together answers prompt + max_tokens over the context window with a 403:
            # the client's request (so its text helps), not the gateway's credentials.
            return ProviderError(
                f"together rejected the request: {message or 'the prompt plus max_tokens exceeds the context'}",
                status=400,
                retryable=False,
                code="context_length_exceeded",
                type="invalid_request_error",
                upstream_status=status,
            )
        return error


ADAPTERS: dict[str, CompatAdapter] = {
    "mistral": MistralAdapter(),
    "groq": GroqAdapter(),
    "together": TogetherAdapter(),
}
