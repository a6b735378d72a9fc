"""The fake upstream's Anthropic dialect: ``POST /anthropic/v1/messages``.

It answers like the Messages API: a ``message`` object, or named-event SSE
(``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``
with ``text_delta``/``input_json_delta``, ``content_block_stop``,
``message_delta`` with the stop reason and the final ``output_tokens``,
``message_stop``). It checks what the real API checks: ``x-api-key``,
``anthropic-version``, the required ``max_tokens``, roles, block types, no
unknown top-level fields, and that every ``tool_use`` is answered by a
``tool_result`` at the start of the next user turn; mistakes get Anthropic's
error body ``{"type": "error", "error": {"type", "message"}, "request_id"}``.

The reply follows the OpenAI fake's rules: ``"Fake reply to: "`` + the first
40 characters of the last user turn's text (its text blocks joined by spaces,
directives removed; the last user turn is the last one that is not only tool
results), one word per output token, ``input_tokens`` = ceil(characters of
the system prompt and of every message's text and tool results / 4), a call
to the first (or forced) tool with ``{"city": "Paris"}`` when the last turn
is the user's and mentions ``weather`` (or ``tool_choice`` is ``any`` or
names a tool). ``max_tokens`` truncates (``stop_reason: "max_tokens"``); a
stop sequence found in the reply cuts it there (``"stop_sequence"``). Cache
counts are always 0.

The same ``[fake ...]`` directives and ``x-fake-*`` headers apply, with
Anthropic's own errors: ``status=529`` is ``overloaded_error``, 429 is
``rate_limit_error`` (``retry_after`` sets ``retry-after``), and
``fail_after_chunks=N`` sends N events, then ``event: error`` with an
``overloaded_error``, and ends.
"""

from __future__ import annotations

import asyncio
import re
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

PREFIX = "/anthropic/v1"
MESSAGES_PATH = f"{PREFIX}/messages"
VERSIONS = frozenset({"2023-06-01", "2023-01-01"})
REQUEST_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "service_tier",
    }
)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"})
ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
TOOL_CHOICES = frozenset({"auto", "any", "none", "tool"})

_JSON: Headers = [(b"content-type", b"application/json")]
_RATELIMIT_HEADERS: Headers = [
    (b"anthropic-ratelimit-requests-limit", b"4000"),
    (b"anthropic-ratelimit-requests-remaining", b"3999"),
    (b"anthropic-ratelimit-requests-reset", b"2026-01-01T00:00:00Z"),
    (b"anthropic-ratelimit-tokens-limit", b"400000"),
    (b"anthropic-ratelimit-tokens-remaining", b"399000"),
    (b"anthropic-ratelimit-tokens-reset", b"2026-01-01T00:00:00Z"),
]
_SSE: Headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
TOOL_INPUT = orjson.loads(TOOL_ARGUMENTS)
_PIECES = re.compile(r"\s*\S+\s*")


