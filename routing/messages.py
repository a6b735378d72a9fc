"""``POST /v1/messages``: the Anthropic Messages API in front of every provider.

Anthropic SDK users point ``base_url`` at ModelMuxer and keep their code. The
request is checked the way Anthropic checks it (errors in Anthropic's shape),
translated into an OpenAI chat-completions request, and from there routed,
retried, billed and recorded exactly like ``/v1/chat/completions``; the
answer is translated back into an Anthropic ``message`` or event stream. Any
catalog chat model can answer, not only Claude. The key goes in ``x-api-key``
(what the SDK sends) or ``Authorization: Bearer``; ``anthropic-version`` and
``anthropic-beta`` are accepted and ignored.

What is translated:

- ``system`` (a string or text blocks) becomes one system message.
- user text, images (base64 as a ``data:`` URL, or a URL) and base64 PDF
  documents become content parts; ``tool_result`` blocks become ``tool``
  messages ahead of the turn's other content, their text blocks joined, and
  ``is_error`` as an ``Error: `` prefix, since OpenAI has no such flag.
- assistant text blocks are joined into the message content, ``tool_use``
  blocks become ``tool_calls`` with the input as a JSON string.
- ``tools`` (client tools), ``tool_choice`` (``any`` is ``required``, ``tool``
  a named function, ``disable_parallel_tool_use`` is
  ``parallel_tool_calls: false``), ``stop_sequences`` as ``stop``,
  ``max_tokens``, ``temperature``, ``top_p``, ``metadata.user_id`` as
  ``user``, ``stream``.
- back: text and ``tool_use`` blocks (arguments parsed into ``input``), the
  stop reason, and usage in Anthropic's terms (``input_tokens`` without the
  cache reads, which are ``cache_read_input_tokens``).

Dropped: ``top_k`` (no OpenAI counterpart; it only narrows sampling),
``cache_control`` and ``citations`` on blocks, document titles, and
``thinking``/``redacted_thinking`` blocks in earlier assistant turns (Anthropic
itself ignores them when thinking is off). A trailing assistant turn is passed
on as the last message: a prefill for Claude models, plain context for others.

Refused with a 400, because dropping them would change the answer: enabled
extended ``thinking``, server tools, documents other than base64 PDFs, images
inside ``tool_result``, more than 4 stop sequences (the OpenAI limit), and
fields this endpoint does not know.

The organization's PII policy and the input limits apply as on chat (the
message limit counts the client's turns); their refusals carry OpenAI's
``code`` (``pii_blocked``, ``too_many_messages``, ``context_length_exceeded``)
beside Anthropic's error ``type``.

Limits of the translation: the OpenAI answer does not say whether a stop
sequence ended it, so that is ``end_turn`` with ``stop_sequence: null``; a
stream's ``message_start`` carries an estimate of ``input_tokens`` (the
provider's count is only known at the end), and ``message_delta`` carries the
reported counts, which the SDKs take as the final ones.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from accounts.auth import KeyIdentity, authenticate
from billing.pricing import cost_usd
from billing.tokens import estimate_text_tokens
from billing.usage import usage_emit
from muxer_project.errors import APIError, invalid_api_key, invalid_request
from providers.adapters import ChatResult, Usage, adapter_for
from providers.catalog import CatalogModel

from .consumers import ChatCompletionsConsumer, Headers, OpenedStream, RoutedConsumer, _completion_chars, open_stream
from .limits import check_message_count
from .response_cache import AnswerAssembler
from .schema import ChatRequest, _json_object, parse_chat_request
from .selection import RouteDecision

FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "stream",
        "thinking",
    }
)
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
# The OpenAI limit; the request goes through OpenAI's validation after translation.
MAX_STOP_SEQUENCES = 4
# Anthropic accepts these in a conversation's history; they carry nothing another model could use.
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    # Our 503s are an open circuit or a provider rate limiting the gateway: the service is
    # overloaded, not the client over its limit. The status stays 503, which the SDKs retry.
    503: "overloaded_error",
    504: "timeout_error",
}


def stop_reason(finish_reason: Any) -> str:
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


# Refusals of the gateway's own that a client may need to tell apart carry OpenAI's ``code`` beside
# Anthropic's ``type``; the SDKs keep unknown fields in the error body.
GATEWAY_CODES = frozenset({"pii_blocked", "too_many_messages", "context_length_exceeded"})


def error_body(status: int, message: str, request_id: str, code: str | None = None) -> dict[str, Any]:
    error = {"type": error_type(status), "message": message}
    if code in GATEWAY_CODES:
        error["code"] = code
    return {"type": "error", "error": error, "request_id": request_id}


# --- the Anthropic request -> an OpenAI request --------------------------------------


def _invalid(message: str) -> APIError:
    return invalid_request(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _block_type(block: Any, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _invalid(f"{where}: Input should be an object with a 'type'.")
    kind: str = block["type"]
    return kind


def _text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{where}.text: Field required.")
    if not text:
        raise _invalid(f"{where}: text content blocks must be non-empty.")
    return text


def _unsupported_block(kind: str, where: str, role: str) -> APIError:
    return _invalid(f"{where}: '{kind}' blocks are not supported in {role} content here.")


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        source = {}
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise _invalid(f"{where}.source.media_type: Input should be one of {sorted(IMAGE_MEDIA_TYPES)}.")
        if not isinstance(data, str) or not data:
            raise _invalid(f"{where}.source.data: Field required.")
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise _invalid(f"{where}.source.url: Input should be an http(s) URL.")
        return {"type": "image_url", "image_url": {"url": url}}
    raise _invalid(f"{where}.source: images are taken as 'base64' or 'url' sources.")


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not (
        isinstance(source, dict) and source.get("type") == "base64" and source.get("media_type") == "application/pdf"
    ):
        raise _invalid(f"{where}.source: documents are taken as base64 PDFs (media_type 'application/pdf') only.")
    data = source.get("data")
    if not isinstance(data, str) or not data:
        raise _invalid(f"{where}.source.data: Field required.")
    title = block.get("title")
    filename = title if isinstance(title, str) and title else "document.pdf"
    return {"type": "file", "file": {"filename": filename, "file_data": f"data:application/pdf;base64,{data}"}}


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise _invalid(f"{where}.tool_use_id: Field required.")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts: list[str] = []
        for k, inner in enumerate(content):
            inner_where = f"{where}.content.{k}"
            kind = _block_type(inner, inner_where)
            if kind != "text":
                # OpenAI tool messages carry text only; dropping the image would change the answer.
                raise _invalid(f"{inner_where}: only text blocks are supported inside tool_result here, not '{kind}'.")
            texts.append(_text(inner, inner_where))
        text = "\n".join(texts)
    else:
        raise _invalid(f"{where}.content: Input should be a string or a list of blocks.")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _invalid(f"{where}.is_error: Input should be a valid boolean.")
    if is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _user_messages(content: list[Any], index: int) -> tuple[list[dict[str, Any]], list[str]]:
    """A user turn's blocks as OpenAI messages, and the tool_use ids its results answer."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"messages.{index}.content.{j}"
        kind = _block_type(block, where)
        if kind == "tool_result":
            if parts:
                raise _invalid(f"{where}: `tool_result` blocks must come first in a user message.")
            tool_messages.append(_tool_message(block, where))
        elif kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "image":
            parts.append(_image_part(block, where))
        elif kind == "document":
            parts.append(_document_part(block, where))
        else:
            raise _unsupported_block(kind, where, "user")
    messages = tool_messages
    if parts:
        messages = [*tool_messages, {"role": "user", "content": parts}]
    return messages, [message["tool_call_id"] for message in tool_messages]


