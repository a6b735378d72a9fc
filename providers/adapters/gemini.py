"""Google Gemini's ``generateContent`` API (v1beta), spoken in the client's OpenAI terms.

Choices worth knowing when reading an answer:

- A prompt Gemini blocks outright (no ``candidates``, ``promptFeedback.blockReason``)
  is a normal 200 answer with empty content and ``finish_reason: "content_filter"``,
  as OpenAI answers a filtered prompt; it is the client's prompt, not a provider
  failure, so retrying or falling back would only be refused again.
- Finish reasons with no OpenAI counterpart (``MALFORMED_FUNCTION_CALL``, ``OTHER``,
  ...) are provider failures: a retryable 502, or an error event mid-stream.
  ``LANGUAGE`` (an unsupported language) is the client's: a 400.
- Tool schemas go out as ``parametersJsonSchema`` and JSON-schema answers as
  ``responseJsonSchema``: both take full JSON Schema, while ``parameters`` /
  ``responseSchema`` take an OpenAPI subset that rejects what OpenAI clients send
  (``additionalProperties: false`` in strict mode, ``$ref``, ...).
- Gemini 3 and later require a ``thoughtSignature`` on replayed ``functionCall``
  parts. OpenAI clients cannot hand one back, so each replayed model turn carries
  Google's documented sentinel that skips the check (at some cost to reasoning).
- Embeddings report no usage: it is estimated and recorded as estimated.
  Token-array input is refused (Gemini embeds text), and a list of more than
  100 texts, Gemini's batch limit, is embedded in several calls.
"""

from __future__ import annotations

import math
import mimetypes
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

# https://ai.google.dev/gemini-api/docs/thought-signatures: a dummy signature that
# turns the validation off, for history the model did not produce through this client.
SKIP_THOUGHT_SIGNATURE = "skip_thought_signature_validator"
# Models before Gemini 3 neither require nor validate signatures.
_UNSIGNED_MODEL_PREFIXES = ("gemini-1", "gemini-2")

FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}
# No OpenAI finish_reason says "the provider failed"; these end the answer as an error.
FAILED_FINISH_REASONS = frozenset(
    {
        "FINISH_REASON_UNSPECIFIED",
        "OTHER",
        "LANGUAGE",
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "NO_IMAGE",
        "IMAGE_OTHER",
    }
)
_TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
_ERROR_TEXT_LIMIT = 500


def _invalid(message: str) -> ProviderError:
    return ProviderError(
        message, status=400, retryable=False, code="invalid_request_error", type="invalid_request_error"
    )


# --- OpenAI request -> Gemini request ---------------------------------------------------


def _data_url(url: str, where: str) -> tuple[str, str]:
    header, comma, data = url[5:].partition(",")
    mime_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64" or not mime_type:
        raise _invalid(f"{where}: only base64 data URLs (data:<type>;base64,...) can be sent to gemini.")
    return mime_type, data


def _media_part(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        mime_type, data = _data_url(url, where)
        return {"inlineData": {"mimeType": mime_type, "data": data}}
    if url.startswith(("https://", "http://", "gs://")):
        file_data: dict[str, str] = {}
        guessed, _ = mimetypes.guess_type(url.split("?", 1)[0])
        if guessed:
            file_data["mimeType"] = guessed
        file_data["fileUri"] = url
        return {"fileData": file_data}
    raise _invalid(f"{where}: a URL must be https://, http://, gs:// or a base64 data URL.")


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        at = f"{where}.content[{j}]"
        if kind in ("text", "refusal"):
            text = part.get(kind) or ""
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            parts.append(_media_part(part["image_url"]["url"], at))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            mime_type = _AUDIO_TYPES.get(str(audio.get("format")))
            if mime_type is None or not isinstance(audio.get("data"), str):
                raise _invalid(f"{at}: input_audio needs base64 'data' and a 'format' of wav or mp3.")
            parts.append({"inlineData": {"mimeType": mime_type, "data": audio["data"]}})
        elif kind == "file":
            file_data = (part.get("file") or {}).get("file_data")
            if not isinstance(file_data, str):
                raise _invalid(f"{at}: gemini cannot read OpenAI file ids; send the file as 'file_data'.")
            parts.append(_media_part(file_data, at))
        else:
            raise _invalid(f"{at}: content parts of type {kind!r} cannot be sent to gemini.")
    return parts


def _text_only(content: Any, where: str) -> list[dict[str, Any]]:
    parts = _user_parts(content, where)
    if any("text" not in part for part in parts):
        raise _invalid(f"{where}: only text can be sent in this message to gemini.")
    return parts


def _plain_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content or () if part.get("type") == "text")


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        args = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        raise _invalid(f"{where}: the tool call's arguments are not valid JSON.") from None
    if not isinstance(args, dict):
        raise _invalid(f"{where}: gemini needs a tool call's arguments to be a JSON object.")
    return args