class AnthropicError(Exception):
    """A request the real API would refuse, with its status and error type."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def _invalid(message: str) -> AnthropicError:
    return AnthropicError(400, "invalid_request_error", message)


def error_body(kind: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})


INJECTED_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Injected fake bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: (
        "billing_error",
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
    ),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization (org-fake) of 4,000 requests per minute.",
    ),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


def injected_error(status: int, model: str, retry_after: str | None) -> tuple[str, str, Headers]:
    kind, message = INJECTED_ERRORS.get(status, ("", ""))
    if not kind:
        kind = "api_error" if status >= 500 else "invalid_request_error"
        message = f"Injected fake {'upstream' if status >= 500 else 'client'} error (HTTP {status})."
    extra: Headers = []
    if status == 429:
        extra.append((b"anthropic-ratelimit-requests-remaining", b"0"))
    if retry_after is not None:
        extra.append((b"retry-after", retry_after.encode()))
    return kind, message.format(model=model), extra


# --- request checks ---------------------------------------------------------------


def _text_of(blocks: list[dict[str, Any]]) -> str:
    return " ".join(block["text"] for block in blocks if block.get("type") == "text")


def _check_block(block: Any, where: str, allowed: frozenset[str]) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _invalid(f"{where}: Input should be a valid dictionary or object to extract fields from")
    kind = block["type"]
    if kind not in allowed:
        raise _invalid(f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise _invalid(f"{where}.text: Field required")
        if not block["text"]:
            raise _invalid(f"{where}: text content blocks must be non-empty")
    elif kind in ("image", "document"):
        source = block.get("source")
        if not isinstance(source, dict):
            raise _invalid(f"{where}.source: Field required")
        if source.get("type") == "base64":
            media_type = source.get("media_type")
            valid = IMAGE_TYPES if kind == "image" else frozenset({"application/pdf"})
            if media_type not in valid:
                raise _invalid(f"{where}.source.base64.media_type: Input should be one of {sorted(valid)}")
            if not isinstance(source.get("data"), str) or not source["data"]:
                raise _invalid(f"{where}.source.base64.data: Field required")
        elif source.get("type") == "url":
            if not isinstance(source.get("url"), str):
                raise _invalid(f"{where}.source.url.url: Field required")
        else:
            raise _invalid(f"{where}.source: Input tag '{source.get('type')}' does not match any of the expected tags")
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise _invalid(f"{where}: tool_use blocks need 'id' and 'name'")
        if not isinstance(block.get("input"), dict):
            raise _invalid(f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise _invalid(f"{where}.tool_use_id: Field required")
        content = block.get("content")
        if isinstance(content, list):
            for k, inner in enumerate(content):
                _check_block(inner, f"{where}.content.{k}", frozenset({"text", "image", "document"}))
        elif content is not None and not isinstance(content, str):
            raise _invalid(f"{where}.content: Input should be a valid string or list")


def _blocks(message: Any, index: int) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(message, dict):
        raise _invalid(f"messages.{index}: Input should be a valid dictionary")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}] if content else []
    elif isinstance(content, list):
        allowed = USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS
        for j, block in enumerate(content):
            _check_block(block, f"messages.{index}.content.{j}", allowed)
        blocks = content
    else:
        raise _invalid(f"messages.{index}.content: Input should be a valid string or list")
    return role, blocks


def _check_tool_pairing(turns: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Each tool_use is answered by a tool_result leading the next (user) turn, and only those."""
    previous_calls: set[str] = set()
    for index, (role, blocks) in enumerate(turns):
        if role == "user":
            results: set[str] = set()
            leading = True
            for j, block in enumerate(blocks):
                if block["type"] != "tool_result":
                    leading = False
                    continue
                if not leading:
                    raise _invalid(
                        f"messages.{index}.content.{j}: `tool_result` blocks must come first in a user message."
                    )
                if block["tool_use_id"] not in previous_calls:
                    raise _invalid(
                        f"messages.{index}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block['tool_use_id']}. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message."
                    )
                results.add(block["tool_use_id"])
            missing = previous_calls - results
            if missing:
                raise _invalid(
                    f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(sorted(missing))}. Each `tool_use` block must have a corresponding `tool_result` "
                    "block in the next message."
                )
            previous_calls = set()
        else:
            if previous_calls:
                raise _invalid(
                    f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(sorted(previous_calls))}."
                )
            previous_calls = {block["id"] for block in blocks if block["type"] == "tool_use"}


