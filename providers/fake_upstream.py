"""Fake OpenAI-compatible upstream for development, tests and the load benchmark.

Run from the repository root::

    python -m providers.fake_upstream --host 127.0.0.1 --port 9100 \
        [--latency-ms N] [--workers N]

It is a bare ASGI app (no Django) that speaks the OpenAI Chat Completions wire
format: ``POST /v1/chat/completions`` (JSON and data-only SSE), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /healthz``, ``GET /_fake/stats`` and
``POST /_fake/reset``.

Replies are deterministic: ``"Fake reply to: "`` + the first 40 characters of the
last user message (directives removed); one whitespace-separated word is one
completion token, ``prompt_tokens = max(1, ceil(chars of all message text / 4))``.
``max_tokens``/``max_completion_tokens`` truncate to that many words
(``finish_reason: "length"``). When ``tools`` are given, the last message is a
user message and it mentions ``weather`` (or ``tool_choice`` is ``"required"``
or names a function), the reply is a call to the first (or named) tool with
arguments ``{"city": "Paris"}``.

Control directives
------------------
Each request can be steered through ``x-fake-*`` request headers or, because the
gateway does not forward client headers, a directive anywhere in the text of the
last user message, e.g. ``[fake status=503 latency_ms=200]``. A directive wins
over a header, a header wins over the ``--latency-ms`` default.

- ``status=N`` / ``x-fake-status``: answer with HTTP N (4xx/5xx) and an
  OpenAI-style error body (429 ``rate_limit_exceeded``, 500 ``server_error``,
  503 overloaded, 401 ``invalid_api_key``, 404 ``model_not_found``, ...).
- ``latency_ms=F`` / ``x-fake-latency-ms``: sleep before answering (errors too).
- ``chunk_delay_ms=F`` / ``x-fake-chunk-delay-ms``: sleep between stream chunks.
- ``fail_after_chunks=N`` / ``x-fake-fail-after-chunks``: stream N ``data:``
  chunks, then a ``data: {"error": {...}}`` event and end without ``[DONE]``.
- ``retry_after=S`` / ``x-fake-retry-after``: with ``status``, send
  ``retry-after: S``.
- ``words=N`` / ``x-fake-words``: reply with exactly N lorem-ipsum words.
- ``refuse=1`` / ``x-fake-refuse``: reply with a refusal (``REFUSAL``), the
  weak answer a cascade router must catch; scope it with ``model=NAME``.

In JSON mode (``response_format`` of type ``json_object`` or ``json_schema``)
the reply is the JSON object ``{"reply": "<the usual reply>"}``, as a real
model's would be valid JSON; a refusal stays plain text.

Response faults
---------------
Four more keys break the response on its way out rather than change what is
decided. They work on every route that parses its controls through
``Controls`` (the OpenAI route and every ``providers.fake_wire`` dialect), as
a wrapper around the ASGI ``send`` (``FaultySend``), and apply to error
answers as well as to successful ones:

- ``first_byte_delay_ms=F`` / ``x-fake-first-byte-delay-ms``: hold the
  response start (status line and headers, the first byte on the wire) for F
  ms once the whole answer has been decided. ``latency_ms`` is the server's
  think time before it decides anything; ``first_byte_delay_ms`` is a slow
  first byte, the fault a gateway's first-byte timeout exists for. Both delay
  the first byte, so a test may use either; the names say which is meant.
- ``reset_after_bytes=N`` / ``x-fake-reset-after-bytes``: send the headers
  and the first N bytes of the body (after the faults below), then abort the
  connection: ``send`` raises ``FakeConnectionReset``, so uvicorn closes the
  socket without finishing the body and clients see an incomplete read (a
  short ``content-length`` body or an unterminated chunked stream). A body of
  at most N bytes is delivered whole. uvicorn logs the exception.
- ``malformed_json=1`` / ``x-fake-malformed-json``: corrupt the JSON. A JSON
  body (an error answer too) is cut to its first half, mid-object, with a
  matching ``content-length``; in an event stream every ``data:`` payload but
  ``[DONE]`` is cut to its first half, keeping the SSE framing intact.
- ``truncate_stream=1`` / ``x-fake-truncate-stream``: an event stream ends
  cleanly but without its last event: ``data: [DONE]`` for the OpenAI
  dialects, ``message_stop`` for Anthropic, ``message-end`` for Cohere, the
  ``finishReason`` chunk for Gemini, and the error event of
  ``fail_after_chunks``. Each event is held until the next arrives (so
  ``chunk_delay_ms`` timing shifts by one event). No effect on JSON bodies.

Invalid directives or header values are rejected with a 400 so typos in tests
surface immediately. Auth and body validation errors are answered without the
latency. ``/_fake/stats`` counters (per worker process): ``requests`` (chat
completion requests), ``completed`` (200 JSON answers), ``errors`` (non-200
answers), ``streams_started``, ``streams_completed``, ``streams_aborted`` (client
went away mid-stream; only detectable when ``chunk_delay_ms > 0``, because
zero-delay streams are written in one go), ``streams_failed`` (injected
mid-stream errors) and ``last_request`` (method, path, headers without
``authorization`` and the body of the last chat request).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextvars import ContextVar
from typing import Any

import orjson
import uvicorn
from uvicorn.supervisors import Multiprocess

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

FAKE_MODELS: tuple[str, ...] = ("fake-small", "fake-medium", "fake-large")
MODELS_CREATED = 1700000000
SYSTEM_FINGERPRINT = "fp_fake000001"
REPLY_PREFIX = "Fake reply to: "
REFUSAL = "I'm sorry, but I can't help with that."
SNIPPET_CHARS = 40
TOOL_ARGUMENTS = '{"city": "Paris"}'
# Small argument fragments so gateways exercise their tool-call delta accumulation.
TOOL_ARGUMENT_FRAGMENT_CHARS = 6
MAX_WORDS = 100_000
MAX_SLEEP_MS = 600_000.0
LATENCY_ENV = "FAKE_UPSTREAM_LATENCY_MS"
DIRECTIVE_OPEN = "[fake "

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_LOREM: tuple[str, ...] = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing",
    "elit", "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore",
    "et", "dolore", "magna", "aliqua",
)  # fmt: skip
_HEADER_KEYS: dict[bytes, str] = {
    b"x-fake-status": "status",
    b"x-fake-latency-ms": "latency_ms",
    b"x-fake-chunk-delay-ms": "chunk_delay_ms",
    b"x-fake-fail-after-chunks": "fail_after_chunks",
    b"x-fake-retry-after": "retry_after",
    b"x-fake-words": "words",
    b"x-fake-refuse": "refuse",
    b"x-fake-first-byte-delay-ms": "first_byte_delay_ms",
    b"x-fake-reset-after-bytes": "reset_after_bytes",
    b"x-fake-malformed-json": "malformed_json",
    b"x-fake-truncate-stream": "truncate_stream",
}
# Bodies are far smaller than this; the bound only rejects nonsense values.
MAX_RESET_BYTES = 1 << 30

_JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]
# Static rate-limit headers like OpenAI's, so gateways can exercise their parsing.
_RATELIMIT_HEADERS: Headers = [
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-limit-tokens", b"10000000"),
    (b"x-ratelimit-remaining-tokens", b"9999000"),
    (b"x-ratelimit-reset-tokens", b"6ms"),
]
_FP_JSON = orjson.dumps(SYSTEM_FINGERPRINT)
_SSE_DONE = b"data: [DONE]\n\n"
_ROLE_DELTA = b'{"role":"assistant","content":"","refusal":null}'
_CHOICE_OPEN_TAIL = b',"logprobs":null,"finish_reason":null}]'
_MIDSTREAM_ERROR = {
    "message": ("The server had an error while processing your request. Sorry about that!"),
    "type": "server_error",
    "param": None,
    "code": "server_error",
}

_getrandbits = random.getrandbits
_perf_counter = time.perf_counter


DialectHandler = Callable[["FakeUpstream", Scope, Receive, Send], Awaitable[None]]
# Other wire formats (providers/fake_wire/*) register here: path prefix -> handler.
_DIALECTS: list[tuple[str, DialectHandler]] = []


def register_dialect(prefix: str, handler: DialectHandler) -> None:
    """Serve every path under ``prefix`` with ``handler`` (checked after the OpenAI routes)."""
    _DIALECTS.append((prefix, handler))


class BadRequestError(Exception):
    """A client mistake answered with an OpenAI 400 error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class Controls:
    """Per-request failure/latency knobs; the shared default is never mutated."""

    __slots__ = (
        "chunk_delay_ms",
        "fail_after_chunks",
        "faulty",
        "first_byte_delay_ms",
        "latency_ms",
        "malformed_json",
        "refuse",
        "reset_after_bytes",
        "retry_after",
        "status",
        "truncate_stream",
        "words",
    )

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.status: int | None = None
        self.latency_ms: float = latency_ms
        self.chunk_delay_ms: float = 0.0
        self.fail_after_chunks: int | None = None
        self.retry_after: str | None = None
        self.words: int | None = None
        self.refuse: bool = False
        self.first_byte_delay_ms: float = 0.0
        self.reset_after_bytes: int | None = None
        self.malformed_json: bool = False
        self.truncate_stream: bool = False
        # One flag for the hot path: whether any response fault is on.
        self.faulty: bool = False

    def copy(self) -> Controls:
        other = Controls(self.latency_ms)
        other.status = self.status
        other.chunk_delay_ms = self.chunk_delay_ms
        other.fail_after_chunks = self.fail_after_chunks
        other.retry_after = self.retry_after
        other.words = self.words
        other.refuse = self.refuse
        other.first_byte_delay_ms = self.first_byte_delay_ms
        other.reset_after_bytes = self.reset_after_bytes
        other.malformed_json = self.malformed_json
        other.truncate_stream = self.truncate_stream
        other.faulty = self.faulty
        return other

    def _fault_changed(self) -> None:
        self.faulty = bool(self.first_byte_delay_ms or self.malformed_json or self.truncate_stream) or (
            self.reset_after_bytes is not None
        )
        # A dialect route installed a FaultySend before parsing; the Controls that
        # set a fault last are the request's final ones (later copies keep faults).
        slot = _FAULT_SLOT.get()
        if slot is not None:
            slot.controls = self

    def set(self, key: str, raw: str, source: str) -> None:
        try:
            if key == "status":
                status = int(raw)
                if status != 200 and not 400 <= status <= 599:
                    raise ValueError
                self.status = None if status == 200 else status
            elif key == "latency_ms":
                self.latency_ms = _parse_ms(raw)
            elif key == "chunk_delay_ms":
                self.chunk_delay_ms = _parse_ms(raw)
            elif key == "fail_after_chunks":
                self.fail_after_chunks = _parse_count(raw)
            elif key == "retry_after":
                if float(raw) < 0:
                    raise ValueError
                self.retry_after = raw
            elif key == "words":
                self.words = _parse_count(raw)
            elif key == "refuse":
                self.refuse = _parse_flag(raw)
            elif key == "first_byte_delay_ms":
                self.first_byte_delay_ms = _parse_ms(raw)
                self._fault_changed()
            elif key == "reset_after_bytes":
                reset = int(raw)
                if not 0 <= reset <= MAX_RESET_BYTES:
                    raise ValueError
                self.reset_after_bytes = reset
                self._fault_changed()
            elif key == "malformed_json":
                self.malformed_json = _parse_flag(raw)
                self._fault_changed()
            elif key == "truncate_stream":
                self.truncate_stream = _parse_flag(raw)
                self._fault_changed()
            else:
                raise BadRequestError(f"Unknown fake directive {key!r} in {source}.", "messages")
        except ValueError:
            raise BadRequestError(
                f"Invalid value {raw!r} for fake directive {key!r} in {source}.",
                "messages",
            ) from None


