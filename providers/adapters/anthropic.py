"""The Anthropic Messages API behind the OpenAI chat-completions interface.

Requests go to ``POST {base_url}/messages`` with ``x-api-key`` and
``anthropic-version: 2023-06-01``. What is translated:

- ``system``/``developer`` messages become the top-level ``system`` (Anthropic
  has no system role in ``messages``); the other turns keep their order, with
  consecutive same-role turns merged, as Anthropic itself would merge them.
- content parts: text; ``image_url`` (``data:`` URLs as a base64 source,
  http(s) URLs as a url source); PDF ``file`` parts with ``file_data`` as a
  ``document``. Empty text is dropped, because Anthropic rejects empty text
  blocks.
- assistant ``tool_calls`` become ``tool_use`` blocks (the JSON-string
  arguments parsed into ``input``); ``tool`` messages become ``tool_result``
  blocks at the start of the following user turn.
- ``tools``, ``tool_choice`` (``required`` is ``any``, a named function is
  ``{"type": "tool"}``), ``parallel_tool_calls: false`` as
  ``disable_parallel_tool_use``; ``stop`` as ``stop_sequences``; ``top_p``;
  ``user`` (or ``safety_identifier``) as ``metadata.user_id``.
- ``max_tokens`` is required by Anthropic: the request's
  ``max_completion_tokens`` or ``max_tokens``, else the model's maximum output.
- ``temperature``: OpenAI's range is 0-2, Anthropic's 0-1 and it rejects more.
  Values above 1 are sent as 1 rather than halved: both APIs default to 1 and
  clients tune values like 0.2 or 0.7 with the same intent on either, so a
  rescale would change every request, while the cap only affects values that
  already ask for the most random sampling, which 1 is on Anthropic.
- JSON mode: ``json_schema`` becomes ``output_config.format``; ``json_object``
  (which Anthropic lacks: its schemas must close every object) forces a call
  to a synthetic tool whose input is any object, and that input is returned
  as the message content.

Dropped, because they only tune sampling or are OpenAI-side features:
``seed``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``,
``reasoning_effort``, ``verbosity``, ``service_tier``, ``store``,
``metadata``, ``prediction``, ``prompt_cache_key``, ``detail`` on images,
``strict`` on tools. Refused with a 400, because dropping them would change
what the client gets: ``n`` > 1, ``logprobs``, audio in or out, web search,
the deprecated ``functions``/``function_call`` and ``function`` role (no ids
to pair calls with results), files by id, and ``json_object`` together with
tools.

Answers come back as OpenAI ``chat.completion`` objects and chunks. Anthropic's
``input_tokens`` excludes cache reads and writes, so ``prompt_tokens`` adds
them back; cache reads are the cached input tokens.
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
    ProviderError,
    StreamProgress,
    Usage,
    error_from_exception,
    provider_post,
)

API_VERSION = "2023-06-01"
# The synthetic tool that stands in for OpenAI's json_object mode.
JSON_TOOL = "json_object"
JSON_TOOL_DESCRIPTION = "Give your whole reply as this tool's input: one JSON object."
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # A server tool paused the turn; no client-visible tool call is pending.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


def _invalid(message: str) -> ProviderError:
    return ProviderError(
        message, status=400, retryable=False, code="invalid_request_error", type="invalid_request_error"
    )


# --- OpenAI request -> Anthropic request ----------------------------------------


def _refuse_unsupported(request: dict[str, Any]) -> None:
    n = request.get("n")
    if n is not None and n != 1:
        raise _invalid("Anthropic models return a single choice; 'n' must be 1.")
    if request.get("logprobs"):
        raise _invalid("Anthropic models do not return log probabilities; 'logprobs' is not supported.")
    if request.get("functions") is not None or request.get("function_call") is not None:
        raise _invalid("The deprecated 'functions' and 'function_call' are not supported here; use 'tools'.")
    modalities = request.get("modalities")
    if request.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise _invalid("Anthropic models do not produce audio.")
    if request.get("web_search_options") is not None:
        raise _invalid("'web_search_options' is not supported for Anthropic models.")


def _image_block(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        params = header.split(";")
        if not comma or len(params) < 2 or params[-1] != "base64" or not params[0]:
            raise _invalid(f"'{param}' must be a base64 data URL (data:image/png;base64,...) or an http(s) URL.")
        return {"type": "image", "source": {"type": "base64", "media_type": params[0], "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid(f"'{param}' must be a base64 data URL or an http(s) URL.")


def _document_block(file: Any, param: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str):
        raise _invalid(f"'{param}': Anthropic models take files as inline 'file_data', not by 'file_id'.")
    header, comma, data = data_url.removeprefix("data:").partition(",")
    if not comma or header != "application/pdf;base64":
        raise _invalid(f"'{param}': Anthropic models take PDF files (data:application/pdf;base64,...).")
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}


def _content_blocks(content: Any, index: int, *, media: bool) -> list[dict[str, Any]]:
    """A message's content as Anthropic blocks; images and files only where ``media``."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        param = f"messages[{index}].content[{j}]"
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url" and media:
            blocks.append(_image_block(part["image_url"]["url"], f"{param}.image_url.url"))
        elif kind == "file" and media:
            blocks.append(_document_block(part.get("file"), f"{param}.file"))
        elif kind == "input_audio":
            raise _invalid(f"'{param}': Anthropic models do not take audio input.")
        else:
            raise _invalid(f"'{param}': Anthropic models take only text here, not '{kind}'.")
    return blocks


