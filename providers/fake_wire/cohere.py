"""The fake upstream's Cohere v2 dialect: ``POST /cohere/v2/chat`` (JSON and SSE) and ``/cohere/v2/embed``.

Point ``MUXER_COHERE_BASE_URL`` at ``http://fake-host/cohere/v2``. It answers
like the OpenAI route, in Cohere's shapes:

- the same reply text, word-per-token counting and tool-call rules; tools
  are called when the last turn is the user's and it mentions ``weather``
  or ``tool_choice`` is ``REQUIRED`` (the first tool in ``tools``);
- ``usage.billed_units`` follows the OpenAI route's token rules, while
  ``usage.tokens.input_tokens`` adds ``TEMPLATE_TOKENS`` for the prompt
  template Cohere bills nothing for, so the two figures differ as they do
  for real;
- ``stop_sequences`` end the reply before the first match
  (``STOP_SEQUENCE``); ``max_tokens`` truncates (``MAX_TOKENS``);
- streams are named SSE events (``event: <type>`` and ``data:
  {"type": "<type>", ...}``) from ``message-start`` to ``message-end``;
- the same ``[fake ...]`` directives and ``x-fake-*`` headers work:
  ``status`` answers Cohere's ``{"id", "message"}`` error body,
  ``fail_after_chunks=N`` sends N events and then a ``message-end`` with
  ``finish_reason: "ERROR"`` and an ``error`` string.

Validation follows the API reference (Bearer auth, required ``model`` and
``messages``, roles, the system turn first, ``p`` in [0.01, 0.99], penalties
in [0, 1], ``tool_choice`` ``REQUIRED``/``NONE``, ``response_format``), and
is stricter than the real API in one way: unknown top-level fields are
rejected, so an OpenAI parameter leaking through the adapter shows up.

``/cohere/v2/embed`` requires ``model``, ``input_type`` and
``embedding_types`` (only ``["float"]`` is answered) and at most 96
``texts``; ``output_dimension`` is one of 256, 512, 1024, 1536. Vectors come
from ``providers.fake_wire.embeddings.vector`` (8 dimensions by default) and
``meta.billed_units.input_tokens`` is ceil(characters / 4) per text. The
directives in the first text apply (``status`` answers the ``{"id",
"message"}`` error body).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson

from providers.fake_upstream import (
    _HEADER_KEYS,
    DIRECTIVE_OPEN,
    REPLY_PREFIX,
    SNIPPET_CHARS,
    TOOL_ARGUMENT_FRAGMENT_CHARS,
    TOOL_ARGUMENTS,
    BadRequestError,
    Controls,
    FakeUpstream,
    Headers,
    Receive,
    Scope,
    Send,
    _apply_directives,
    _lorem,
    _random_id,
    _read_body,
    _send_json,
    register_dialect,
    send_stream,
)
from providers.fake_wire.embeddings import DEFAULT_DIMENSIONS, vector

PREFIX = "/cohere/v2"
CHAT_PATH = f"{PREFIX}/chat"
EMBED_PATH = f"{PREFIX}/embed"
MAX_EMBED_TEXTS = 96
# Cohere's usage.tokens counts its own prompt template too (71 vs 5 billed in its docs).
TEMPLATE_TOKENS = 66
MAX_STOP_SEQUENCES = 5

_JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
_SSE_HEADERS: Headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "tools",
        "strict_tools",
        "documents",
        "citation_options",
        "response_format",
        "safety_mode",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "k",
        "p",
        "logprobs",
        "tool_choice",
        "thinking",
        "priority",
    }
)
_SAFETY_MODES = frozenset({"CONTEXTUAL", "STRICT", "OFF"})
_EMBED_FIELDS = frozenset(
    {
        "model",
        "input_type",
        "embedding_types",
        "texts",
        "images",
        "inputs",
        "output_dimension",
        "truncate",
        "max_tokens",
    }
)
_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
_OUTPUT_DIMENSIONS = (256, 512, 1024, 1536)
_TRUNCATE = ("NONE", "START", "END")
_MIDSTREAM_ERROR = "internal server error, this has been reported to our developers"


def _error(message: str) -> bytes:
    return orjson.dumps({"id": str(uuid.uuid4()), "message": message})


def _injected_error(status: int, model: str, retry_after: str | None) -> tuple[bytes, Headers]:
    """An error body like the one Cohere sends for that status."""
    messages = {
        400: "invalid request: injected fake bad request.",
        401: "invalid api token",
        402: "Please add or update your payment method to continue using the API.",
        403: "You do not have permission to use this resource.",
        404: (
            f"model '{model}' not found, make sure the correct model ID was used and that you have access to the model."
        ),
        422: "unprocessable entity: injected fake error.",
        429: "You are past the rate limit for this API key; please wait before trying again.",
        498: "blocked request: injected fake error.",
        499: "request cancelled",
        500: "internal server error, this has been reported to our developers",
        501: "not implemented",
        503: "service unavailable",
        504: "gateway timeout",
    }
    message = messages.get(status, f"injected fake error (HTTP {status})")
    extra: Headers = []
    if retry_after is not None:
        extra.append((b"retry-after", retry_after.encode()))
    return _error(message), extra


# --- validation -------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_in(data: dict[str, Any], name: str, low: float, high: float) -> None:
    value = data.get(name)
    if value is None:
        return
    if not _is_number(value) or not low <= value <= high:
        raise BadRequestError(f"invalid request: {name} must be between {low:g} and {high:g}, got {value!r}.")


def _text_of(content: Any, where: str, allowed: frozenset[str]) -> str:
    """The text of a message's content, checked against the part types the role accepts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise BadRequestError(f"invalid request: {where} must be a string or a non-empty list of content.")
    texts: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise BadRequestError(f"invalid request: {where} has an unsupported content type {kind!r}.")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise BadRequestError(f"invalid request: {where} has a text item without text.")
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise BadRequestError(f"invalid request: {where} has an image_url item without a url.")
        elif kind == "document" and not isinstance(part.get("document"), dict):
            raise BadRequestError(f"invalid request: {where} has a document item without a document.")
    return " ".join(texts)


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise BadRequestError(f"invalid request: {where}.tool_calls must be a list.")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or call.get("type") != "function"
            or not isinstance(call.get("id"), str)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise BadRequestError(
                f"invalid request: {where}.tool_calls items must be "
                '{"id", "type": "function", "function": {"name", "arguments": "<JSON string>"}}.'
            )