def _assistant_message(content: list[Any], index: int) -> tuple[dict[str, Any] | None, list[str]]:
    """An assistant turn as an OpenAI message (None when nothing is left), and its tool_use ids."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"messages.{index}.content.{j}"
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
                raise _invalid(f"{where}: tool_use blocks need 'id' and 'name'.")
            if not isinstance(arguments, dict):
                raise _invalid(f"{where}.input: Input should be a valid dictionary.")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
                }
            )
        elif kind not in THINKING_BLOCKS:
            raise _unsupported_block(kind, where, "assistant")
    if not texts and not calls:
        return None, []
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message, [call["id"] for call in calls]


def _check_answers(index: int, pending: list[str], answered: list[str]) -> None:
    """OpenAI, like Anthropic, wants every tool call answered right after it, and only those."""
    for tool_use_id in answered:
        if tool_use_id not in pending:
            raise _invalid(
                f"messages.{index}: unexpected `tool_use_id` found in `tool_result` blocks: {tool_use_id}. "
                "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            )
    missing = [tool_use_id for tool_use_id in pending if tool_use_id not in answered]
    if missing:
        raise _invalid(
            f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
            "in the next message."
        )


def _messages(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        raise _invalid("messages: Field required.")
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages: Input should be a non-empty list.")
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    last = len(raw) - 1
    for index, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise _invalid(f"messages.{index}: Input should be a valid dictionary.")
        role, content = turn.get("role"), turn.get("content")
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'.")
        if not isinstance(content, str | list):
            raise _invalid(f"messages.{index}.content: Input should be a valid string or list.")
        if not content:
            if role == "assistant" and index == last:
                continue  # an empty prefill asks for nothing
            raise _invalid(
                f"messages.{index}: all messages must have non-empty content "
                "except for the optional final assistant message."
            )
        if role == "user":
            answered: list[str] = []
            if isinstance(content, str):
                messages.append({"role": "user", "content": content})
            else:
                translated, answered = _user_messages(content, index)
                messages.extend(translated)
            _check_answers(index, pending, answered)
            pending = []
        else:
            _check_answers(index, pending, [])
            if isinstance(content, str):
                messages.append({"role": "assistant", "content": content})
                pending = []
            else:
                message, pending = _assistant_message(content, index)
                if message is not None:
                    messages.append(message)
    return messages


def _system(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, list):
        raise _invalid("system: Input should be a valid string or list of text blocks.")
    texts: list[str] = []
    for j, block in enumerate(raw):
        where = f"system.{j}"
        if _block_type(block, where) != "text":
            raise _invalid(f"{where}: system blocks must be text blocks.")
        texts.append(_text(block, where))
    return "\n".join(texts) or None


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid("tools: Input should be a valid list.")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _invalid(f"{where}: Input should be a valid dictionary.")
        kind = tool.get("type", "custom")
        if kind != "custom":
            raise _invalid(f"{where}: server tools ('{kind}') are not supported here; define a client tool.")
        name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{where}.name: Field required.")
        if not isinstance(schema, dict):
            raise _invalid(f"{where}.input_schema: Field required.")
        if schema.get("type") != "object":
            raise _invalid(f"{where}.input_schema.type: Input should be 'object'.")
        if description is not None and not isinstance(description, str):
            raise _invalid(f"{where}.description: Input should be a valid string.")
        function: dict[str, Any] = {"name": name}
        if description:
            function["description"] = description
        function["parameters"] = schema
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any, tools: list[dict[str, Any]], openai: dict[str, Any]) -> None:
    if raw is None:
        return
    if not tools:
        raise _invalid("tool_choice: tool_choice may only be specified while providing tools.")
    if not isinstance(raw, dict) or raw.get("type") not in ("auto", "any", "none", "tool"):
        raise _invalid("tool_choice: Input should be an object whose 'type' is 'auto', 'any', 'tool' or 'none'.")
    kind = raw["type"]
    if kind == "tool":
        name = raw.get("name")
        if name not in {tool["function"]["name"] for tool in tools}:
            raise _invalid(f"tool_choice.name: Tool '{name}' not found in 'tools'.")
        openai["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        openai["tool_choice"] = TOOL_CHOICES[kind]
    disable_parallel = raw.get("disable_parallel_tool_use")
    if disable_parallel is not None:
        if kind == "none" or not isinstance(disable_parallel, bool):
            raise _invalid("tool_choice.disable_parallel_tool_use: Input should be a boolean, and not with 'none'.")
        if disable_parallel:
            openai["parallel_tool_calls"] = False


def _stop_sequences(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise _invalid("stop_sequences: Input should be a valid list of non-empty strings.")
    if len(raw) > MAX_STOP_SEQUENCES:
        raise _invalid(f"stop_sequences: at most {MAX_STOP_SEQUENCES} stop sequences are supported here.")
    return list(raw)


def _unit_number(payload: dict[str, Any], name: str) -> Any:
    value = payload.get(name)
    if value is not None and (not _is_number(value) or not 0 <= value <= 1):
        raise _invalid(f"{name}: Input should be a number between 0 and 1.")
    return value


def _check_thinking(raw: Any) -> None:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "disabled":
        return
    if kind in ("enabled", "adaptive"):
        raise _invalid(
            "thinking: extended thinking is not supported by ModelMuxer's Messages API; "
            "leave 'thinking' out or set it to {'type': 'disabled'}."
        )
    raise _invalid("thinking: Input should be an object whose 'type' is 'enabled', 'adaptive' or 'disabled'.")


def translate_request(payload: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat-completions request for an Anthropic Messages request; raise a 400 if it is invalid."""
    unknown = sorted(payload.keys() - FIELDS)
    if unknown:
        raise _invalid(f"{unknown[0]}: Extra inputs are not permitted.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model: Field required.")
    max_tokens = payload.get("max_tokens")
    if max_tokens is None:
        raise _invalid("max_tokens: Field required.")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _invalid("max_tokens: Input should be an integer greater than or equal to 1.")
    if payload.get("thinking") is not None:
        _check_thinking(payload["thinking"])

    messages = _messages(payload.get("messages"))
    system = _system(payload.get("system"))
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    openai: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    tools = _tools(payload.get("tools"))
    if tools:
        openai["tools"] = tools
    _tool_choice(payload.get("tool_choice"), tools, openai)
    stop = _stop_sequences(payload.get("stop_sequences"))
    if stop:
        openai["stop"] = stop
    for name in ("temperature", "top_p"):
        value = _unit_number(payload, name)
        if value is not None:
            openai[name] = value
    top_k = payload.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise _invalid("top_k: Input should be an integer greater than or equal to 0.")
    metadata = payload.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or metadata.keys() - {"user_id"}:
            raise _invalid("metadata: Input should be an object with only 'user_id'.")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise _invalid("metadata.user_id: Input should be a valid string.")
        if user:
            openai["user"] = user
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream: Input should be a valid boolean.")
    if stream:
        openai["stream"] = True
    return openai