def _function_call(function: Any, where: str) -> dict[str, Any]:
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise _invalid(f"{where}: a tool call needs a function name.")
    return {"functionCall": {"name": name, "args": _arguments(function.get("arguments"), where)}}


def _function_response(name: str, content: Any) -> dict[str, Any]:
    return {"functionResponse": {"name": name, "response": {"result": _plain_text(content)}}}


def gemini_contents(
    messages: list[dict[str, Any]], *, sign_calls: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system instruction's parts and the ``contents`` turns for OpenAI ``messages``."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            # Gemini has no system turn; instructions anywhere in the chat apply to all of it.
            system.extend(_text_only(content, where))
            continue
        if role == "user":
            turn, parts = "user", _user_parts(content, where)
        elif role == "assistant":
            turn, parts = "model", _text_only(content, where)
            for j, call in enumerate(message.get("tool_calls") or ()):
                part = _function_call(call.get("function"), f"{where}.tool_calls[{j}]")
                parts.append(part)
                if isinstance(call.get("id"), str):
                    call_names[call["id"]] = part["functionCall"]["name"]
            if message.get("function_call"):
                parts.append(_function_call(message["function_call"], f"{where}.function_call"))
        elif role == "tool":
            # Gemini pairs a result with its call by function name, which OpenAI leaves on the call.
            name = call_names.get(message.get("tool_call_id") or "")
            if name is None:
                raise _invalid(f"{where}: tool_call_id {message.get('tool_call_id')!r} matches no earlier tool call.")
            turn, parts = "user", [_function_response(name, content)]
        elif role == "function":
            name = message.get("name")
            if not isinstance(name, str) or not name:
                raise _invalid(f"{where}: a 'function' message needs the function's 'name'.")
            turn, parts = "user", [_function_response(name, content)]
        else:
            raise _invalid(f"{where}: role {role!r} cannot be sent to gemini.")
        if not parts:
            continue  # Gemini refuses a turn without parts, e.g. an empty assistant reply.
        if contents and contents[-1]["role"] == turn:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": turn, "parts": parts})
    if sign_calls:
        for turn_content in contents:
            if turn_content["role"] != "model":
                continue
            for part in turn_content["parts"]:
                if "functionCall" in part:
                    # Gemini checks the first call of each step; the parallel ones after it carry none.
                    part["thoughtSignature"] = SKIP_THOUGHT_SIGNATURE
                    break
    return system, contents


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):
        declaration["parametersJsonSchema"] = function["parameters"]
    return declaration


def _function_names(tools: Any) -> list[str]:
    names: list[str] = []
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid("tool_choice.allowed_tools.tools: each entry needs {type: function, function: {name}}.")
        names.append(function["name"])
    return names