def _tool_use_blocks(message: dict[str, Any], index: int) -> list[dict[str, Any]]:
    if message.get("function_call") is not None:
        raise _invalid(f"'messages[{index}].function_call' is deprecated and not supported here; use 'tool_calls'.")
    blocks: list[dict[str, Any]] = []
    for j, call in enumerate(message.get("tool_calls") or ()):
        param = f"messages[{index}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if (
            call.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function.get("name"), str)
        ):
            raise _invalid(f"'{param}' must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}.")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments)
        except (orjson.JSONDecodeError, TypeError):
            parsed = None
        if not isinstance(parsed, dict):
            raise _invalid(f"'{param}.function.arguments' must be a JSON object in a string.")
        blocks.append({"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed})
    return blocks


def _tool_result_block(message: dict[str, Any], index: int) -> dict[str, Any]:
    content = message.get("content")
    result: Any = content if isinstance(content, str) else _content_blocks(content, index, media=False)
    return {"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": result}


System = str | list[dict[str, Any]] | None


def _system(blocks: list[dict[str, Any]]) -> System:
    if not blocks:
        return None
    if len(blocks) == 1:
        text: str = blocks[0]["text"]
        return text
    return blocks


def translate_messages(messages: list[dict[str, Any]]) -> tuple[System, list[dict[str, Any]]]:
    """OpenAI messages as Anthropic's ``(system, messages)``."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(_content_blocks(message.get("content"), index, media=False))
            continue
        if role == "user":
            blocks = _content_blocks(message.get("content"), index, media=True)
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"), index, media=False) + _tool_use_blocks(message, index)
        elif role == "tool":
            blocks = [_tool_result_block(message, index)]
        else:
            raise _invalid(
                f"'messages[{index}]': the deprecated 'function' role is not supported here; use 'tool' messages."
            )
        if not blocks:
            continue
        anthropic_role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if turn["role"] == "user":
            # Anthropic wants the results for the previous turn's calls before anything else.
            content.sort(key=lambda block: block["type"] != "tool_result")
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return _system(system), turns


def _tools(request: dict[str, Any]) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    for tool in request.get("tools") or ():
        function = tool["function"]
        entry: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["input_schema"] = function.get("parameters") or EMPTY_SCHEMA
        tools.append(entry)
    return tools


def _tool_choice(request: dict[str, Any]) -> dict[str, Any] | None:
    choice = request.get("tool_choice")
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice in ("auto", "none"):
        result = {"type": choice}
    elif choice == "required":
        result = {"type": "any"}
    else:
        function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise _invalid("'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', ...}.")
        result = {"type": "tool", "name": name}
    if request.get("parallel_tool_calls") is False and (result is None or result["type"] != "none"):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def wants_json_tool(request: dict[str, Any]) -> bool:
    response_format = request.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "json_object"


def max_tokens(model: CatalogModel, request: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is not None:
            return int(value)
    return model.max_output_tokens


def messages_body(model: CatalogModel, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The Anthropic request for an (already validated) OpenAI request."""
    _refuse_unsupported(request)
    system, messages = translate_messages(request["messages"])
    body: dict[str, Any] = {"model": model.name, "max_tokens": max_tokens(model, request), "messages": messages}
    if system is not None:
        body["system"] = system
    tools = _tools(request)
    if tools:
        body["tools"] = tools
        choice = _tool_choice(request)
        if choice is not None:
            body["tool_choice"] = choice
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise _invalid("'response_format.json_schema.schema' must be a JSON Schema object.")
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif wants_json_tool(request):
        if tools:
            raise _invalid("Anthropic models cannot combine 'tools' with response_format 'json_object'.")
        body["tools"] = [{"name": JSON_TOOL, "description": JSON_TOOL_DESCRIPTION, "input_schema": {"type": "object"}}]
        body["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
    stop = request.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = request.get("temperature")
    if temperature is not None:
        body["temperature"] = min(temperature, 1.0)
    if request.get("top_p") is not None:
        body["top_p"] = request["top_p"]
    user = request.get("user") or request.get("safety_identifier")
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    if stream:
        body["stream"] = True
    return body


def request_headers(model: CatalogModel) -> dict[str, str]:
    return {
        "x-api-key": model.credential or "unused",
        "anthropic-version": API_VERSION,
        "content-type": "application/json",
    }


# --- Anthropic response -> OpenAI response --------------------------------------


def usage_from_anthropic(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    cache_read = int(raw.get("cache_read_input_tokens") or 0)
    cache_write = int(raw.get("cache_creation_input_tokens") or 0)
    details = raw.get("output_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0) + cache_write + cache_read,
        output_tokens=int(raw.get("output_tokens") or 0),
        cached_input_tokens=cache_read,
        reasoning_tokens=int(details.get("thinking_tokens") or 0),
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens, "audio_tokens": 0},
    }


def _completion_id(message_id: Any) -> str:
    return f"chatcmpl-{message_id}" if isinstance(message_id, str) and message_id else f"chatcmpl-{uuid.uuid4().hex}"


def completion_from_message(
    message: dict[str, Any], *, model_name: str, created: int, json_tool: bool = False
) -> ChatResult:
    """An Anthropic ``message`` as an OpenAI ``chat.completion``, with its usage."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if json_tool and block.get("name") == JSON_TOOL:
                texts.append(arguments)
                continue
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        # thinking, redacted_thinking and server tool blocks have no OpenAI counterpart.
    finish = finish_reason(message.get("stop_reason"))
    if json_tool and finish == "tool_calls" and not tool_calls:
        finish = "stop"
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": _completion_id(message.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": model_name,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
    }
    usage = usage_from_anthropic(message.get("usage"))
    if usage is None:
        return ChatResult(body=body, usage=Usage(estimated=True))
    body["usage"] = openai_usage(usage)
    return ChatResult(body=body, usage=usage)


class StreamTranslator:
    """Anthropic stream events in, OpenAI ``chat.completion.chunk`` objects out.

    Usage is put into ``progress`` once ``message_delta`` reports the final
    output count; the input and cache counts come from ``message_start``.
    """

    def __init__(self, *, model_name: str, created: int, progress: StreamProgress, json_tool: bool = False) -> None:
        self.model_name = model_name
        self.created = created
        self.progress = progress
        self.json_tool = json_tool
        self.id = _completion_id(None)
        self.raw_usage: dict[str, Any] = {}
        # Anthropic block index -> ("text" | "tool" | "json", OpenAI tool_calls index)
        self.blocks: dict[int, tuple[str, int]] = {}
        self.tool_calls = 0
        self.done = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _content(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self.progress.completion_chars += len(text)
        return [self.chunk({"content": text})]

    def _merge_usage(self, raw: Any) -> None:
        if isinstance(raw, dict):
            self.raw_usage.update({key: value for key, value in raw.items() if value is not None})

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = _completion_id(message.get("id"))
            self._merge_usage(message.get("usage"))
            return [self.chunk({"role": "assistant", "content": "", "refusal": None})]
        if kind == "content_block_start":
            return self._block_start(int(event.get("index") or 0), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(event.get("index") or 0), event.get("delta") or {})
        if kind == "message_delta":
            self._merge_usage(event.get("usage"))
            self.progress.usage = usage_from_anthropic(self.raw_usage)
            finish = finish_reason((event.get("delta") or {}).get("stop_reason"))
            if self.json_tool and finish == "tool_calls" and not self.tool_calls:
                finish = "stop"
            return [self.chunk({}, finish)]
        if kind == "message_stop":
            self.progress.finished = True
            self.done = True
            return []
        if kind == "error":
            raw = event.get("error")
            error: dict[str, Any] = raw if isinstance(raw, dict) else {}
            self.progress.error = {
                "message": f"anthropic failed mid-stream: {str(error.get('message') or 'error')[:500]}",
                "type": "upstream_error",
                "code": str(error.get("type") or "upstream_error"),
            }
            self.done = True
            return [{"error": {**self.progress.error, "param": None}}]
        # ping, content_block_stop, and event types added after this was written.
        return []

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text":
            self.blocks[index] = ("text", -1)
            return self._content(block.get("text") or "")
        if kind == "tool_use":
            if self.json_tool and block.get("name") == JSON_TOOL:
                self.blocks[index] = ("json", -1)
                return []
            position = self.tool_calls
            self.tool_calls += 1
            self.blocks[index] = ("tool", position)
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self.chunk({"tool_calls": [call]})]
        return []  # thinking and server tool blocks stay hidden

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind, position = self.blocks.get(index, ("", -1))
        delta_type = delta.get("type")
        if delta_type == "text_delta" and kind == "text":
            return self._content(delta.get("text") or "")
        if delta_type == "input_json_delta":
            fragment = delta.get("partial_json") or ""
            if kind == "json":
                return self._content(fragment)
            if kind == "tool" and fragment:
                return [self.chunk({"tool_calls": [{"index": position, "function": {"arguments": fragment}}]})]
        return []


# --- errors ---------------------------------------------------------------------


def _upstream_error(content: bytes) -> tuple[str, str]:
    """``(type, message)`` from an Anthropic error body."""
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return "", ""
    return str(error.get("type") or ""), str(error.get("message") or "")[:500]


def error_from_response(status: int, content: bytes, headers: httpx.Headers, provider: str) -> ProviderError:
    """Map an Anthropic HTTP error to what the client should see."""
    kind, message = _upstream_error(content)
    if status in (400, 404, 413, 422):
        # The provider judged the request itself; its message helps the client fix it.
        code = kind or "invalid_request_error"
        if "prompt is too long" in message:
            code = "context_length_exceeded"
        return ProviderError(
            f"{provider} rejected the request: {message or f'HTTP {status}'}",
            status=400,
            retryable=False,
            code=code,
            type="invalid_request_error",
            upstream_status=status,
        )
    if status in (401, 402, 403):
        # Our account, not the client's: never echo the provider's text, which may quote the key.
        return ProviderError(
            f"{provider} refused the gateway's credentials (HTTP {status}).",
            status=502,
            retryable=False,
            upstream_status=status,
        )
    if status == 429:
        return ProviderError(
            f"{provider} is rate limiting the gateway (HTTP 429).",
            status=503,
            retryable=True,
            upstream_status=status,
            retry_after=headers.get("retry-after"),
        )
    if status in (408, 504):
        return ProviderError(
            f"{provider} did not answer in time (HTTP {status}).",
            status=504,
            retryable=True,
            code="upstream_timeout",
            upstream_status=status,
        )
    if status == 529 or kind == "overloaded_error":
        return ProviderError(
            f"{provider} is overloaded (HTTP {status}).",
            status=502,
            retryable=True,
            upstream_status=status,
            retry_after=headers.get("retry-after"),
        )
    # Anthropic's SDKs retry 409 too: a conflict there is transient.
    return ProviderError(
        f"{provider} failed with HTTP {status}.",
        status=502,
        retryable=status >= 500 or status == 409,
        upstream_status=status,
    )


def _malformed(provider: str) -> ProviderError:
    return ProviderError(f"{provider} sent a malformed answer.", status=502, retryable=True)


# --- the adapter ----------------------------------------------------------------


class AnthropicAdapter(Adapter):
    def url(self, model: CatalogModel) -> str:
        return f"{model.base_url}/messages"

    async def chat(self, model: CatalogModel, request: dict[str, Any]) -> ChatResult:
        body = messages_body(model, request, stream=False)
        response = await provider_post(
            self.url(model),
            content=orjson.dumps(body),
            headers=request_headers(model),
            provider=model.provider,
            on_error=error_from_response,
        )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise _malformed(model.provider) from None
        if not isinstance(data, dict) or data.get("type") != "message":
            raise _malformed(model.provider)
        return completion_from_message(
            data, model_name=model.name, created=int(time.time()), json_tool=wants_json_tool(request)
        )

    def stream(self, model: CatalogModel, request: dict[str, Any]) -> ChatStream:
        return AnthropicChatStream(self, model, request)


class AnthropicChatStream(ChatStream):
    def __init__(self, adapter: AnthropicAdapter, model: CatalogModel, request: dict[str, Any]) -> None:
        self.adapter = adapter
        self.model = model
        self.request = request
        self.progress = StreamProgress()
        self.response: httpx.Response | None = None
        self.translator = StreamTranslator(
            model_name=model.name,
            created=int(time.time()),
            progress=self.progress,
            json_tool=wants_json_tool(request),
        )

    async def open(self) -> None:
        body = messages_body(self.model, self.request, stream=True)
        response = await provider_post(
            self.adapter.url(self.model),
            content=orjson.dumps(body),
            headers=request_headers(self.model),
            stream=True,
            provider=self.model.provider,
            on_error=error_from_response,
        )
        self.response = response

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The parsed SSE events; each ends at a blank line, its ``data:`` lines joined."""
        assert self.response is not None, "open() first"
        name = ""
        data: list[str] = []
        async for line in self.response.aiter_lines():
            if line:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "data":
                    data.append(value)
                elif field == "event":
                    name = value
                continue
            if data:
                event = self._parse(name, data)
                if event is not None:
                    yield event
            name, data = "", []
        if data:
            event = self._parse(name, data)
            if event is not None:
                yield event

    @staticmethod
    def _parse(name: str, data: list[str]) -> dict[str, Any] | None:
        try:
            event = orjson.loads("\n".join(data))
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict):
            return None
        if "type" not in event and name:
            event["type"] = name
        return event

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        translator = self.translator
        progress = self.progress
        try:
            async for event in self.events():
                for chunk in translator.feed(event):
                    yield chunk
                if translator.done:
                    return
        except httpx.HTTPError as exc:
            error = error_from_exception(exc, self.model.provider)
            progress.error = {"message": error.message, "type": error.type, "code": error.code}
            yield {"error": {**progress.error, "param": None}}
            return
        # The body ended without message_stop: the answer is cut short, not complete.
        progress.error = {
            "message": f"{self.model.provider} ended the stream before the message was complete.",
            "type": "upstream_error",
            "code": "upstream_error",
        }
        yield {"error": {**progress.error, "param": None}}

    async def close(self) -> None:
        if self.response is not None:
            await self.response.aclose()


ADAPTERS: dict[str, Adapter] = {"anthropic": AnthropicAdapter()}