def parse_messages_request(body: bytes) -> ChatRequest:
    """Validate an Anthropic Messages body and return it as the chat request it translates to."""
    payload = _json_object(body)
    messages = payload.get("messages")
    if isinstance(messages, list):
        # The client's turns, not the translation's (which adds the system prompt and splits tool results).
        check_message_count(len(messages))
    return parse_chat_request(orjson.dumps(translate_request(payload)))


# --- an OpenAI answer -> an Anthropic message ----------------------------------------


def message_id(upstream_id: Any) -> str:
    """A ``msg_`` id that still names the upstream answer, for tracing."""
    if isinstance(upstream_id, str) and upstream_id:
        suffix = upstream_id.removeprefix("chatcmpl-")
        return suffix if suffix.startswith("msg_") else f"msg_{suffix}"
    return f"msg_{uuid.uuid4().hex}"


def anthropic_usage(usage: Usage) -> dict[str, int]:
    # Usage.input_tokens includes cache reads and writes (see the Anthropic adapter); Anthropic's excludes them.
    # Cache writes are not told apart from other input on the way in, so they count as input here.
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    return {
        "input_tokens": usage.input_tokens - cached,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _tool_input(arguments: Any) -> dict[str, Any]:
    try:
        parsed = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        parsed = None
    # Anthropic's input is always an object; arguments cut short by max_tokens are not one.
    return parsed if isinstance(parsed, dict) else {}


def _reply_text(reply: dict[str, Any]) -> str:
    content = reply.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    if isinstance(content, str) and content:
        return content
    refusal = reply.get("refusal")
    return refusal if isinstance(refusal, str) else ""


def message_from_completion(body: dict[str, Any], usage: Usage, *, model_name: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``message``, with ``usage`` as the counts."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = _reply_text(reply)
    if text:
        content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    model = body.get("model")
    return {
        "id": message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model if isinstance(model, str) and model else model_name,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


def sse_event(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class MessageStreamEncoder:
    """OpenAI ``chat.completion.chunk`` objects in, Anthropic stream events out.

    Each text run and each tool call is one content block, opened when it
    begins and closed when the next begins or the message ends.
    """

    def __init__(self, *, model_name: str, input_tokens: int) -> None:
        self.model_name = model_name
        self.input_tokens = input_tokens
        self.started = False
        self.blocks = 0
        self.open_block: tuple[str, int] | None = None  # ("text" | "tool_use", index)
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> block index
        self.stop_reason = "end_turn"

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self._message_start(chunk)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                out += self._text(text)
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self.stop_reason = stop_reason(choice["finish_reason"])
        return out

    def finish(self, usage: Usage) -> bytes:
        """Close the last block and report why the message ended and what it cost in tokens."""
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        return self._close() + sse_event({"type": "message_delta", "delta": delta, "usage": anthropic_usage(usage)})

    @staticmethod
    def stop() -> bytes:
        return sse_event({"type": "message_stop"})

    @staticmethod
    def error(message: str) -> bytes:
        return sse_event({"type": "error", "error": {"type": "api_error", "message": message}})

    def _message_start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        model = chunk.get("model")
        message: dict[str, Any] = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": model if isinstance(model, str) and model else self.model_name,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage(Usage(input_tokens=self.input_tokens)),
        }
        return sse_event({"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self.open_block is None:
            return b""
        index = self.open_block[1]
        self.open_block = None
        return sse_event({"type": "content_block_stop", "index": index})

    def _start(self, kind: str, block: dict[str, Any]) -> tuple[int, bytes]:
        out = self._close()
        index = self.blocks
        self.blocks += 1
        self.open_block = (kind, index)
        return index, out + sse_event({"type": "content_block_start", "index": index, "content_block": block})

    def _text(self, text: str) -> bytes:
        out = b""
        if self.open_block is not None and self.open_block[0] == "text":
            index = self.open_block[1]
        else:
            index, out = self._start("text", {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return out + sse_event({"type": "content_block_delta", "index": index, "delta": delta})

    def _tool_call(self, call: Any) -> bytes:
        if not isinstance(call, dict):
            return b""
        position = call.get("index", 0)
        function = call.get("function") or {}
        out = b""
        index = self.tool_blocks.get(position)
        if index is None:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                "name": function.get("name") or "",
                "input": {},
            }
            index, out = self._start("tool_use", block)
            self.tool_blocks[position] = index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # A fragment for an earlier, already closed call is still sent to its block;
            # providers stream calls one after another, so this does not happen in practice.
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out += sse_event({"type": "content_block_delta", "index": index, "delta": delta})
        return out


# --- the endpoint ----------------------------------------------------------------------


class MessagesConsumer(RoutedConsumer):
    """``POST /v1/messages``, streamed and not; routed, retried and billed like chat."""

    # This endpoint answers in Anthropic's format without a cascade: the cascade's first step serves,
    # backed by its fallbacks. Chat completions runs the whole cascade.
    runs_cascades = False
    cascade_note = "; first step only on /v1/messages"
    endpoint = "messages"

    async def handle(self, body: bytes) -> None:
        identity = self.identity = await authenticate(self._authorization())
        request = parse_messages_request(body)
        if identity.request_log:
            self.client_body = body
        # Not answered from the response cache (chat completions only): this endpoint goes straight to its route.
        route = await self.admit_and_route(identity, request)
        try:
            if request.stream:
                await self._stream(identity, request, route)
            else:
                await self._complete(identity, request, route)
        finally:
            await self.settle_budget()

    def _authorization(self) -> str:
        """The key as an Authorization header value: the SDKs send ``x-api-key``; Bearer works too."""
        key = (self.header(b"x-api-key") or "").strip()
        if key:
            return f"Bearer {key}"
        authorization = self.header(b"authorization")
        if not authorization:
            raise invalid_api_key(
                "You didn't provide an API key. Send it in the x-api-key header "
                "(or as 'Authorization: Bearer mm_live_...')."
            )
        return authorization

    async def send_error(self, exc: APIError) -> None:
        self.error_code = exc.code or ""
        headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        headers.append((b"request-id", self.request_id.encode()))
        body = error_body(exc.status, exc.message, self.request_id, exc.code)
        await self.send_json(exc.status, orjson.dumps(body), headers)

    def _headers(self, model: CatalogModel, route: RouteDecision) -> Headers:
        # `request-id` is where the Anthropic SDKs look for `_request_id`.
        return [*self._route_headers(model, route), (b"request-id", self.request_id.encode())]

    async def _complete(self, identity: KeyIdentity, request: ChatRequest, route: RouteDecision) -> None:
        async def start(model: CatalogModel) -> ChatResult:
            adapter = adapter_for(model)
            assert adapter is not None
            return await adapter.chat(model, self.payload_for(request, model))

        upstream_started = time.perf_counter()
        model, result = await self._call_route(identity, route, start, stream=False)
        upstream_ms = (time.perf_counter() - upstream_started) * 1000
        usage = result.usage
        if usage.estimated:
            usage.input_tokens = request.prompt_tokens
            usage.output_tokens = estimate_text_tokens(_completion_chars(result.body))
        event = self._usage_event(identity, model, usage, status="ok", http_status=200, stream=False)
        self.restore_answer(result.body)
        message = message_from_completion(result.body, usage, model_name=model.name)
        headers = self._headers(model, route)
        headers.append((b"x-muxer-cost-usd", event["cost_usd"].encode()))
        headers.append((b"x-muxer-overhead-ms", f"{self.elapsed_ms() - upstream_ms:.1f}".encode()))
        # Recorded before the answer goes out: a worker killed in between loses an answer, never its charge.
        self.log_bodies(event, message)
        await usage_emit(event)
        await self.send_json(200, orjson.dumps(message), headers)

    async def _stream(self, identity: KeyIdentity, request: ChatRequest, route: RouteDecision) -> None:
        async def start(model: CatalogModel) -> OpenedStream:
            adapter = adapter_for(model)
            assert adapter is not None
            return await open_stream(adapter.stream(model, self.payload_for(request, model)))

        model, opened = await self._call_route(identity, route, start, stream=True)
        stream, chunks = opened.stream, opened.chunks
        progress = stream.progress
        encoder = MessageStreamEncoder(model_name=model.name, input_tokens=request.prompt_tokens)
        restoring = self.answer_restorer()
        # The whole answer for the request log, in this endpoint's format, when the organization keeps one.
        assembler = AnswerAssembler() if self.client_body is not None else None
        answer: dict[str, Any] | None = None
        status, http_status, error_code = "ok", 200, ""
        try:
            await self.start_response(
                200,
                b"text/event-stream",
                [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"), *self._headers(model, route)],
            )
            failure: dict[str, Any] | None = None
            async for chunk in chunks:
                if "error" in chunk and "choices" not in chunk:
                    error = progress.error or chunk["error"]
                    failure = error if isinstance(error, dict) else {"message": str(error)}
                    break
                if restoring is not None:
                    restoring.feed(chunk)
                if assembler is not None:
                    assembler.feed(chunk)
                events = encoder.feed(chunk)
                if events:
                    await self.send_body(events, more=True)
            failure = failure or progress.error
            if failure is not None:
                status, http_status = "error", 502
                error_code = str(failure.get("code") or "upstream_error")
                await self.send_body(encoder.error(str(failure.get("message") or "The provider failed mid-stream.")))
            else:
                usage = ChatCompletionsConsumer._settled_usage(request, progress.usage, progress.completion_chars)
                if assembler is not None:
                    whole = assembler.completion(model=model.name, usage=None)
                    answer = message_from_completion(whole, usage, model_name=model.name)
                # An SSE comment, as on chat: clients ignore it, but a stream's cost is only known here.
                cost = b": x-muxer-cost-usd=" + format(cost_usd(model, usage), "f").encode() + b"\n\n"
                await self.send_body(encoder.finish(usage) + cost + encoder.stop())
        except asyncio.CancelledError:
            status, http_status, error_code = "client_disconnected", 499, "client_disconnected"
            raise
        finally:
            await chunks.aclose()
            await stream.close()
            usage = ChatCompletionsConsumer._settled_usage(request, progress.usage, progress.completion_chars)
            event = self._usage_event(
                identity, model, usage, status=status, http_status=http_status, stream=True, error_code=error_code
            )
            self.log_bodies(event, answer if status == "ok" else None)
            await usage_emit(event)