def _tool_settings(request: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The function declarations and the function-calling config, OpenAI ``tool_choice`` applied."""
    functions = [tool["function"] for tool in request.get("tools") or ()]
    choice = request.get("tool_choice")
    if not functions and request.get("functions"):
        # The deprecated pre-tools API still comes from older clients.
        functions = list(request["functions"])
        legacy = request.get("function_call")
        choice = {"type": "function", "function": legacy} if isinstance(legacy, dict) else legacy
    if not functions:
        return [], None
    declarations = [_declaration(function) for function in functions]
    if choice is None:
        return declarations, None
    if isinstance(choice, str):
        if choice not in _TOOL_MODES:
            raise _invalid(f"tool_choice {choice!r} cannot be sent to gemini.")
        return declarations, {"mode": _TOOL_MODES[choice]}
    kind = choice.get("type")
    if kind == "function":
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("tool_choice.function.name is required.")
        return declarations, {"mode": "ANY", "allowedFunctionNames": [name]}
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = _function_names(allowed.get("tools"))
        mode = allowed.get("mode", "auto")
        if mode == "required":
            return declarations, {"mode": "ANY", "allowedFunctionNames": names}
        if mode == "auto":
            # Gemini narrows the functions only in ANY mode; for auto, declare just the allowed ones.
            return [d for d in declarations if d["name"] in names], {"mode": "AUTO"}
        raise _invalid(f"tool_choice.allowed_tools.mode {mode!r} cannot be sent to gemini.")
    raise _invalid(f"tool_choice of type {kind!r} cannot be sent to gemini.")


def _generation_config(request: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.get("temperature") is not None:
        config["temperature"] = request["temperature"]
    if request.get("top_p") is not None:
        config["topP"] = request["top_p"]
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = request.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        config["stopSequences"] = stop
    if request.get("seed") is not None:
        config["seed"] = request["seed"]
    # Zero is the default; some Gemini models refuse the penalty fields altogether.
    if request.get("presence_penalty"):
        config["presencePenalty"] = request["presence_penalty"]
    if request.get("frequency_penalty"):
        config["frequencyPenalty"] = request["frequency_penalty"]
    response_format = request.get("response_format") or {}
    kind = response_format.get("type")
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
        if schema is not None:
            config["responseJsonSchema"] = schema
    return config


def gemini_request(model: CatalogModel, request: dict[str, Any]) -> dict[str, Any]:
    """The ``generateContent`` body for an OpenAI chat-completions request.

    Dropped because Gemini has no equivalent: ``logprobs``/``top_logprobs``,
    ``logit_bias``, ``parallel_tool_calls``, ``reasoning_effort``, ``user``,
    ``metadata``, ``store``, ``service_tier`` and the audio output options.
    """
    n = request.get("n")
    if n is not None and n != 1:
        raise _invalid("gemini models answer with one choice here; 'n' must be 1.")
    sign_calls = not model.name.startswith(_UNSIGNED_MODEL_PREFIXES)
    system, contents = gemini_contents(request["messages"], sign_calls=sign_calls)
    body: dict[str, Any] = {}
    if system:
        body["systemInstruction"] = {"parts": system}
    body["contents"] = contents
    declarations, calling = _tool_settings(request)
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]
    if calling is not None:
        body["toolConfig"] = {"functionCallingConfig": calling}
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    return body


# --- Gemini answer -> OpenAI answer -----------------------------------------------------


def usage_from_gemini(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    thoughts = int(raw.get("thoughtsTokenCount") or 0)
    return Usage(
        input_tokens=int(raw.get("promptTokenCount") or 0),
        output_tokens=int(raw.get("candidatesTokenCount") or 0) + thoughts,
        cached_input_tokens=int(raw.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens, "audio_tokens": 0},
    }


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    # Gemini rarely names its calls; OpenAI clients need an id to answer them by.
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call.get("name") or "", "arguments": orjson.dumps(call.get("args") or {}).decode()},
    }


def _split_parts(candidate: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The answer's text (thoughts left out) and its function calls."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            calls.append(part["functionCall"])
    return "".join(texts), calls


def finish_failure(reason: str, provider: str) -> ProviderError:
    if reason == "LANGUAGE":
        return _invalid(f"{provider} stopped: the request's language is not supported (LANGUAGE).")
    return ProviderError(f"{provider} stopped without an answer ({reason}).", status=502, retryable=True)


def finish_reason(reason: str, has_calls: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop")
    if mapped == "stop" and has_calls:
        return "tool_calls"
    return mapped


def completion_id(data: dict[str, Any]) -> str:
    response_id = data.get("responseId")
    return f"chatcmpl-{response_id}" if isinstance(response_id, str) and response_id else f"chatcmpl-{uuid.uuid4().hex}"


def openai_completion(model: CatalogModel, data: dict[str, Any]) -> ChatResult:
    """An OpenAI ``chat.completion`` for a ``generateContent`` answer."""
    usage = usage_from_gemini(data.get("usageMetadata"))
    candidates = data.get("candidates") or []
    message: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    if candidates:
        candidate = candidates[0]
        reason = candidate.get("finishReason") or "STOP"
        if reason in FAILED_FINISH_REASONS:
            raise finish_failure(reason, model.provider)
        text, calls = _split_parts(candidate)
        message["content"] = text if text or not calls else None
        if calls:
            message["tool_calls"] = [_tool_call(call) for call in calls]
        finish = finish_reason(reason, bool(calls))
    elif (data.get("promptFeedback") or {}).get("blockReason"):
        finish = "content_filter"
    else:
        raise ProviderError(f"{model.provider} sent an answer without candidates.", status=502, retryable=True)
    body: dict[str, Any] = {
        "id": completion_id(data),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model.name,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if usage is None:
        return ChatResult(body=body, usage=Usage(estimated=True))
    body["usage"] = openai_usage(usage)
    return ChatResult(body=body, usage=usage)


# --- errors -----------------------------------------------------------------------------


def _google_error(content: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(data, list) and data:
        data = data[0]  # a non-SSE stream answers with an array, errors included
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    suffix = f"/google.rpc.{kind}"
    return [d for d in error.get("details") or () if isinstance(d, dict) and str(d.get("@type", "")).endswith(suffix)]


def retry_delay(error: dict[str, Any]) -> str | None:
    """``RetryInfo.retryDelay`` ("22s", "1.5s") as whole seconds, the form of a Retry-After header."""
    for info in _details(error, "RetryInfo"):
        delay = info.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return str(math.ceil(float(delay[:-1])))
            except ValueError:
                continue
    return None


def error_from_response(status: int, content: bytes, headers: httpx.Headers, provider: str) -> ProviderError:
    """Map a Gemini HTTP error to what the client should see."""
    error = _google_error(content)
    message = str(error.get("message") or "")[:_ERROR_TEXT_LIMIT]
    google_status = str(error.get("status") or "")
    reasons = {str(info.get("reason") or "") for info in _details(error, "ErrorInfo")}
    if status in (401, 403) or any(reason.startswith("API_KEY_") for reason in reasons):
        # Gemini answers a bad key with a 400; either way it is our credential, and its text may quote it.
        return ProviderError(
            f"{provider} refused the gateway's credentials (HTTP {status}).",
            status=502,
            retryable=False,
            upstream_status=status,
        )
    if google_status == "FAILED_PRECONDITION":
        # The gateway's account (billing, region), not the request: another provider may serve it.
        return ProviderError(
            f"{provider} will not serve the gateway's account (HTTP {status} FAILED_PRECONDITION).",
            status=502,
            retryable=False,
            upstream_status=status,
        )
    if status in (400, 404, 409, 413, 422):
        return ProviderError(
            f"{provider} rejected the request: {message or f'HTTP {status}'}",
            status=400,
            retryable=False,
            code="invalid_request_error",
            type="invalid_request_error",
            upstream_status=status,
        )
    if status == 429:
        return ProviderError(
            f"{provider} is rate limiting the gateway (HTTP 429).",
            status=503,
            retryable=True,
            upstream_status=status,
            retry_after=retry_delay(error) or headers.get("retry-after"),
        )
    if status == 504:
        return ProviderError(
            f"{provider} did not answer in time (HTTP 504).",
            status=504,
            retryable=True,
            code="upstream_timeout",
            upstream_status=status,
        )
    return ProviderError(
        f"{provider} failed with HTTP {status}.",
        status=502,
        retryable=status >= 500,
        upstream_status=status,
        retry_after=retry_delay(error),
    )


def _stream_error(message: str, code: str = "upstream_error") -> dict[str, Any]:
    return {"message": message, "type": "upstream_error", "code": code}


# --- embeddings -------------------------------------------------------------------------

# batchEmbedContents takes at most this many requests; longer inputs are sent in runs.
EMBED_BATCH_REQUESTS = 100


def embed_content_request(model: CatalogModel, request: dict[str, Any], text: str) -> dict[str, Any]:
    """One ``EmbedContentRequest``: ``dimensions`` is ``outputDimensionality``; ``user`` is dropped.

    No ``taskType`` is sent (OpenAI has none to map), so the model's default applies.
    """
    item: dict[str, Any] = {"model": f"models/{model.name}", "content": {"parts": [{"text": text}]}}
    if request.get("dimensions") is not None:
        item["outputDimensionality"] = request["dimensions"]
    return item


def embed_values(data: dict[str, Any], count: int, *, batch: bool, provider: str) -> list[list[float] | str]:
    """The vectors of an ``:embedContent`` (``embedding``) or ``:batchEmbedContents`` (``embeddings``) answer."""
    embeddings = data.get("embeddings") if batch else [data.get("embedding")]
    if not isinstance(embeddings, list) or len(embeddings) != count:
        raise malformed(provider)
    values = [item.get("values") if isinstance(item, dict) else None for item in embeddings]
    if not all(isinstance(vector, list) for vector in values):
        raise malformed(provider)
    return [float_values(vector, provider) for vector in values]


# --- streaming --------------------------------------------------------------------------


class ChunkTranslator:
    """Turns ``streamGenerateContent`` events into OpenAI ``chat.completion.chunk`` dicts.

    Gemini sends only the new parts in each event and its usage as running
    totals; OpenAI wants a role delta first, then content and tool-call deltas,
    then an empty delta with the finish reason.
    """

    def __init__(self, model: CatalogModel, progress: StreamProgress) -> None:
        self.model = model
        self.progress = progress
        self.id: str | None = None
        self.created = int(time.time())
        self.started = False
        self.calls = 0
        self.done = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model.name,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        self.progress.error = error
        return [{"error": {**error, "param": None}}]

    def translate(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if self.done:
            return []
        if "error" in event and "candidates" not in event:
            error = event["error"] if isinstance(event["error"], dict) else {}
            detail = str(error.get("message") or error.get("status") or "error")[:_ERROR_TEXT_LIMIT]
            return self._fail(_stream_error(f"{self.model.provider} failed mid-stream: {detail}"))
        usage = usage_from_gemini(event.get("usageMetadata"))
        if usage is not None:
            self.progress.usage = usage
        if self.id is None:
            self.id = completion_id(event)
        out: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            out.append(self._chunk({"role": "assistant", "content": "", "refusal": None}))
        candidates = event.get("candidates") or []
        if not candidates:
            if (event.get("promptFeedback") or {}).get("blockReason"):
                self.done = self.progress.finished = True
                out.append(self._chunk({}, "content_filter"))
            return out
        candidate = candidates[0]
        text, calls = _split_parts(candidate)
        if text:
            self.progress.completion_chars += len(text)
            out.append(self._chunk({"content": text}))
        for call in calls:
            # Gemini sends each call whole, so one delta carries it all.
            out.append(self._chunk({"tool_calls": [{"index": self.calls, **_tool_call(call)}]}))
            self.calls += 1
        reason = candidate.get("finishReason")
        if reason:
            if reason in FAILED_FINISH_REASONS:
                failure = finish_failure(reason, self.model.provider)
                return out + self._fail(_stream_error(failure.message, failure.code))
            self.done = self.progress.finished = True
            out.append(self._chunk({}, finish_reason(reason, self.calls > 0)))
        return out

    def end(self) -> list[dict[str, Any]]:
        """What to send when the body ends: nothing after a finish, else the cut is an error."""
        if self.done:
            return []
        return self._fail(_stream_error(f"{self.model.provider} ended the stream before finishing."))


def _sse_event(event_lines: list[str]) -> dict[str, Any] | None:
    payload = "\n".join(event_lines).strip()
    if not payload or payload == "[DONE]":
        return None
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


class GeminiAdapter(Adapter):
    def url(self, model: CatalogModel, *, stream: bool) -> str:
        if stream:
            return f"{model.base_url}/models/{model.name}:streamGenerateContent?alt=sse"
        return f"{model.base_url}/models/{model.name}:generateContent"

    def headers(self, model: CatalogModel) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if model.credential:
            headers["x-goog-api-key"] = model.credential
        return headers

    def body(self, model: CatalogModel, request: dict[str, Any]) -> bytes:
        return orjson.dumps(gemini_request(model, request))

    async def chat(self, model: CatalogModel, request: dict[str, Any]) -> ChatResult:
        content = self.body(model, request)
        response = await provider_post(
            self.url(model, stream=False),
            content=content,
            headers=self.headers(model),
            provider=model.provider,
            on_error=error_from_response,
        )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise ProviderError(f"{model.provider} sent a malformed answer.", status=502, retryable=True)
        return openai_completion(model, data)

    def stream(self, model: CatalogModel, request: dict[str, Any]) -> ChatStream:
        return GeminiChatStream(self, model, request)

    async def embed(self, model: CatalogModel, request: dict[str, Any]) -> EmbeddingResult:
        """A string goes to ``:embedContent``, a list to ``:batchEmbedContents`` in runs of 100.

        Gemini reports no usage for embeddings, so it is estimated (see ``providers.adapters.embeddings``).
        """
        texts = text_inputs(request, model.provider)
        batch = not isinstance(request["input"], str)
        base = f"{model.base_url}/models/{model.name}"
        vectors: list[list[float] | str] = []
        for run in batches(texts, EMBED_BATCH_REQUESTS):
            if batch:
                url = f"{base}:batchEmbedContents"
                body = {"requests": [embed_content_request(model, request, text) for text in run]}
            else:
                url, body = f"{base}:embedContent", embed_content_request(model, request, run[0])
            response = await provider_post(
                url,
                content=orjson.dumps(body),
                headers=self.headers(model),
                provider=model.provider,
                on_error=error_from_response,
            )
            try:
                data = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                raise malformed(model.provider)
            vectors += embed_values(data, len(run), batch=batch, provider=model.provider)
        return openai_embeddings(model, vectors, estimated_usage(texts), request.get("encoding_format"))


class GeminiChatStream(ChatStream):
    def __init__(self, adapter: GeminiAdapter, model: CatalogModel, request: dict[str, Any]) -> None:
        self.adapter = adapter
        self.model = model
        self.request = request
        self.progress = StreamProgress()
        self.response: httpx.Response | None = None

    async def open(self) -> None:
        # Translating first: a request Gemini cannot take fails before any connection.
        content = self.adapter.body(self.model, self.request)
        response = await provider_post(
            self.adapter.url(self.model, stream=True),
            content=content,
            headers=self.adapter.headers(self.model),
            stream=True,
            provider=self.model.provider,
            on_error=error_from_response,
        )
        self.response = response

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        assert self.response is not None, "open() first"
        translator = ChunkTranslator(self.model, self.progress)
        lines: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line.startswith("data:"):
                    lines.append(line[5:])
                    continue
                if line.strip() or not lines:
                    continue  # comments, other fields, stray blank lines
                event, lines = _sse_event(lines), []
                for chunk in translator.translate(event) if event is not None else ():
                    yield chunk
                if translator.done:
                    return
            # Gemini ends a stream by ending the body; a last event may lack its blank line.
            event = _sse_event(lines) if lines else None
            for chunk in translator.translate(event) if event is not None else ():
                yield chunk
            for chunk in translator.end():
                yield chunk
        except httpx.HTTPError as exc:
            error = error_from_exception(exc, self.model.provider)
            self.progress.error = {"message": error.message, "type": error.type, "code": error.code}
            yield {"error": {**self.progress.error, "param": None}}

    async def close(self) -> None:
        if self.response is not None:
            await self.response.aclose()


ADAPTERS: dict[str, Adapter] = {"gemini": GeminiAdapter()}