def _parse_ms(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= MAX_SLEEP_MS:
        raise ValueError
    return value


def _parse_flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError
    return raw == "1"


def _parse_count(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= MAX_WORDS:
        raise ValueError
    return value


# How often each `times=N` directive has fired, by its text (reset by /_fake/reset).
_DIRECTIVE_USES: dict[str, int] = {}


def _apply_directives(text: str, controls: Controls, model: str | None = None) -> tuple[str, Controls]:
    """Apply every ``[fake k=v ...]`` in text; return the text without them.

    Two keys scope a directive rather than set a control: ``model=NAME`` applies
    it only to requests for that model (so a gateway's fallback to another
    model gets a clean answer), and ``times=N`` applies it to the first N
    requests that carry it (so a gateway's retry can succeed).
    """
    controls = controls.copy()
    start = text.find(DIRECTIVE_OPEN)
    while start != -1:
        end = text.find("]", start)
        if end == -1:
            raise BadRequestError("Unterminated [fake ...] directive.", "messages")
        directive = text[start + len(DIRECTIVE_OPEN) : end]
        pairs: list[tuple[str, str]] = []
        for token in directive.split():
            key, sep, value = token.partition("=")
            if not sep:
                raise BadRequestError(
                    f"Malformed fake directive token {token!r}; expected key=value.",
                    "messages",
                )
            pairs.append((key, value))
        scope = dict(pairs)
        applies = model is None or scope.get("model", model) == model
        if applies and "times" in scope:
            uses = _DIRECTIVE_USES.get(directive, 0)
            applies = uses < _parse_count(scope["times"])
            _DIRECTIVE_USES[directive] = uses + 1
        if applies:
            for key, value in pairs:
                if key not in ("model", "times"):
                    controls.set(key, value, "directive")
        text = text[:start] + text[end + 1 :]
        start = text.find(DIRECTIVE_OPEN, start)
    return text, controls


@functools.lru_cache(maxsize=64)
def _lorem(count: int) -> tuple[str, ...]:
    size = len(_LOREM)
    return tuple(_LOREM[i % size] for i in range(count))


def _error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _injected_error(status: int, model: str, retry_after: str | None) -> tuple[bytes, Headers]:
    """An error body resembling what OpenAI returns for that status."""
    extra: Headers = []
    if status == 429:
        wait = retry_after or "1"
        body = _error_body(
            f"Rate limit reached for {model} in organization org-fake on requests "
            "per min (RPM): Limit 10000, Used 10000, Requested 1. "
            f"Please try again in {wait}s.",
            "requests",
            None,
            "rate_limit_exceeded",
        )
        extra += [
            (b"x-ratelimit-limit-requests", b"10000"),
            (b"x-ratelimit-remaining-requests", b"0"),
            (b"x-ratelimit-reset-requests", wait.encode() + b"s"),
        ]
    elif status == 400:
        body = _error_body("Injected fake bad request.", "invalid_request_error", None, None)
    elif status == 401:
        body = _error_body(
            "Incorrect API key provided: sk-fake****. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            "invalid_api_key",
        )
    elif status == 403:
        body = _error_body(
            "Country, region, or territory not supported",
            "request_forbidden",
            None,
            "unsupported_country_region_territory",
        )
    elif status == 404:
        body = _error_body(
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            None,
            "model_not_found",
        )
    elif status == 500:
        body = _error_body(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            "server_error",
        )
    elif status == 503:
        body = _error_body(
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        )
    elif status >= 500:
        body = _error_body(f"Injected fake upstream error (HTTP {status}).", "server_error", None, None)
    else:
        body = _error_body(
            f"Injected fake client error (HTTP {status}).",
            "invalid_request_error",
            None,
            None,
        )
    if retry_after is not None:
        extra.append((b"retry-after", retry_after.encode()))
    return body, extra


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    raise BadRequestError(f"Invalid type for 'messages[{index}].content'.", f"messages.[{index}].content")


def _json_mode(data: dict[str, Any]) -> bool:
    response_format = data.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")


def _max_words(data: dict[str, Any]) -> int | None:
    limit: int | None = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = data.get(key)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise BadRequestError(f"Invalid '{key}': expected an integer >= 1.", key)
        limit = value if limit is None else min(limit, value)
    return limit


def _tool_name(data: dict[str, Any], last_is_user: bool, text: str) -> str | None:
    """The tool to call, or None for a text answer."""
    tools = data.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not tools:
        raise BadRequestError("Invalid 'tools': expected a non-empty array.", "tools")
    first = tools[0]
    function = first.get("function") if isinstance(first, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRequestError("Invalid 'tools[0]': expected {type: function, function: {name}}.", "tools")
    choice = data.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        forced = choice.get("function")
        forced_name = forced.get("name") if isinstance(forced, dict) else None
        if isinstance(forced_name, str) and forced_name:
            return forced_name
    # Only a user turn triggers a call, so agent loops that send the tool
    # result back terminate.
    if not last_is_user:
        return None
    if choice == "required" or "weather" in text.lower():
        return name
    return None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _random_id(prefix: str, bits: int = 96) -> str:
    # getrandbits avoids a urandom syscall per id; ids need uniqueness, not secrecy.
    return f"{prefix}{_getrandbits(bits):0{bits // 4}x}"


class Stats:
    __slots__ = (
        "completed",
        "errors",
        "last_request",
        "requests",
        "streams_aborted",
        "streams_completed",
        "streams_failed",
        "streams_started",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.completed = 0
        self.errors = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_aborted = 0
        self.streams_failed = 0
        # Kept raw and decoded only when /_fake/stats is read (cheap hot path).
        self.last_request: tuple[str, str, Headers, bytes] | None = None

    def as_dict(self) -> dict[str, Any]:
        last: dict[str, Any] | None = None
        if self.last_request is not None:
            method, path, headers, body = self.last_request
            decoded: dict[str, str] = {}
            credential_sha256 = None
            for raw_name, raw_value in headers:
                name = raw_name.decode("latin-1").lower()
                if name in ("authorization", "x-api-key", "x-goog-api-key"):
                    # Never echo a credential; a digest lets tests tell which key was sent.
                    credential_sha256 = hashlib.sha256(raw_value.split(b" ")[-1]).hexdigest()
                    continue
                value = raw_value.decode("latin-1")
                decoded[name] = f"{decoded[name]}, {value}" if name in decoded else value
            try:
                parsed_body: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed_body = body.decode("utf-8", "replace")
            last = {
                "credential_sha256": credential_sha256,
                "method": method,
                "path": path,
                "headers": decoded,
                "body": parsed_body,
            }
        return {
            "requests": self.requests,
            "completed": self.completed,
            "errors": self.errors,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_aborted": self.streams_aborted,
            "streams_failed": self.streams_failed,
            "last_request": last,
        }


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _send_json(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class FakeUpstream:
    """The ASGI application; one instance holds the per-process stats."""

    def __init__(self, default_latency_ms: float = 0) -> None:
        self.defaults = Controls(float(default_latency_ms))
        self.stats = Stats()
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": MODELS_CREATED,
                        "owned_by": "fake",
                    }
                    for name in FAKE_MODELS
                ],
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/v1/chat/completions":
            if method == "POST":
                await self._chat(scope, receive, send)
                return
        elif path == "/healthz":
            if method == "GET":
                await _send_json(send, 200, b'{"status":"ok"}', _JSON_HEADERS)
                return
        elif path == "/v1/models":
            if method == "GET":
                await _send_json(send, 200, self._models_body, _JSON_HEADERS)
                return
        elif path.startswith("/v1/models/"):
            if method == "GET":
                await self._model(path[len("/v1/models/") :], send)
                return
        elif path == "/_fake/stats":
            if method == "GET":
                await _send_json(send, 200, orjson.dumps(self.stats.as_dict()), _JSON_HEADERS)
                return
        elif path == "/_fake/reset":
            if method == "POST":
                self.stats = Stats()
                _DIRECTIVE_USES.clear()
                await _send_json(send, 200, orjson.dumps(self.stats.as_dict()), _JSON_HEADERS)
                return
        else:
            if not _DIALECTS:
                _register_dialects()
            for prefix, handler in _DIALECTS:
                if path.startswith(prefix):
                    # Dialects parse their controls themselves, after this point;
                    # Controls.set hands any fault to this wrapper (see FaultySend).
                    faulty_send = FaultySend(send)
                    token = _FAULT_SLOT.set(faulty_send)
                    try:
                        await handler(self, scope, receive, faulty_send)
                    finally:
                        _FAULT_SLOT.reset(token)
                    return
            body = _error_body(f"Invalid URL ({method} {path})", "invalid_request_error", None, None)
            await _send_json(send, 404, body, _JSON_HEADERS)
            return
        body = _error_body(
            f"Invalid method for URL ({method} {path})",
            "invalid_request_error",
            None,
            None,
        )
        await _send_json(send, 405, body, _JSON_HEADERS)

    async def _model(self, model_id: str, send: Send) -> None:
        if model_id in FAKE_MODELS:
            body = orjson.dumps(
                {
                    "id": model_id,
                    "object": "model",
                    "created": MODELS_CREATED,
                    "owned_by": "fake",
                }
            )
            await _send_json(send, 200, body, _JSON_HEADERS)
            return
        body = _error_body(
            f"The model `{model_id}` does not exist or you do not have access to it.",
            "invalid_request_error",
            None,
            "model_not_found",
        )
        await _send_json(send, 404, body, _JSON_HEADERS)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = _perf_counter()
        stats = self.stats
        stats.requests += 1
        raw_body = await _read_body(receive)
        headers: Headers = scope["headers"]
        stats.last_request = (scope["method"], scope["path"], headers, raw_body)
        request_id = _random_id("req_", 128)

        authorization = b""
        fake_headers: Headers | None = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value
            elif name.startswith(b"x-fake-"):
                if fake_headers is None:
                    fake_headers = []
                fake_headers.append((name, value))

        scheme, _, key = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not key.strip():
            stats.errors += 1
            message = (
                "You didn't provide an API key. You need to provide your API key "
                "in an Authorization header using Bearer auth "
                "(i.e. Authorization: Bearer YOUR_KEY)."
                if not authorization
                else "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
            )
            body = _error_body(message, "invalid_request_error", None, "invalid_api_key")
            await self._respond(send, 401, body, request_id, started, [])
            return

        try:
            plan = self._plan(raw_body, fake_headers)
        except BadRequestError as exc:
            stats.errors += 1
            body = _error_body(exc.message, "invalid_request_error", exc.param, None)
            await self._respond(send, 400, body, request_id, started, [])
            return

        controls = plan.controls
        if controls.faulty:
            send = FaultySend(send, controls)
        if controls.latency_ms > 0:
            await asyncio.sleep(controls.latency_ms / 1000)
        if controls.status is not None:
            stats.errors += 1
            body, extra = _injected_error(controls.status, plan.model, controls.retry_after)
            await self._respond(send, controls.status, body, request_id, started, extra)
            return

        if plan.stream:
            await self._stream(plan, receive, send, request_id, started)
        else:
            stats.completed += 1
            await self._respond(
                send,
                200,
                plan.completion_body(),
                request_id,
                started,
                _RATELIMIT_HEADERS,
            )

    def _plan(self, raw_body: bytes, fake_headers: Headers | None) -> Plan:
        controls = self.defaults
        if fake_headers is not None:
            controls = controls.copy()
            for name, value in fake_headers:
                key = _HEADER_KEYS.get(name)
                if key is None:
                    raise BadRequestError(f"Unknown fake header {name.decode('latin-1')!r}.", None)
                controls.set(key, value.decode("latin-1").strip(), "header")

        try:
            data = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            raise BadRequestError(
                "We could not parse the JSON body of your request. (HINT: This "
                "likely means you aren't using your HTTP library correctly. The "
                "OpenAI API expects a JSON payload, but what was sent was not "
                "valid JSON.)",
                None,
            ) from None
        if not isinstance(data, dict):
            raise BadRequestError("Invalid request body: expected a JSON object.", None)
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("you must provide a model parameter", "model")
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise BadRequestError("Missing required parameter: 'messages'.", "messages")
        if not messages:
            raise BadRequestError("[] is too short - 'messages'", "messages")

        total_chars = 0
        last_user_text = ""
        role: Any = None
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise BadRequestError(
                    f"Invalid type for 'messages[{index}]': expected an object.",
                    f"messages.[{index}]",
                )
            role = message.get("role")
            if role not in _ROLES:
                raise BadRequestError(
                    f"Invalid value for 'messages[{index}].role'.",
                    f"messages.[{index}].role",
                )
            text = _message_text(message.get("content"), index)
            total_chars += len(text)
            if role == "user":
                last_user_text = text

        stream = data.get("stream")
        if stream is None:
            stream = False
        elif type(stream) is not bool:
            raise BadRequestError("Invalid type for 'stream': expected a boolean.", "stream")
        include_usage = False
        stream_options = data.get("stream_options")
        if stream_options is not None:
            if not stream:
                raise BadRequestError(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    "stream_options",
                )
            if not isinstance(stream_options, dict):
                raise BadRequestError(
                    "Invalid type for 'stream_options': expected an object.",
                    "stream_options",
                )
            include_usage = stream_options.get("include_usage") is True
        n = data.get("n")
        if n is not None and n != 1:
            raise BadRequestError("The fake upstream only supports n=1.", "n")
        limit = _max_words(data)

        if DIRECTIVE_OPEN in last_user_text:
            last_user_text, controls = _apply_directives(last_user_text, controls, model)
        tool = _tool_name(data, role == "user", last_user_text)

        words: tuple[str, ...] | list[str]
        if tool is not None:
            words = ()
        elif controls.refuse:
            words = REFUSAL.split()
        elif controls.words is not None:
            words = _lorem(controls.words)
        else:
            words = (REPLY_PREFIX + last_user_text.strip()[:SNIPPET_CHARS]).split()
        if words and not controls.refuse and _json_mode(data):
            words = orjson.dumps({"reply": " ".join(words)}).decode().split(" ")
        finish_reason = "tool_calls" if tool is not None else "stop"
        if limit is not None and len(words) > limit:
            words = words[:limit]
            finish_reason = "length"
        prompt_tokens = max(1, (total_chars + 3) // 4)
        return Plan(
            model,
            stream,
            include_usage,
            controls,
            words,
            tool,
            finish_reason,
            prompt_tokens,
        )

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        request_id: str,
        started: float,
        extra: Headers,
    ) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (
                b"openai-processing-ms",
                str(round((_perf_counter() - started) * 1000)).encode(),
            ),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, plan: Plan, receive: Receive, send: Send, request_id: str, started: float) -> None:
        stats = self.stats
        controls = plan.controls
        events = plan.stream_events()
        failing = controls.fail_after_chunks is not None
        if failing:
            events = events[: controls.fail_after_chunks]
            events.append(b"data: " + orjson.dumps({"error": _MIDSTREAM_ERROR}) + b"\n\n")
        else:
            events.append(_SSE_DONE)

        headers = [
            *_SSE_HEADERS,
            (b"x-request-id", request_id.encode()),
            (
                b"openai-processing-ms",
                str(round((_perf_counter() - started) * 1000)).encode(),
            ),
            *_RATELIMIT_HEADERS,
        ]
        await send_stream(send, receive, stats, headers, events, controls.chunk_delay_ms, failing=failing)


class FakeConnectionReset(Exception):
    """Raised from ``send`` mid-body; an ASGI server answers it by closing the connection."""


class FaultySend:
    """The ``send`` of one request whose Controls ask for response faults.

    The OpenAI route wraps ``send`` once its Controls are known. Dialect routes
    are wrapped before dispatch with ``controls=None`` (a plain pass-through),
    and ``Controls.set`` fills ``controls`` in when a fault key is set while the
    request is parsed; every send comes after that.
    """

    __slots__ = ("_body_sent", "_held", "_json", "_json_parts", "_send", "_sse", "_start", "controls")

    def __init__(self, send: Send, controls: Controls | None = None) -> None:
        self._send = send
        self.controls = controls
        self._start: Message | None = None
        self._sse = False
        self._json = False
        self._held = b""
        self._json_parts: list[bytes] = []
        self._body_sent = 0

    async def __call__(self, message: Message) -> None:
        controls = self.controls
        if controls is None or not controls.faulty:
            await self._send(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            self._start = message
            content_type = _header_value(message.get("headers") or (), b"content-type")
            self._sse = content_type.startswith(b"text/event-stream")
            self._json = not self._sse and b"json" in content_type
            if not (controls.malformed_json and self._json):
                await self._emit_start()
            # else: held until the cut body's content-length is known.
            return
        if kind != "http.response.body":
            await self._send(message)
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self._sse:
            if controls.truncate_stream:
                body, held = _split_last_event(self._held + body)
                # At the end, what is still held is the last event: dropped.
                self._held = held if more else b""
            if controls.malformed_json:
                body = _corrupt_sse(body)
        elif self._json and controls.malformed_json:
            self._json_parts.append(body)
            if more:
                return
            whole = b"".join(self._json_parts)
            body = whole[: len(whole) // 2]
            await self._emit_start(content_length=len(body))
        await self._write(body, more)

    async def _emit_start(self, content_length: int | None = None) -> None:
        assert self._start is not None
        assert self.controls is not None
        start = self._start
        if content_length is not None:
            headers = [(n, v) for n, v in start.get("headers") or () if n.lower() != b"content-length"]
            headers.append((b"content-length", str(content_length).encode()))
            start = {**start, "headers": headers}
        if self.controls.first_byte_delay_ms > 0:
            await asyncio.sleep(self.controls.first_byte_delay_ms / 1000)
        await self._send(start)

    async def _write(self, body: bytes, more: bool) -> None:
        assert self.controls is not None
        limit = self.controls.reset_after_bytes
        if limit is not None:
            room = limit - self._body_sent
            if len(body) > room:
                if room > 0:
                    await self._send({"type": "http.response.body", "body": body[:room], "more_body": True})
                raise FakeConnectionReset(f"injected connection reset after {limit} body bytes")
            self._body_sent += len(body)
        if more and not body:
            return
        await self._send({"type": "http.response.body", "body": body, "more_body": more})


# The FaultySend of the dialect request being handled, for Controls.set to find.
_FAULT_SLOT: ContextVar[FaultySend | None] = ContextVar("fake_upstream_fault_slot", default=None)


def _header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key.lower() == name:
            return value.lower()
    return b""


def _split_last_event(buffer: bytes) -> tuple[bytes, bytes]:
    """Split an SSE buffer into what precedes its last complete event, and the rest."""
    end = buffer.rfind(b"\n\n")
    if end == -1:
        return b"", buffer
    start = buffer.rfind(b"\n\n", 0, end)
    cut = 0 if start == -1 else start + 2
    return buffer[:cut], buffer[cut:]


def _corrupt_sse(body: bytes) -> bytes:
    """Cut every ``data:`` payload but ``[DONE]`` to its first half, keeping the framing."""
    lines = body.split(b"\n")
    for index, line in enumerate(lines):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload and payload != b"[DONE]":
            lines[index] = b"data: " + payload[: len(payload) // 2]
    return b"\n".join(lines)


async def send_stream(
    send: Send,
    receive: Receive,
    stats: Stats,
    headers: Headers,
    events: list[bytes],
    chunk_delay_ms: float,
    *,
    failing: bool,
) -> None:
    """Send a 200 stream of ``events`` (any dialect) and count how it ended in ``stats``."""
    stats.streams_started += 1
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    delay = chunk_delay_ms / 1000
    if delay <= 0:
        # One write per stream: same bytes on the wire, far fewer syscalls.
        await send({"type": "http.response.body", "body": b"".join(events)})
    else:
        # uvicorn silently drops sends after a disconnect; receive() reports it.
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            for index, event in enumerate(events):
                if index:
                    await asyncio.sleep(delay)
                if watcher.done():
                    stats.streams_aborted += 1
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
    if failing:
        stats.streams_failed += 1
    else:
        stats.streams_completed += 1


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class Plan:
    """Everything decided about one chat completion before any byte is sent."""

    __slots__ = (
        "controls",
        "created",
        "finish_reason",
        "id",
        "include_usage",
        "model",
        "prompt_tokens",
        "stream",
        "tool",
        "words",
    )

    def __init__(
        self,
        model: str,
        stream: bool,
        include_usage: bool,
        controls: Controls,
        words: tuple[str, ...] | list[str],
        tool: str | None,
        finish_reason: str,
        prompt_tokens: int,
    ) -> None:
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.controls = controls
        self.words = words
        self.tool = tool
        self.finish_reason = finish_reason
        self.prompt_tokens = prompt_tokens
        self.id = _random_id("chatcmpl-")
        self.created = int(time.time())

    def completion_tokens(self) -> int:
        if self.tool is not None:
            # Rough chars/4 estimate of the generated call, like prompt_tokens.
            return max(1, (len(self.tool) + len(TOOL_ARGUMENTS) + 3) // 4)
        return len(self.words)

    def completion_body(self) -> bytes:
        message: dict[str, Any]
        if self.tool is not None:
            message = {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": _random_id("call_"),
                        "type": "function",
                        "function": {"name": self.tool, "arguments": TOOL_ARGUMENTS},
                    }
                ],
            }
        else:
            message = {
                "role": "assistant",
                "content": " ".join(self.words),
                "refusal": None,
            }
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": self.finish_reason,
                    }
                ],
                "usage": _usage(self.prompt_tokens, self.completion_tokens()),
            }
        )

    def stream_events(self) -> list[bytes]:
        """Every ``data:`` chunk but the terminator, from shared byte templates."""
        head = b"".join(
            (
                b'data: {"id":"',
                self.id.encode(),
                b'","object":"chat.completion.chunk","created":',
                str(self.created).encode(),
                b',"model":',
                orjson.dumps(self.model),
                b',"system_fingerprint":',
                _FP_JSON,
                b',"choices":[{"index":0,"delta":',
            )
        )
        usage_null = b',"usage":null' if self.include_usage else b""
        tail = _CHOICE_OPEN_TAIL + usage_null + b"}\n\n"
        events = [head + _ROLE_DELTA + tail]
        if self.tool is not None:
            first = {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": _random_id("call_"),
                        "type": "function",
                        "function": {"name": self.tool, "arguments": ""},
                    }
                ]
            }
            events.append(head + orjson.dumps(first) + tail)
            step = TOOL_ARGUMENT_FRAGMENT_CHARS
            for offset in range(0, len(TOOL_ARGUMENTS), step):
                fragment = {
                    "tool_calls": [
                        {
                            "index": 0,
                            "function": {"arguments": TOOL_ARGUMENTS[offset : offset + step]},
                        }
                    ]
                }
                events.append(head + orjson.dumps(fragment) + tail)
        else:
            words = self.words
            last = len(words) - 1
            for index, word in enumerate(words):
                text = word if index == last else word + " "
                events.append(head + b'{"content":' + orjson.dumps(text) + b"}" + tail)
        events.append(
            head
            + b'{},"logprobs":null,"finish_reason":"'
            + self.finish_reason.encode()
            + b'"}]'
            + usage_null
            + b"}\n\n"
        )
        if self.include_usage:
            usage_chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [],
                "usage": _usage(self.prompt_tokens, self.completion_tokens()),
            }
            events.append(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
        return events


def build_app(default_latency_ms: float = 0) -> FakeUpstream:
    """A fresh app; ``default_latency_ms`` applies when a request sets no latency."""
    return FakeUpstream(default_latency_ms)


def _latency_from_env() -> float:
    return float(os.environ.get(LATENCY_ENV, "0") or 0)


# Reads the env var so multi-worker children (importing this by name) get --latency-ms.
app = build_app(_latency_from_env())


def serve(host: str, port: int, latency_ms: float = 0, workers: int = 1) -> None:
    """Bind, announce the address on stdout, then serve until interrupted."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        "access_log": False,
    }
    if workers == 1:
        config = uvicorn.Config(build_app(latency_ms), **options)
    else:
        # Worker processes are spawned and can only import the app by name.
        os.environ[LATENCY_ENV] = repr(float(latency_ms))
        config = uvicorn.Config("providers.fake_upstream:app", workers=workers, **options)
    # uvicorn.run() has no hook after binding, so bind here as it does internally, and
    # listen at once so the announced address accepts connections immediately.
    sock = config.bind_socket()
    sock.listen(config.backlog)
    bound_port = sock.getsockname()[1]
    display_host = f"[{host}]" if ":" in host else host
    print(f"fake upstream listening on http://{display_host}:{bound_port}", flush=True)
    try:
        if workers == 1:
            uvicorn.Server(config).run(sockets=[sock])
        else:
            Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m providers.fake_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="default delay before every answer",
    )
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.latency_ms, args.workers)


def _register_dialects() -> None:
    # On the first request, not at import: the dialect modules import this one.
    from providers.fake_wire import register_all

    if not _DIALECTS:
        register_all()


if __name__ == "__main__":
    # Run the canonical module, not this __main__ copy: the dialect modules
    # register their routes on ``providers.fake_upstream``.
    from providers.fake_upstream import main as canonical_main

    canonical_main()