def _message_text(message: Any, index: int) -> tuple[str, str]:
    """The role and the text of one message, validated."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise BadRequestError(f"invalid request: {where} must be an object.")
    role = message.get("role")
    if role not in _ROLES:
        raise BadRequestError(
            f"invalid request: {where}.role must be one of system, user, assistant, tool; got {role!r}."
        )
    if role == "system":
        if index != 0:
            raise BadRequestError("system turn must be the first in the list")
        return role, _text_of(message.get("content"), f"{where}.content", frozenset({"text"}))
    if role == "user":
        return role, _text_of(message.get("content"), f"{where}.content", frozenset({"text", "image_url"}))
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            raise BadRequestError(f"invalid request: {where}.tool_call_id is required for tool messages.")
        return role, _text_of(message.get("content"), f"{where}.content", frozenset({"text", "document"}))
    text = ""
    if message.get("content") is not None:
        text = _text_of(message["content"], f"{where}.content", frozenset({"text", "thinking"}))
    if message.get("tool_calls") is not None:
        _check_tool_calls(message["tool_calls"], where)
    elif message.get("content") is None:
        raise BadRequestError(f"invalid request: {where} must have content or tool_calls.")
    plan = message.get("tool_plan")
    if plan is not None:
        if not isinstance(plan, str):
            raise BadRequestError(f"invalid request: {where}.tool_plan must be a string.")
        text = f"{text} {plan}" if text else plan
    return role, text


def _check_tools(data: dict[str, Any]) -> list[str]:
    tools = data.get("tools")
    if tools is None:
        if data.get("tool_choice") == "REQUIRED":
            raise BadRequestError("invalid request: tool_choice REQUIRED needs the tools parameter.")
        return []
    if not isinstance(tools, list) or not tools:
        raise BadRequestError("invalid request: tools must be a non-empty list.")
    names: list[str] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type") != "function"
            or not isinstance(function.get("name"), str)
            or not function["name"]
            or not isinstance(function.get("parameters"), dict)
        ):
            raise BadRequestError(
                f"invalid request: tools[{index}] must be "
                '{"type": "function", "function": {"name", "parameters": {...}}}.'
            )
        names.append(function["name"])
    return names


def _check_options(data: dict[str, Any]) -> int | None:
    """Validate the generation options; return ``max_tokens``."""
    choice = data.get("tool_choice")
    if choice is not None and choice not in ("REQUIRED", "NONE"):
        raise BadRequestError(f"invalid request: tool_choice must be REQUIRED or NONE, got {choice!r}.")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise BadRequestError("invalid request: max_tokens must be a positive integer.")
    stops = data.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in stops)
    ):
        raise BadRequestError("invalid request: stop_sequences must be a list of at most 5 strings.")
    temperature = data.get("temperature")
    if temperature is not None and (not _is_number(temperature) or temperature < 0):
        raise BadRequestError("invalid request: temperature must be a non-negative number.")
    _number_in(data, "p", 0.01, 0.99)
    _number_in(data, "k", 0, 500)
    _number_in(data, "frequency_penalty", 0, 1)
    _number_in(data, "presence_penalty", 0, 1)
    seed = data.get("seed")
    if seed is not None and type(seed) is not int:
        raise BadRequestError("invalid request: seed must be an integer.")
    for flag in ("strict_tools", "logprobs"):
        if data.get(flag) is not None and type(data[flag]) is not bool:
            raise BadRequestError(f"invalid request: {flag} must be a boolean.")
    safety = data.get("safety_mode")
    if safety is not None and safety not in _SAFETY_MODES:
        raise BadRequestError("invalid request: safety_mode must be CONTEXTUAL, STRICT or OFF.")
    response_format = data.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or response_format.get("type") not in ("text", "json_object"):
            raise BadRequestError("invalid request: response_format.type must be text or json_object.")
        schema = response_format.get("json_schema")
        if schema is not None and (response_format["type"] != "json_object" or not isinstance(schema, dict)):
            raise BadRequestError("invalid request: json_schema must be an object, with type json_object.")
    return max_tokens


# --- the answer ---------------------------------------------------------------------------


class CoherePlan:
    """Everything decided about one chat request before any byte is sent."""

    __slots__ = ("controls", "finish_reason", "id", "model", "prompt_tokens", "stream", "tool", "words")

    def __init__(
        self,
        model: str,
        stream: bool,
        controls: Controls,
        words: tuple[str, ...] | list[str],
        tool: str | None,
        finish_reason: str,
        prompt_tokens: int,
    ) -> None:
        self.model = model
        self.stream = stream
        self.controls = controls
        self.words = words
        self.tool = tool
        self.finish_reason = finish_reason
        self.prompt_tokens = prompt_tokens
        self.id = str(uuid.uuid4())

    def completion_tokens(self) -> int:
        if self.tool is not None:
            return max(1, (len(self.tool) + len(TOOL_ARGUMENTS) + 3) // 4)
        return len(self.words)

    def usage(self) -> dict[str, Any]:
        output = self.completion_tokens()
        return {
            "billed_units": {"input_tokens": self.prompt_tokens, "output_tokens": output},
            "tokens": {"input_tokens": self.prompt_tokens + TEMPLATE_TOKENS, "output_tokens": output},
            "cached_tokens": 0,
        }

    def tool_plan(self) -> str:
        return f"I will use the {self.tool} tool to answer."

    def tool_call(self) -> dict[str, Any]:
        assert self.tool is not None
        return {
            "id": _random_id(f"{self.tool}_", 48),
            "type": "function",
            "function": {"name": self.tool, "arguments": TOOL_ARGUMENTS},
        }

    def completion_body(self) -> bytes:
        message: dict[str, Any] = {"role": "assistant"}
        if self.tool is not None:
            message["tool_plan"] = self.tool_plan()
            message["tool_calls"] = [self.tool_call()]
        else:
            message["content"] = [{"type": "text", "text": " ".join(self.words)}]
        return orjson.dumps(
            {"id": self.id, "finish_reason": self.finish_reason, "message": message, "usage": self.usage()}
        )

    def stream_events(self) -> list[bytes]:
        """Every event, ``message-end`` last."""
        events = [
            _event(
                {
                    "id": self.id,
                    "type": "message-start",
                    "delta": {
                        "message": {
                            "role": "assistant",
                            "content": [],
                            "tool_plan": "",
                            "tool_calls": [],
                            "citations": [],
                        }
                    },
                }
            )
        ]
        if self.tool is not None:
            plan = self.tool_plan().split(" ")
            for index, word in enumerate(plan):
                text = word if index == len(plan) - 1 else word + " "
                events.append(_event({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": text}}}))
            call = self.tool_call()
            call["function"]["arguments"] = ""
            events.append(_event({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": call}}}))
            step = TOOL_ARGUMENT_FRAGMENT_CHARS
            for offset in range(0, len(TOOL_ARGUMENTS), step):
                fragment = {"function": {"arguments": TOOL_ARGUMENTS[offset : offset + step]}}
                events.append(
                    _event({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": fragment}}})
                )
            events.append(_event({"type": "tool-call-end", "index": 0}))
        else:
            start = {"message": {"content": {"type": "text", "text": ""}}}
            events.append(_event({"type": "content-start", "index": 0, "delta": start}))
            last = len(self.words) - 1
            for index, word in enumerate(self.words):
                text = word if index == last else word + " "
                delta = {"message": {"content": {"text": text}}}
                events.append(_event({"type": "content-delta", "index": 0, "delta": delta}))
            events.append(_event({"type": "content-end", "index": 0}))
        end = {"finish_reason": self.finish_reason, "usage": self.usage()}
        events.append(_event({"type": "message-end", "delta": end}))
        return events


def _event(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _cut_at_stop(words: tuple[str, ...] | list[str], stops: list[str]) -> list[str] | None:
    """The words before the first stop sequence in the reply, or None when none occurs."""
    text = " ".join(words)
    found = [position for position in (text.find(stop) for stop in stops if stop) if position != -1]
    if not found:
        return None
    return text[: min(found)].split()


def _plan(app: FakeUpstream, raw_body: bytes, fake_headers: Headers | None) -> CoherePlan:
    controls = app.defaults
    if fake_headers is not None:
        controls = controls.copy()
        for name, value in fake_headers:
            key = _HEADER_KEYS.get(name)
            if key is None:
                raise BadRequestError(f"invalid request: unknown fake header {name.decode('latin-1')!r}.")
            controls.set(key, value.decode("latin-1").strip(), "header")
    try:
        data = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        raise BadRequestError("invalid request: could not parse the JSON body.") from None
    if not isinstance(data, dict):
        raise BadRequestError("invalid request: the body must be a JSON object.")
    unknown = sorted(data.keys() - _FIELDS)
    if unknown:
        raise BadRequestError(f"invalid request: unknown field {unknown[0]!r}.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("invalid request: model is required.")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("invalid request: messages must be a non-empty list.")
    total_chars = 0
    last_user_text = ""
    role = ""
    for index, message in enumerate(messages):
        role, text = _message_text(message, index)
        total_chars += len(text)
        if role == "user":
            last_user_text = text
    stream = data.get("stream", False)
    if type(stream) is not bool:
        raise BadRequestError("invalid request: stream must be a boolean.")
    tools = _check_tools(data)
    limit = _check_options(data)

    if DIRECTIVE_OPEN in last_user_text:
        last_user_text, controls = _apply_directives(last_user_text, controls)
    tool: str | None = None
    choice = data.get("tool_choice")
    # Only a user turn triggers a call, so agent loops that send the tool result back terminate.
    if tools and choice != "NONE" and role == "user" and (choice == "REQUIRED" or "weather" in last_user_text.lower()):
        tool = tools[0]

    words: tuple[str, ...] | list[str]
    if tool is not None:
        words = ()
    elif controls.words is not None:
        words = _lorem(controls.words)
    else:
        words = (REPLY_PREFIX + last_user_text.strip()[:SNIPPET_CHARS]).split()
    finish_reason = "TOOL_CALL" if tool is not None else "COMPLETE"
    if tool is None:
        cut = _cut_at_stop(words, data.get("stop_sequences") or [])
        if cut is not None:
            words, finish_reason = cut, "STOP_SEQUENCE"
    if limit is not None and len(words) > limit:
        words, finish_reason = words[:limit], "MAX_TOKENS"
    prompt_tokens = max(1, (total_chars + 3) // 4)
    return CoherePlan(model, stream, controls, words, tool, finish_reason, prompt_tokens)


# --- embed --------------------------------------------------------------------------------


def _one_of(data: dict[str, Any], name: str, allowed: tuple[Any, ...]) -> None:
    value = data.get(name)
    if value is not None and value not in allowed:
        choices = ", ".join(str(choice) for choice in allowed)
        raise BadRequestError(f"invalid request: {name} must be one of {choices}; got {value!r}.")


def _embed_texts(raw_body: bytes) -> tuple[dict[str, Any], list[str]]:
    """The embed request and its texts, validated as ``POST /v2/embed`` validates them."""
    try:
        data = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        raise BadRequestError("invalid request: could not parse the JSON body.") from None
    if not isinstance(data, dict):
        raise BadRequestError("invalid request: the body must be a JSON object.")
    unknown = sorted(data.keys() - _EMBED_FIELDS)
    if unknown:
        raise BadRequestError(f"invalid request: unknown field {unknown[0]!r}.")
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise BadRequestError("invalid request: model is required.")
    if data.get("input_type") is None:
        raise BadRequestError("invalid request: input_type is required for embed models v3 and higher.")
    _one_of(data, "input_type", _INPUT_TYPES)
    types = data.get("embedding_types")
    if not isinstance(types, list) or not types or any(kind not in _EMBEDDING_TYPES for kind in types):
        raise BadRequestError(
            f"invalid request: embedding_types must be a non-empty list of {', '.join(_EMBEDDING_TYPES)}."
        )
    if types != ["float"]:
        raise BadRequestError("invalid request: the fake upstream only returns float embeddings.")
    if data.get("images") is not None or data.get("inputs") is not None:
        raise BadRequestError("invalid request: the fake upstream only embeds texts.")
    texts = data.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise BadRequestError("invalid request: texts must be a non-empty list of strings.")
    if len(texts) > MAX_EMBED_TEXTS:
        raise BadRequestError(
            f"invalid request: total number of texts must be at most {MAX_EMBED_TEXTS} - received {len(texts)}"
        )
    _one_of(data, "output_dimension", _OUTPUT_DIMENSIONS)
    _one_of(data, "truncate", _TRUNCATE)
    return data, list(texts)


def _embed_answer(data: dict[str, Any], texts: list[str]) -> bytes:
    dimensions = data.get("output_dimension") or DEFAULT_DIMENSIONS
    tokens = sum(max(1, -(-len(text) // 4)) for text in texts)  # the OpenAI embeddings fake's rule
    return orjson.dumps(
        {
            "id": str(uuid.uuid4()),
            "embeddings": {"float": [vector(text, dimensions) for text in texts]},
            "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
            "response_type": "embeddings_by_type",
        }
    )


async def _embed(app: FakeUpstream, scope: Scope, receive: Receive, send: Send) -> None:
    stats = app.stats
    stats.requests += 1
    raw_body = await _read_body(receive)
    headers: Headers = scope["headers"]
    stats.last_request = (scope["method"], scope["path"], headers, raw_body)
    authorization = next((value for name, value in headers if name == b"authorization"), b"")
    scheme, _, key = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or not key.strip():
        stats.errors += 1
        message = "no api key supplied" if not authorization else "invalid api token"
        await _send_json(send, 401, _error(message), _JSON_HEADERS)
        return
    try:
        data, texts = _embed_texts(raw_body)
        controls = app.defaults
        if DIRECTIVE_OPEN in texts[0]:
            texts[0], controls = _apply_directives(texts[0], controls, data["model"])
    except BadRequestError as exc:
        stats.errors += 1
        await _send_json(send, 400, _error(exc.message), _JSON_HEADERS)
        return
    if controls.latency_ms > 0:
        await asyncio.sleep(controls.latency_ms / 1000)
    if controls.status is not None:
        stats.errors += 1
        body, extra = _injected_error(controls.status, data["model"], controls.retry_after)
        await _send_json(send, controls.status, body, [*_JSON_HEADERS, *extra])
        return
    stats.completed += 1
    await _send_json(send, 200, _embed_answer(data, texts), _JSON_HEADERS)


# --- the route ----------------------------------------------------------------------------


async def handle(app: FakeUpstream, scope: Scope, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    routes = {CHAT_PATH: _chat, EMBED_PATH: _embed}
    route = routes.get(path)
    if route is None:
        await _send_json(send, 404, _error(f"path {path} not found"), _JSON_HEADERS)
        return
    if scope["method"] != "POST":
        await _send_json(send, 405, _error(f"method {scope['method']} not allowed"), _JSON_HEADERS)
        return
    await route(app, scope, receive, send)


async def _chat(app: FakeUpstream, scope: Scope, receive: Receive, send: Send) -> None:
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
        stats.errors += 1
        message = "no api key supplied" if not authorization else "invalid api token"
        await _send_json(send, 401, _error(message), _JSON_HEADERS)
        return

    try:
        plan = _plan(app, raw_body, fake_headers)
    except BadRequestError as exc:
        stats.errors += 1
        await _send_json(send, 400, _error(exc.message), _JSON_HEADERS)
        return

    controls = plan.controls
    if controls.latency_ms > 0:
        await asyncio.sleep(controls.latency_ms / 1000)
    if controls.status is not None:
        stats.errors += 1
        body, extra = _injected_error(controls.status, plan.model, controls.retry_after)
        await _send_json(send, controls.status, body, [*_JSON_HEADERS, *extra])
        return
    if plan.stream:
        await _stream(app, plan, receive, send)
    else:
        stats.completed += 1
        await _send_json(send, 200, plan.completion_body(), _JSON_HEADERS)


async def _stream(app: FakeUpstream, plan: CoherePlan, receive: Receive, send: Send) -> None:
    stats = app.stats
    controls = plan.controls
    events = plan.stream_events()
    failing = controls.fail_after_chunks is not None
    if failing:
        events = events[: controls.fail_after_chunks]
        end = {"finish_reason": "ERROR", "error": _MIDSTREAM_ERROR}
        events.append(_event({"type": "message-end", "delta": end}))
    await send_stream(send, receive, stats, _SSE_HEADERS, events, controls.chunk_delay_ms, failing=failing)


def register() -> None:
    register_dialect(PREFIX, handle)