def _system_text(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        for j, block in enumerate(system):
            _check_block(block, f"system.{j}", frozenset({"text"}))
        return _text_of(system)
    raise _invalid("system: Input should be a valid string or list")


def _check_number(data: dict[str, Any], name: str, high: float) -> None:
    value = data.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _invalid(f"{name}: Input should be a valid number")
    if not 0 <= value <= high:
        raise _invalid(f"{name}: Input should be less than or equal to {high:g} and greater than or equal to 0")


def _tool_names(data: dict[str, Any]) -> list[str]:
    tools = data.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _invalid("tools: Input should be a valid list")
    names: list[str] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _invalid(f"tools.{i}.name: Field required")
        if "type" not in tool or tool["type"] == "custom":
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise _invalid(f"tools.{i}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise _invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        names.append(tool["name"])
    return names


def _tool_choice(data: dict[str, Any], names: list[str]) -> dict[str, Any] | None:
    choice = data.get("tool_choice")
    if choice is None:
        return None
    if not names:
        raise _invalid("tool_choice: tool_choice may only be specified while providing tools.")
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
        raise _invalid("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'")
    if choice["type"] == "tool" and choice.get("name") not in names:
        raise _invalid(f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in 'tools'.")
    if "disable_parallel_tool_use" in choice:
        if choice["type"] == "none":
            raise _invalid("tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted")
        if not isinstance(choice["disable_parallel_tool_use"], bool):
            raise _invalid("tool_choice.disable_parallel_tool_use: Input should be a valid boolean")
    return choice


def _stop_sequences(data: dict[str, Any]) -> list[str]:
    stops = data.get("stop_sequences")
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _invalid("stop_sequences: Input should be a valid list of non-empty strings")
    return stops


# --- the plan -------------------------------------------------------------------


class MessagePlan:
    """Everything decided about one answer before any byte is sent."""

    def __init__(
        self,
        *,
        model: str,
        stream: bool,
        controls: Controls,
        text: str,
        tool: str | None,
        stop_reason: str,
        stop_sequence: str | None,
        input_tokens: int,
    ) -> None:
        self.model = model
        self.stream = stream
        self.controls = controls
        self.text = text
        self.tool = tool
        self.stop_reason = stop_reason
        self.stop_sequence = stop_sequence
        self.input_tokens = input_tokens
        self.id = _random_id("msg_")
        self.tool_id = _random_id("toolu_")

    @property
    def output_tokens(self) -> int:
        if self.tool is not None:
            # The OpenAI fake's rough chars/4 estimate of the generated call.
            return max(1, (len(self.tool) + len(TOOL_ARGUMENTS) + 3) // 4)
        return len(self.text.split())

    def content(self) -> list[dict[str, Any]]:
        if self.tool is not None:
            return [{"type": "tool_use", "id": self.tool_id, "name": self.tool, "input": TOOL_INPUT}]
        return [{"type": "text", "text": self.text}]

    def message_body(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": self.content(),
                "stop_reason": self.stop_reason,
                "stop_sequence": self.stop_sequence,
                "usage": {
                    "input_tokens": self.input_tokens,
                    "output_tokens": self.output_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                    "service_tier": "standard",
                },
            }
        )

    def stream_events(self) -> list[bytes]:
        start = {
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": self.input_tokens,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        }
        events: list[dict[str, Any]] = [start]
        deltas: list[dict[str, Any]]
        if self.tool is not None:
            block: dict[str, Any] = {"type": "tool_use", "id": self.tool_id, "name": self.tool, "input": {}}
            step = TOOL_ARGUMENT_FRAGMENT_CHARS
            # Like the real API, the first fragment is empty.
            fragments = ["", *(TOOL_ARGUMENTS[i : i + step] for i in range(0, len(TOOL_ARGUMENTS), step))]
            deltas = [{"type": "input_json_delta", "partial_json": fragment} for fragment in fragments]
        else:
            block = {"type": "text", "text": ""}
            # One delta per word with its trailing space, so the deltas add up to the text exactly.
            deltas = [{"type": "text_delta", "text": piece} for piece in _PIECES.findall(self.text)]
        events.append({"type": "content_block_start", "index": 0, "content_block": block})
        events.append({"type": "ping"})
        events.extend({"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas)
        events.append({"type": "content_block_stop", "index": 0})
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                "usage": {"output_tokens": self.output_tokens},
            }
        )
        events.append({"type": "message_stop"})
        return [sse(event) for event in events]


def sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _reply(text: str, words_directive: int | None) -> str:
    if words_directive is not None:
        return " ".join(_lorem(words_directive))
    return " ".join((REPLY_PREFIX + text.strip()[:SNIPPET_CHARS]).split())


def plan_message(data: Any, controls: Controls) -> MessagePlan:
    if not isinstance(data, dict):
        raise _invalid("Input should be a valid dictionary")
    extra = sorted(data.keys() - REQUEST_FIELDS)
    if extra:
        raise _invalid(f"{extra[0]}: Extra inputs are not permitted")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: Field required")
    limit = data.get("max_tokens")
    if limit is None:
        raise _invalid("max_tokens: Field required")
    if type(limit) is not int or limit < 1:
        raise _invalid("max_tokens: Input should be greater than or equal to 1")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise _invalid("messages: Field required")
    if not messages:
        raise _invalid("messages: at least one message is required")
    turns = [_blocks(message, index) for index, message in enumerate(messages)]
    for index, (role, blocks) in enumerate(turns):
        if not blocks and not (role == "assistant" and index == len(turns) - 1):
            raise _invalid(
                f"messages.{index}: all messages must have non-empty content except for the optional final "
                "assistant message"
            )
    _check_tool_pairing(turns)
    total_chars = len(_system_text(data.get("system")))
    for _, blocks in turns:
        total_chars += len(_text_of(blocks))
        for block in blocks:
            if block["type"] == "tool_result":
                content = block.get("content")
                total_chars += len(content) if isinstance(content, str) else len(_text_of(content or []))
    _check_number(data, "temperature", 1)
    _check_number(data, "top_p", 1)
    stream = data.get("stream", False)
    if type(stream) is not bool:
        raise _invalid("stream: Input should be a valid boolean")
    metadata = data.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise _invalid("metadata: only 'user_id' is permitted")
    names = _tool_names(data)
    choice = _tool_choice(data, names)
    stops = _stop_sequences(data)

    last_role, last_blocks = turns[-1]
    last_is_user = last_role == "user" and any(block["type"] != "tool_result" for block in last_blocks)
    text = ""
    for role, blocks in reversed(turns):
        if role == "user" and any(block["type"] != "tool_result" for block in blocks):
            text = _text_of(blocks)
            break
    if DIRECTIVE_OPEN in text:
        text, controls = _apply_directives(text, controls, model)

    tool: str | None = None
    kind = choice["type"] if choice else "auto"
    if names and kind != "none":
        if kind == "tool":
            tool = choice["name"] if choice else None
        elif last_is_user and (kind == "any" or "weather" in text.lower()):
            tool = names[0]
    reply = ""
    stop_reason = "tool_use" if tool is not None else "end_turn"
    stop_sequence: str | None = None
    if tool is None:
        reply = _reply(text, controls.words)
        hits = [(reply.find(s), s) for s in stops if s in reply]
        if hits:
            position, stop_sequence = min(hits)
            reply = reply[:position]
            stop_reason = "stop_sequence"
        words = reply.split()
        if len(words) > limit:
            reply = " ".join(words[:limit])
            stop_reason, stop_sequence = "max_tokens", None
    return MessagePlan(
        model=model,
        stream=stream,
        controls=controls,
        text=reply,
        tool=tool,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        input_tokens=max(1, (total_chars + 3) // 4),
    )


# --- the route ------------------------------------------------------------------


async def handle(app: FakeUpstream, scope: Scope, receive: Receive, send: Send) -> None:
    request_id = _random_id("req_", 128)
    if scope["path"] != MESSAGES_PATH:
        body = error_body("not_found_error", "Not Found", request_id)
        await _send_json(send, 404, body, [*_JSON, (b"request-id", request_id.encode())])
        return
    if scope["method"] != "POST":
        body = error_body("invalid_request_error", "Method Not Allowed", request_id)
        await _send_json(send, 405, body, [*_JSON, (b"request-id", request_id.encode()), (b"allow", b"POST")])
        return
    await _messages(app, scope, receive, send, request_id)


async def _messages(app: FakeUpstream, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
    stats = app.stats
    stats.requests += 1
    raw_body = await _read_body(receive)
    headers: Headers = scope["headers"]
    stats.last_request = (scope["method"], scope["path"], headers, raw_body)
    base: Headers = [*_JSON, (b"request-id", request_id.encode())]

    async def refuse(status: int, kind: str, message: str, extra: Headers | None = None) -> None:
        stats.errors += 1
        await _send_json(send, status, error_body(kind, message, request_id), [*base, *(extra or ())])

    api_key = version = b""
    controls = app.defaults
    try:
        for name, value in headers:
            if name == b"x-api-key":
                api_key = value
            elif name == b"anthropic-version":
                version = value
            elif name.startswith(b"x-fake-"):
                key = _HEADER_KEYS.get(name)
                if key is None:
                    raise _invalid(f"Unknown fake header {name.decode('latin-1')!r}.")
                if controls is app.defaults:
                    controls = controls.copy()
                controls.set(key, value.decode("latin-1").strip(), "header")
        if not api_key.strip():
            raise AnthropicError(401, "authentication_error", "x-api-key header is required")
        if not version:
            raise _invalid("anthropic-version: header is required")
        if version.decode("latin-1") not in VERSIONS:
            raise _invalid(f'anthropic-version: "{version.decode("latin-1")}" is not a valid version')
        try:
            data = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            raise _invalid("There was an error parsing the body of your request as JSON.") from None
        plan = plan_message(data, controls)
    except AnthropicError as exc:
        await refuse(exc.status, exc.kind, exc.message)
        return
    except BadRequestError as exc:
        await refuse(400, "invalid_request_error", exc.message)
        return

    controls = plan.controls
    if controls.latency_ms > 0:
        await asyncio.sleep(controls.latency_ms / 1000)
    if controls.status is not None:
        kind, message, extra = injected_error(controls.status, plan.model, controls.retry_after)
        await refuse(controls.status, kind, message, extra)
        return
    if plan.stream:
        await _stream(app, plan, receive, send, request_id)
        return
    stats.completed += 1
    await _send_json(send, 200, plan.message_body(), [*base, *_RATELIMIT_HEADERS])


async def _stream(app: FakeUpstream, plan: MessagePlan, receive: Receive, send: Send, request_id: str) -> None:
    stats = app.stats
    controls = plan.controls
    events = plan.stream_events()
    failing = controls.fail_after_chunks is not None
    if failing:
        events = events[: controls.fail_after_chunks]
        events.append(sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    headers = [*_SSE, (b"request-id", request_id.encode()), *_RATELIMIT_HEADERS]
    await send_stream(send, receive, stats, headers, events, controls.chunk_delay_ms, failing=failing)


def register() -> None:
    """Serve ``/anthropic/v1/messages`` from the fake upstream."""
    register_dialect(PREFIX, handle)
