"""Mistral, Groq and Together AI on the fake upstream: OpenAI's format, each with its own differences.

Routes (``POST`` only): ``/mistral/v1/chat/completions``,
``/groq/openai/v1/chat/completions`` and ``/together/v1/chat/completions``.
Requests are planned by the OpenAI fake (``FakeUpstream._plan``), so reply
text, token counts, tool calls and every ``[fake ...]`` directive and
``x-fake-*`` header behave exactly as on ``/v1/chat/completions``; what
differs is what each provider accepts and how it answers (see
``PROVIDER_WIRE_FORMATS.md`` §4-6):

Mistral
    Refuses fields it does not know with 422 ``{"detail": [...]}``
    (``extra_forbidden``): ``stream_options``, ``max_completion_tokens``,
    ``seed`` (it takes ``max_tokens`` and ``random_seed``), ``user``,
    ``logprobs`` and the like; ``name`` on a non-tool message; roles other than
    system/user/assistant/tool (``developer`` too). Tool-call ids in the
    conversation must be 9 characters of ``[a-zA-Z0-9]`` (400
    ``invalid_function_call``). Answers carry ``usage`` with the three totals;
    a non-streamed tool call's ``arguments`` is a JSON *object* (the documented
    variant). Streams put ``finish_reason`` and ``usage`` on the last content
    chunk, always; a tool call arrives whole in one delta. A reply that would
    not fit the fake model's context (``MISTRAL_CONTEXT_TOKENS``, prompt plus
    completion, e.g. ``[fake words=5000]``) is cut there with
    ``finish_reason: "model_length"``. ``fail_after_chunks`` ends the stream
    with a ``finish_reason: "error"`` chunk.
Groq
    ``n`` must be 1; ``logprobs``, ``top_logprobs``, ``logit_bias``, ``name``
    on messages and OpenAI-only fields (``store``, ``audio``, ...) are refused
    with 400 ``property '...' is unsupported``. ``usage`` adds timing floats.
    Streams carry ``x_groq.id`` on the first and final chunk; the final chunk
    (with ``finish_reason``) carries ``x_groq.usage`` always, and a top-level
    usage chunk follows only with ``stream_options.include_usage``.
    ``fail_after_chunks`` ends with a chunk whose ``x_groq.error`` is a
    string. Rate-limit headers go on every answer, ``retry-after`` on 429 only;
    498 is flex capacity.
Together AI
    Natural ends are ``finish_reason: "eos"``; choices carry ``seed`` (and
    ``text`` in streams, where deltas add ``token_id``). Every stream chunk but
    the final has ``"usage": null``; the final one carries the last text,
    ``finish_reason`` and ``usage``, with or without ``stream_options``. A
    prompt plus ``max_tokens`` over ``TOGETHER_CONTEXT_TOKENS`` is a 403, as
    Together answers it. ``fail_after_chunks`` ends with ``data: {"error":...}``.

Embeddings
    ``/mistral/v1/embeddings`` takes ``model``, ``input`` (a string or strings),
    ``output_dimension``, ``output_dtype`` (only ``float`` is answered) and
    ``encoding_format`` (``base64`` is OpenAI's float32 encoding), refuses
    anything else with a 422 ``detail``, and reports ``usage`` with
    ``completion_tokens: 0``. ``/together/v1/embeddings`` takes only ``model``
    and ``input`` (400 otherwise) and reports no usage. Vectors come from
    ``providers.fake_wire.embeddings.vector`` (8 dimensions by default),
    tokens are ceil(characters / 4) per input, and the directives in the
    first text apply.

Every route answers auth failures, injected ``status=N`` errors and
validation errors with that provider's own error body, updates ``app.stats``
like the OpenAI route, and honours the response faults of
``providers.fake_upstream`` (they are applied around ``send``).
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
from typing import Any

import orjson

from providers.fake_upstream import (
    DIRECTIVE_OPEN,
    TOOL_ARGUMENTS,
    BadRequestError,
    FakeUpstream,
    Headers,
    Plan,
    Receive,
    Scope,
    Send,
    _apply_directives,
    _random_id,
    _read_body,
    _send_json,
    register_dialect,
    send_stream,
)
from providers.fake_wire.embeddings import DEFAULT_DIMENSIONS, vector

MISTRAL_PREFIX = "/mistral/v1"
GROQ_PREFIX = "/groq/openai/v1"
TOGETHER_PREFIX = "/together/v1"
CHAT_PATH = "/chat/completions"
EMBEDDINGS_PATH = "/embeddings"
# Small enough that a words directive can reach it, so model_length is testable.
MISTRAL_CONTEXT_TOKENS = 4096
TOGETHER_CONTEXT_TOKENS = 32_768

_JSON: Headers = [(b"content-type", b"application/json")]
_SSE: Headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_MISTRAL_TOOL_ID = re.compile(r"[a-zA-Z0-9]{9}")
_TOOL_ARGUMENTS_OBJECT: dict[str, Any] = orjson.loads(TOOL_ARGUMENTS)


class WireError(Exception):
    """A request the provider refuses, with its status, body and extra headers."""

    def __init__(self, status: int, body: dict[str, Any], headers: Headers | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _words_text(words: tuple[str, ...] | list[str]) -> str:
    return " ".join(words)


def _word_deltas(words: tuple[str, ...] | list[str]) -> list[str]:
    """Stream pieces that join to ``_words_text``, one word each (as the OpenAI fake sends)."""
    last = len(words) - 1
    return [word if index == last else word + " " for index, word in enumerate(words)]


def embedding_tokens(texts: list[str]) -> int:
    """The OpenAI embeddings fake's rule: ceil(characters / 4) per input, at least 1."""
    return sum(max(1, -(-len(text) // 4)) for text in texts)


def _base_usage(plan: Plan) -> dict[str, int]:
    completion = plan.completion_tokens()
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
    }


class Dialect:
    """One provider's chat-completions route (and embeddings route, if it embeds); subclasses say how it differs."""

    slug = ""
    prefix = ""
    ratelimit_headers: Headers = []
    embeds = False

    # --- what subclasses describe -----------------------------------------
    def unauthorized(self) -> dict[str, Any]:
        raise NotImplementedError

    def validate(self, data: dict[str, Any]) -> None:
        """Raise WireError for what this provider refuses before planning."""

    def invalid(self, exc: BadRequestError) -> WireError:
        """The provider's answer to a request the shared planner rejected."""
        raise NotImplementedError

    def adjust(self, plan: Plan, data: dict[str, Any]) -> None:
        """Provider rules applied to the plan (ids, limits); may raise WireError."""

    def injected(self, status: int, model: str, retry_after: str | None) -> WireError:
        raise NotImplementedError

    def completion(self, plan: Plan) -> dict[str, Any]:
        raise NotImplementedError

    def stream_events(self, plan: Plan) -> list[bytes]:
        """Every event of a complete stream, its terminator included."""
        raise NotImplementedError

    def failed_events(self, plan: Plan, count: int) -> list[bytes]:
        """The stream cut after ``count`` events, ending with this provider's error event."""
        raise NotImplementedError

    def embedding_texts(self, data: Any) -> list[str]:
        """The texts of an embeddings request; raise WireError for what this provider refuses."""
        raise NotImplementedError

    def embedding_answer(self, data: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    # --- the shared request flow -------------------------------------------
    async def __call__(self, app: FakeUpstream, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == self.prefix + CHAT_PATH:
            route = self.chat
        elif self.embeds and path == self.prefix + EMBEDDINGS_PATH:
            route = self.embeddings
        else:
            await _send_json(send, 404, self.not_found(method, path), _JSON)
            return
        if method != "POST":
            await _send_json(send, 405, self.not_found(method, path), [*_JSON, (b"allow", b"POST")])
        else:
            await route(app, scope, receive, send)

    def not_found(self, method: str, path: str) -> bytes:
        return orjson.dumps({"error": {"message": f"Unknown request URL: {method} {path}.", "type": "not_found"}})

    async def chat(self, app: FakeUpstream, scope: Scope, receive: Receive, send: Send) -> None:
        stats = app.stats
        stats.requests += 1
        raw_body = await _read_body(receive)
        headers: Headers = scope["headers"]
        stats.last_request = (scope["method"], scope["path"], headers, raw_body)

        authorization = b""
        fake_headers: Headers | None = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value
            elif name.startswith(b"x-fake-"):
                fake_headers = [*(fake_headers or []), (name, value)]
        scheme, _, key = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not key.strip():
            await self.refuse(app, send, WireError(401, self.unauthorized()))
            return

        try:
            try:
                data = orjson.loads(raw_body)
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                self.validate(data)
            plan = app._plan(raw_body, fake_headers)
            assert isinstance(data, dict)  # _plan accepts nothing else
            self.adjust(plan, data)
        except BadRequestError as exc:
            await self.refuse(app, send, self.invalid(exc))
            return
        except WireError as exc:
            await self.refuse(app, send, exc)
            return

        controls = plan.controls
        if controls.latency_ms > 0:
            await asyncio.sleep(controls.latency_ms / 1000)
        if controls.status is not None:
            await self.refuse(app, send, self.injected(controls.status, plan.model, controls.retry_after))
            return
        if plan.stream:
            await self.stream(app, plan, receive, send)
            return
        stats.completed += 1
        await _send_json(send, 200, orjson.dumps(self.completion(plan)), [*_JSON, *self.ratelimit_headers])

    async def embeddings(self, app: FakeUpstream, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST {prefix}/embeddings``: vectors from ``providers.fake_wire.embeddings.vector``.

        The shared directives (``status``, ``latency_ms``, ``retry_after``, and the
        response faults) are read from the first text, as on the OpenAI route.
        """
        stats = app.stats
        stats.requests += 1
        raw_body = await _read_body(receive)
        headers: Headers = scope["headers"]
        stats.last_request = (scope["method"], scope["path"], headers, raw_body)
        authorization = next((value for name, value in headers if name == b"authorization"), b"")
        scheme, _, key = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not key.strip():
            await self.refuse(app, send, WireError(401, self.unauthorized()))
            return
        try:
            try:
                data = orjson.loads(raw_body)
            except orjson.JSONDecodeError:
                raise BadRequestError("Invalid JSON body.") from None
            texts = self.embedding_texts(data)
            controls = app.defaults
            if DIRECTIVE_OPEN in texts[0]:
                texts[0], controls = _apply_directives(texts[0], controls, data["model"])
        except BadRequestError as exc:
            await self.refuse(app, send, self.invalid(exc))
            return
        except WireError as exc:
            await self.refuse(app, send, exc)
            return
        if controls.latency_ms > 0:
            await asyncio.sleep(controls.latency_ms / 1000)
        if controls.status is not None:
            await self.refuse(app, send, self.injected(controls.status, data["model"], controls.retry_after))
            return
        stats.completed += 1
        body = orjson.dumps(self.embedding_answer(data, texts))
        await _send_json(send, 200, body, [*_JSON, *self.ratelimit_headers])

    async def refuse(self, app: FakeUpstream, send: Send, error: WireError) -> None:
        app.stats.errors += 1
        headers = [*_JSON, *self.ratelimit_headers, *error.headers]
        await _send_json(send, error.status, orjson.dumps(error.body), headers)

    async def stream(self, app: FakeUpstream, plan: Plan, receive: Receive, send: Send) -> None:
        stats = app.stats
        controls = plan.controls
        failing = controls.fail_after_chunks is not None
        if controls.fail_after_chunks is not None:
            events = self.failed_events(plan, controls.fail_after_chunks)
        else:
            events = self.stream_events(plan)
        await send_stream(
            send, receive, stats, [*_SSE, *self.ratelimit_headers], events, controls.chunk_delay_ms, failing=failing
        )


# --- Mistral ---------------------------------------------------------------------

_MISTRAL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "stop",
        "random_seed",
        "response_format",
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "prediction",
        "parallel_tool_calls",
        "safe_prompt",
        "prompt_mode",
    }
)
_MISTRAL_MESSAGE_FIELDS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "prefix"}),
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
}
_MISTRAL_PART_TYPES = frozenset({"text", "image_url", "document_url", "input_audio", "reference", "thinking", "file"})
_MISTRAL_RATELIMIT: Headers = [
    (b"ratelimitbysize-limit", b"2000000"),
    (b"ratelimitbysize-remaining", b"1999000"),
    (b"ratelimitbysize-reset", b"42"),
    (b"ratelimitbysize-query-cost", b"1000"),
    (b"x-ratelimitbysize-limit-minute", b"2000000"),
    (b"x-ratelimitbysize-remaining-minute", b"1999000"),
    (b"x-ratelimitbysize-limit-month", b"10000000000"),
    (b"x-ratelimitbysize-remaining-month", b"9999999000"),
]


_MISTRAL_EMBEDDING_FIELDS = frozenset({"model", "input", "output_dimension", "output_dtype", "encoding_format"})
_MISTRAL_DTYPES = ("float", "int8", "uint8", "binary", "ubinary")
_ENCODINGS = ("float", "base64")


def mistral_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": type_, "param": None, "code": code}


def _extra_forbidden(loc: list[Any], value: Any) -> dict[str, Any]:
    return {"type": "extra_forbidden", "loc": loc, "msg": "Extra inputs are not permitted", "input": value}


def _mistral_tool_id() -> str:
    bits = _random_id("", 64)
    number = int(bits, 16)
    chars = []
    for _ in range(9):
        number, digit = divmod(number, len(_ALNUM))
        chars.append(_ALNUM[digit])
    return "".join(chars)


def _detail(type_: str, loc: list[Any], msg: str, value: Any) -> dict[str, Any]:
    return {"type": type_, "loc": loc, "msg": msg, "input": value}


def _enum_text(values: tuple[str, ...]) -> str:
    quoted = [f"'{value}'" for value in values]
    return f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}"


class MistralWire(Dialect):
    slug = "mistral"
    prefix = MISTRAL_PREFIX
    ratelimit_headers = _MISTRAL_RATELIMIT
    embeds = True

    def embedding_texts(self, data: Any) -> list[str]:
        if not isinstance(data, dict):
            msg = "Input should be a valid dictionary or object to extract fields from"
            raise WireError(422, {"detail": [_detail("model_attributes_type", ["body"], msg, data)]})
        fields = _MISTRAL_EMBEDDING_FIELDS
        details = [_extra_forbidden(["body", key], value) for key, value in data.items() if key not in fields]
        if not isinstance(data.get("model"), str):
            details.append(_detail("missing", ["body", "model"], "Field required", data))
        value = data.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            msg = "Input should be a valid string or a non-empty list of strings"
            details.append(_detail("string_type", ["body", "input"], msg, value))
        dimension = data.get("output_dimension")
        if dimension is not None and (type(dimension) is not int or dimension < 1):
            msg = "Input should be greater than 0"
            details.append(_detail("greater_than", ["body", "output_dimension"], msg, dimension))
        for key, allowed in (("output_dtype", _MISTRAL_DTYPES), ("encoding_format", _ENCODINGS)):
            if data.get(key) is not None and data[key] not in allowed:
                details.append(_detail("enum", ["body", key], _enum_text(allowed), data[key]))
        if details:
            raise WireError(422, {"detail": details})
        if data.get("output_dtype", "float") != "float":
            message = "The fake upstream only returns float embeddings."
            raise WireError(400, mistral_error(message, "invalid_request_error"))
        assert isinstance(texts, list)  # checked with the details above
        return list(texts)

    def embedding_answer(self, data: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        dimensions = data.get("output_dimension") or DEFAULT_DIMENSIONS
        items = []
        for index, text in enumerate(texts):
            values = vector(text, dimensions)
            embedding: Any = values
            if data.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            items.append({"object": "embedding", "embedding": embedding, "index": index})
        tokens = embedding_tokens(texts)
        return {
            "id": _random_id("", 128),
            "object": "list",
            "data": items,
            "model": data["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }

    def unauthorized(self) -> dict[str, Any]:
        return {"message": "Unauthorized", "request_id": _random_id("", 128)}

    def validate(self, data: dict[str, Any]) -> None:
        details = [_extra_forbidden(["body", key], value) for key, value in data.items() if key not in _MISTRAL_FIELDS]
        messages = data.get("messages")
        tool_ids: list[str] = []
        for index, message in enumerate(messages if isinstance(messages, list) else ()):
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            allowed = _MISTRAL_MESSAGE_FIELDS.get(role) if isinstance(role, str) else None
            if allowed is None:
                details.append(
                    {
                        "type": "union_tag_invalid",
                        "loc": ["body", "messages", index],
                        "msg": f"Input tag '{role}' found using 'role' does not match any of the expected tags: "
                        "'system', 'user', 'assistant', 'tool'",
                        "input": message,
                    }
                )
                continue
            details += [
                _extra_forbidden(["body", "messages", index, role, key], value)
                for key, value in message.items()
                if key not in allowed
            ]
            content = message.get("content")
            for part_index, part in enumerate(content if isinstance(content, list) else ()):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in _MISTRAL_PART_TYPES:
                    details.append(
                        {
                            "type": "union_tag_invalid",
                            "loc": ["body", "messages", index, role, "content", part_index],
                            "msg": f"Input tag '{kind}' found using 'type' does not match any of the expected tags",
                            "input": part,
                        }
                    )
            calls = message.get("tool_calls") if role == "assistant" else None
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    tool_ids.append(str(call.get("id")))
            if role == "tool":
                tool_ids.append(str(message.get("tool_call_id")))
        if details:
            raise WireError(422, {"detail": details})
        for tool_id in tool_ids:
            if not _MISTRAL_TOOL_ID.fullmatch(tool_id):
                raise WireError(
                    400,
                    mistral_error(
                        f"Tool call id was {tool_id} but must be a-z, A-Z, 0-9, with a length of 9.",
                        "invalid_function_call",
                        "3280",
                    ),
                )

    def invalid(self, exc: BadRequestError) -> WireError:
        loc: list[Any] = ["body"] if exc.param is None else ["body", *exc.param.split(".")]
        return WireError(422, {"detail": [{"type": "value_error", "loc": loc, "msg": exc.message, "input": None}]})

    def adjust(self, plan: Plan, data: dict[str, Any]) -> None:
        plan.id = _random_id("", 128)
        room = max(0, MISTRAL_CONTEXT_TOKENS - plan.prompt_tokens)
        if plan.tool is None and len(plan.words) > room:
            plan.words = plan.words[:room]
            plan.finish_reason = "model_length"

    def injected(self, status: int, model: str, retry_after: str | None) -> WireError:
        headers: Headers = [] if retry_after is None else [(b"retry-after", retry_after.encode())]
        body: dict[str, Any]
        if status == 401:
            body = self.unauthorized()
        elif status == 422:
            body = {"detail": [{"type": "value_error", "loc": ["body"], "msg": "Injected fake validation error."}]}
        elif status == 429:
            body = mistral_error("Rate limit exceeded", "rate_limited", "1300")
        elif status == 404:
            body = mistral_error(f"Invalid model: {model}", "invalid_model", "1500")
        elif status == 400:
            body = mistral_error("Injected fake bad request.", "invalid_request_error")
        elif status == 503:
            body = mistral_error("Service unavailable", "service_unavailable")
        elif status >= 500:
            body = mistral_error("Internal server error", "internal_server_error")
        else:
            body = mistral_error(f"Injected fake client error (HTTP {status}).", "invalid_request_error")
        return WireError(status, body, headers)

    def completion(self, plan: Plan) -> dict[str, Any]:
        message: dict[str, Any]
        if plan.tool is not None:
            message = {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": _mistral_tool_id(),
                        "type": "function",
                        "function": {"name": plan.tool, "arguments": _TOOL_ARGUMENTS_OBJECT},
                        "index": 0,
                    }
                ],
            }
        else:
            message = {"role": "assistant", "content": _words_text(plan.words), "tool_calls": None}
        return {
            "id": plan.id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason}],
            "usage": _base_usage(plan),
        }

    def _chunk(self, plan: Plan, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def _body_chunks(self, plan: Plan) -> list[dict[str, Any]]:
        chunks = [self._chunk(plan, {"role": "assistant", "content": ""}, None)]
        if plan.tool is not None:
            call = {"id": _mistral_tool_id(), "function": {"name": plan.tool, "arguments": TOOL_ARGUMENTS}, "index": 0}
            chunks.append(self._chunk(plan, {"tool_calls": [call]}, None))
        else:
            chunks += [self._chunk(plan, {"content": piece}, None) for piece in _word_deltas(plan.words)]
        return chunks

    def stream_events(self, plan: Plan) -> list[bytes]:
        chunks = self._body_chunks(plan)
        if len(chunks) == 1:  # nothing to say: the finish rides on an empty content chunk
            chunks.append(self._chunk(plan, {"content": ""}, None))
        last = chunks[-1]
        last["choices"][0]["finish_reason"] = plan.finish_reason
        last["usage"] = _base_usage(plan)
        return [*(_sse(chunk) for chunk in chunks), _DONE]

    def failed_events(self, plan: Plan, count: int) -> list[bytes]:
        events = [_sse(chunk) for chunk in self._body_chunks(plan)[:count]]
        events.append(_sse(self._chunk(plan, {"content": ""}, "error")))
        return events


# --- Groq ------------------------------------------------------------------------

# OpenAI request fields Groq's API reference does not list; it refuses them.
_GROQ_UNSUPPORTED = frozenset(
    {
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
        "store",
        "logit_bias",
        "logprobs",
        "top_logprobs",
    }
)
_GROQ_RATELIMIT: Headers = [
    (b"x-ratelimit-limit-requests", b"14400"),
    (b"x-ratelimit-limit-tokens", b"6000"),
    (b"x-ratelimit-remaining-requests", b"14399"),
    (b"x-ratelimit-remaining-tokens", b"5900"),
    (b"x-ratelimit-reset-requests", b"6s"),
    (b"x-ratelimit-reset-tokens", b"1s"),
]
# Fixed timings keep answers deterministic.
GROQ_TIMINGS = {"queue_time": 0.0125, "prompt_time": 0.0021, "completion_time": 0.0334, "total_time": 0.0355}
GROQ_SEED = 1407423371


def groq_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": type_}
    if code is not None:
        error["code"] = code
    return {"error": error}


def groq_usage(plan: Plan) -> dict[str, Any]:
    return {**GROQ_TIMINGS, **_base_usage(plan), "prompt_tokens_details": {"cached_tokens": 0}}


class GroqWire(Dialect):
    slug = "groq"
    prefix = GROQ_PREFIX
    ratelimit_headers = _GROQ_RATELIMIT

    def unauthorized(self) -> dict[str, Any]:
        return groq_error("Invalid API Key", "invalid_request_error", "invalid_api_key")

    def validate(self, data: dict[str, Any]) -> None:
        for key in data:
            if key in _GROQ_UNSUPPORTED:
                raise WireError(400, groq_error(f"property '{key}' is unsupported", "invalid_request_error"))
        n = data.get("n")
        if n is not None and n != 1:
            raise WireError(400, groq_error("'n' : number must be at most 1", "invalid_request_error"))
        messages = data.get("messages")
        for index, message in enumerate(messages if isinstance(messages, list) else ()):
            if isinstance(message, dict) and "name" in message and message.get("role") != "function":
                raise WireError(
                    400,
                    groq_error(
                        f"'messages.{index}' : for 'role:{message.get('role')}' the following must be "
                        f"satisfied[('messages.{index}' : property 'name' is unsupported)]",
                        "invalid_request_error",
                    ),
                )

    def invalid(self, exc: BadRequestError) -> WireError:
        return WireError(400, groq_error(exc.message, "invalid_request_error"))

    def adjust(self, plan: Plan, data: dict[str, Any]) -> None:
        plan.id = _random_id("chatcmpl-", 128)

    def injected(self, status: int, model: str, retry_after: str | None) -> WireError:
        headers: Headers = []
        if status == 429:
            wait = retry_after or "1"
            headers.append((b"retry-after", wait.encode()))
            body = groq_error(
                f"Rate limit reached for model `{model}` in organization `org_fake` service tier `on_demand` "
                f"on tokens per minute (TPM): Limit 6000, Used 6000, Requested 120. Please try again in {wait}s.",
                "tokens",
                "rate_limit_exceeded",
            )
        elif status == 401:
            body = self.unauthorized()
        elif status == 404:
            body = groq_error(
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        elif status == 498:
            body = groq_error("Flex tier capacity exceeded. Please try again later.", "tokens", "capacity_exceeded")
        elif status == 503:
            body = groq_error("Service Unavailable", "internal_server_error", "service_unavailable")
        elif status >= 500:
            body = groq_error("Internal Server Error", "internal_server_error")
        else:
            body = groq_error(f"Injected fake client error (HTTP {status}).", "invalid_request_error")
        return WireError(status, body, headers)

    def completion(self, plan: Plan) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(plan.completion_body())
        body["usage"] = groq_usage(plan)
        body["usage_breakdown"] = None
        body["x_groq"] = {"id": _random_id("req_", 128)}
        body["service_tier"] = "on_demand"
        return body

    def _chunks(self, plan: Plan) -> list[dict[str, Any]]:
        chunks = [orjson.loads(event[len(b"data: ") :]) for event in plan.stream_events()]
        request_id = _random_id("req_", 128)
        chunks[0]["x_groq"] = {"id": request_id}
        for chunk in chunks:
            choices = chunk["choices"]
            if choices and choices[0]["finish_reason"] is not None:
                chunk["x_groq"] = {"id": request_id, "usage": groq_usage(plan), "seed": GROQ_SEED}
            elif not choices:  # the include_usage chunk
                chunk["usage"] = groq_usage(plan)
        return chunks

    def stream_events(self, plan: Plan) -> list[bytes]:
        return [*(_sse(chunk) for chunk in self._chunks(plan)), _DONE]

    def failed_events(self, plan: Plan, count: int) -> list[bytes]:
        chunks = self._chunks(plan)
        events = [_sse(chunk) for chunk in chunks[:count]]
        failure = {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "choices": [],
            "x_groq": {"id": chunks[0]["x_groq"]["id"], "error": "Internal Server Error: the model failed mid-stream"},
        }
        events.append(_sse(failure))
        return events


# --- Together AI ----------------------------------------------------------------------

_TOGETHER_RATELIMIT: Headers = [
    (b"x-ratelimit-limit", b"100"),
    (b"x-ratelimit-remaining", b"99"),
    (b"x-ratelimit-reset", b"1"),
    (b"x-tokenlimit-limit", b"200000"),
    (b"x-tokenlimit-remaining", b"199000"),
]
TOGETHER_SEED = 11874903256413147000
# Token ids of the fake's words: a base plus the word's position.
TOGETHER_TOKEN_BASE = 1000
_TOGETHER_FINISH = {"stop": "eos"}


def together_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class TogetherWire(Dialect):
    slug = "together"
    prefix = TOGETHER_PREFIX
    ratelimit_headers = _TOGETHER_RATELIMIT
    embeds = True

    def embedding_texts(self, data: Any) -> list[str]:
        # Stricter than Together: fields it does not document are refused, so an OpenAI one leaking shows.
        if not isinstance(data, dict):
            raise WireError(400, together_error("The request body must be a JSON object.", "invalid_request_error"))
        unknown = sorted(set(data) - {"model", "input"})
        if unknown:
            message = f"Unrecognized request argument supplied: {unknown[0]}"
            raise WireError(400, together_error(message, "invalid_request_error"))
        if not isinstance(data.get("model"), str) or not data["model"]:
            raise WireError(400, together_error("model is required", "invalid_request_error"))
        value = data.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            message = "input must be a string or a non-empty array of strings"
            raise WireError(400, together_error(message, "invalid_request_error"))
        return list(texts)

    def embedding_answer(self, data: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        # No usage: Together does not guarantee one, and the gateway must cope without.
        return {
            "object": "list",
            "model": data["model"],
            "data": [
                {"object": "embedding", "embedding": vector(text, DEFAULT_DIMENSIONS), "index": index}
                for index, text in enumerate(texts)
            ],
        }

    def unauthorized(self) -> dict[str, Any]:
        return together_error(
            "Invalid API key provided. You can find your API key at https://api.together.xyz/settings/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )

    def invalid(self, exc: BadRequestError) -> WireError:
        return WireError(400, together_error(exc.message, "invalid_request_error"))

    def adjust(self, plan: Plan, data: dict[str, Any]) -> None:
        plan.id = _random_id("", 64) + "-FAKE"
        max_tokens = data.get("max_tokens")
        if isinstance(max_tokens, int) and plan.prompt_tokens + max_tokens > TOGETHER_CONTEXT_TOKENS:
            raise WireError(
                403,
                together_error(
                    f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                    f"{TOGETHER_CONTEXT_TOKENS}. Given: {plan.prompt_tokens} `inputs` tokens and "
                    f"{max_tokens} `max_new_tokens`",
                    "invalid_request_error",
                ),
            )

    def injected(self, status: int, model: str, retry_after: str | None) -> WireError:
        headers: Headers = [] if retry_after is None else [(b"retry-after", retry_after.encode())]
        if status == 401:
            body = self.unauthorized()
        elif status == 402:
            body = together_error("Credit limit exceeded. Please add credits to your account.", "credit_limit")
        elif status == 404:
            body = together_error(
                f"Unable to access model {model}. Please visit https://api.together.ai/models to view the list "
                "of supported models.",
                "invalid_request_error",
                "model_not_available",
            )
        elif status == 429:
            body = together_error(
                f"You have reached the rate limit specific to this model {model}. The maximum rate limit for this "
                "model is 60.0 queries and 180000 tokens per minute.",
                "model_rate_limit",
            )
        elif status == 503:
            body = together_error("The server is overloaded or not ready yet.", "server_error")
        elif status >= 500:
            body = together_error("Internal server error", "server_error")
        else:
            body = together_error(f"Injected fake client error (HTTP {status}).", "invalid_request_error")
        return WireError(status, body, headers)

    def _tool_call(self, plan: Plan) -> dict[str, Any]:
        assert plan.tool is not None
        return {
            "index": 0,
            "id": _random_id("call_", 96),
            "type": "function",
            "function": {"name": plan.tool, "arguments": TOOL_ARGUMENTS},
        }

    def completion(self, plan: Plan) -> dict[str, Any]:
        tool_calls = [self._tool_call(plan)] if plan.tool is not None else []
        return {
            "id": plan.id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "prompt": [],
            "choices": [
                {
                    "finish_reason": _TOGETHER_FINISH.get(plan.finish_reason, plan.finish_reason),
                    "seed": TOGETHER_SEED,
                    "logprobs": None,
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "" if plan.tool is not None else _words_text(plan.words),
                        "tool_calls": tool_calls,
                    },
                }
            ],
            "usage": _base_usage(plan),
        }

    def _chunk(self, plan: Plan, index: int, text: str, tool_calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": None,
                    "seed": None,
                    "delta": {
                        "token_id": TOGETHER_TOKEN_BASE + index,
                        "role": "assistant",
                        "content": text,
                        "tool_calls": tool_calls,
                    },
                }
            ],
            "usage": None,
        }

    def _body_chunks(self, plan: Plan) -> list[dict[str, Any]]:
        if plan.tool is not None:
            return [self._chunk(plan, 0, "", [self._tool_call(plan)])]
        return [self._chunk(plan, index, piece, None) for index, piece in enumerate(_word_deltas(plan.words))]

    def stream_events(self, plan: Plan) -> list[bytes]:
        chunks = self._body_chunks(plan)
        if plan.tool is not None or not chunks:
            chunks.append(self._chunk(plan, len(chunks), "", None))
        last = chunks[-1]
        choice = last["choices"][0]
        choice["finish_reason"] = _TOGETHER_FINISH.get(plan.finish_reason, plan.finish_reason)
        choice["seed"] = TOGETHER_SEED
        last["usage"] = _base_usage(plan)
        return [*(_sse(chunk) for chunk in chunks), _DONE]

    def failed_events(self, plan: Plan, count: int) -> list[bytes]:
        events = [_sse(chunk) for chunk in self._body_chunks(plan)[:count]]
        events.append(_sse(together_error("Internal server error: the model failed mid-stream", "server_error")))
        return events


DIALECTS: tuple[Dialect, ...] = (MistralWire(), GroqWire(), TogetherWire())


def register() -> None:
    """Add the Mistral, Groq and Together AI routes to the fake upstream."""
    for dialect in DIALECTS:
        register_dialect(dialect.prefix, dialect)
