"""The fake upstream's Google Gemini dialect (``generateContent``, v1beta).

Routes, under ``/gemini/v1beta``:

- ``POST /models/{model}:generateContent``: one ``GenerateContentResponse``.
- ``POST /models/{model}:streamGenerateContent?alt=sse``: data-only SSE, one
  response per event holding only the new parts, ``usageMetadata`` as running
  totals on every event, ``finishReason`` on the last; no ``[DONE]``, the body
  just ends. Without ``alt=sse`` the same responses come as one JSON array.
- ``POST /models/{model}:embedContent`` (``{"embedding": {"values"}}``) and
  ``:batchEmbedContents`` (at most 100 requests, each naming
  ``models/{model}``; ``{"embeddings": [{"values"}]}``): vectors from
  ``providers.fake_wire.embeddings.vector`` of the text parts, of
  ``outputDimensionality`` values (8 by default), and no usage, as Gemini
  reports none. The directives of the first text apply, ``gemini_error`` too.

Auth is the ``x-goog-api-key`` header (or ``?key=``); a missing key is a 403
``PERMISSION_DENIED``. The body is checked like the real API checks it: wire
names are lowerCamelCase and an unknown field is a 400 ``INVALID_ARGUMENT``.
Errors are Google's ``{"error": {"code", "message", "status", "details"}}``.

Replies, token counts and the shared ``[fake ...]`` directives (status,
latency_ms, chunk_delay_ms, fail_after_chunks, retry_after, words, model,
times) work as on the OpenAI route: the reply is ``"Fake reply to: "`` + the
first 40 characters of the last user text, one word per token and per stream
event, ``promptTokenCount = max(1, ceil(prompt characters / 4))``. A call to
the first declared function (``{"city": "Paris"}``) answers a last user turn
mentioning ``weather``, or mode ``ANY``. ``status=429`` carries a ``RetryInfo``
of ``retry_after`` seconds (default 1). Directive keys only this dialect knows:

- ``gemini_block=prompt``: the prompt is blocked: no ``candidates``,
  ``promptFeedback.blockReason: "SAFETY"``.
- ``gemini_block=safety``: the answer is blocked: ``finishReason: "SAFETY"``
  with no content (streamed, the words come first, then the blocked ending).
- ``gemini_error=api_key_invalid``: Gemini's answer to a bad key, a 400
  ``INVALID_ARGUMENT`` with ``ErrorInfo.reason: "API_KEY_INVALID"``.
- ``gemini_error=failed_precondition``: a 400 ``FAILED_PRECONDITION`` (the
  free tier is not available in the caller's region).
- ``gemini_thoughts=N``: the answer starts with a ``thought: true`` part, and
  ``thoughtsTokenCount`` is N.
- ``gemini_cached=N``: ``cachedContentTokenCount`` is N (at most the prompt).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

import orjson

from providers.fake_upstream import (
    _DIRECTIVE_USES,
    _HEADER_KEYS,
    DIRECTIVE_OPEN,
    REPLY_PREFIX,
    SNIPPET_CHARS,
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
    _parse_count,
    _random_id,
    _read_body,
    _send_json,
    register_dialect,
    send_stream,
)
from providers.fake_wire.embeddings import DEFAULT_DIMENSIONS, vector

PREFIX = "/gemini/v1beta"
MODELS_PATH = f"{PREFIX}/models/"
TOOL_ARGS: dict[str, Any] = orjson.loads(TOOL_ARGUMENTS)
MAX_STOP_SEQUENCES = 5
MAX_EMBED_BATCH = 100
MAX_EMBED_DIMENSIONS = 3072

_JSON_HEADERS: Headers = [(b"content-type", b"application/json; charset=UTF-8"), (b"vary", b"Origin")]
_SSE_HEADERS: Headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_TOP_LEVEL = frozenset(
    {"contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "generationConfig", "cachedContent"}
)
_PART_DATA = frozenset(
    {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode", "codeExecutionResult"}
)
_PART_META = frozenset({"thought", "thoughtSignature", "videoMetadata", "partMetadata"})
_GENERATION_FIELDS = frozenset(
    {
        "temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "candidateCount", "seed",
        "presencePenalty", "frequencyPenalty", "responseMimeType", "responseSchema", "responseJsonSchema",
        "thinkingConfig", "responseLogprobs", "logprobs", "responseModalities", "mediaResolution",
    }
)  # fmt: skip
_DECLARATION_FIELDS = frozenset(
    {"name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema", "behavior"}
)
_MODES = frozenset({"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"})
_MIME_TYPES = frozenset({"text/plain", "application/json", "text/x.enum"})
_DIALECT_KEYS = frozenset({"gemini_block", "gemini_error", "gemini_thoughts", "gemini_cached"})
_BLOCKS = frozenset({"prompt", "safety"})
_ERRORS = frozenset({"api_key_invalid", "failed_precondition"})
_BLOCKED_RATINGS = [
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
]
_INTERNAL_MESSAGE = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
_MIDSTREAM_ERROR: dict[str, Any] = {"code": 500, "message": _INTERNAL_MESSAGE, "status": "INTERNAL"}
_UNREGISTERED_CALLER = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_GENERATE_ACTIONS = frozenset({"generateContent", "streamGenerateContent"})
_EMBED_ACTIONS = frozenset({"embedContent", "batchEmbedContents"})
_EMBED_FIELDS = frozenset({"model", "content", "taskType", "title", "outputDimensionality"})
_TASK_TYPES = frozenset(
    {
        "TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION",
        "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY",
    }
)  # fmt: skip


def error_body(
    code: int, message: str, status: str | None = None, details: list[dict[str, Any]] | None = None
) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status or _STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


def _retry_info(seconds: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds}s"}


def injected_error(status: int, model: str, retry_after: str | None) -> bytes:
    """An error body resembling what Gemini returns for that status."""
    details: list[dict[str, Any]] = []
    if status == 429:
        message = (
            "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
        )
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_paid_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "10000",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            _retry_info(retry_after or "1"),
        ]
        return error_body(429, message, details=details)
    if retry_after is not None:
        details.append(_retry_info(retry_after))
    messages: dict[int, str] = {
        400: "Request contains an invalid argument.",
        401: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
        "or other valid authentication credential.",
        403: "The caller does not have permission",
        404: f"models/{model} is not found for API version v1beta, or is not supported for generateContent. "
        "Call ListModels to see the list of available models and their supported methods.",
        500: _INTERNAL_MESSAGE,
        503: "The model is overloaded. Please try again later.",
        504: "Deadline expired before operation could complete.",
    }
    message = messages.get(status, f"Injected fake upstream error (HTTP {status}).")
    return error_body(status, message, details=details)


def _api_key_invalid() -> bytes:
    message = "API key not valid. Please pass a valid API key."
    return error_body(
        400,
        message,
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message},
        ],
    )


def _failed_precondition() -> bytes:
    return error_body(
        400,
        "User location is not supported for the API use without a billing account linked.",
        status="FAILED_PRECONDITION",
    )


# --- directives ---------------------------------------------------------------------


def take_dialect_directives(text: str, model: str) -> tuple[str, dict[str, str]]:
    """Pull this dialect's keys out of every ``[fake ...]``, leaving the shared keys in place.

    ``model=`` and ``times=`` scope the dialect keys as they scope the shared ones.
    """
    found: dict[str, str] = {}
    start = text.find(DIRECTIVE_OPEN)
    while start != -1:
        end = text.find("]", start)
        if end == -1:
            break  # the shared parser reports it
        tokens = text[start + len(DIRECTIVE_OPEN) : end].split()
        mine = [t for t in tokens if t.partition("=")[0] in _DIALECT_KEYS]
        if not mine:
            start = text.find(DIRECTIVE_OPEN, end + 1)
            continue
        rest = [t for t in tokens if t not in mine]
        scope = dict(t.partition("=")[::2] for t in rest)
        applies = scope.get("model", model) == model
        if applies and "times" in scope:
            # The shared parser counts this directive's uses (by its remaining text) after us.
            applies = _DIRECTIVE_USES.get(" ".join(rest), 0) < _parse_count(scope["times"])
        if applies:
            for token in mine:
                key, _, value = token.partition("=")
                found[key] = value
        replacement = f"{DIRECTIVE_OPEN}{' '.join(rest)}]" if rest else ""
        text = text[:start] + replacement + text[end + 1 :]
        start = text.find(DIRECTIVE_OPEN, start + len(replacement))
    for key, allowed in (("gemini_block", _BLOCKS), ("gemini_error", _ERRORS)):
        if key in found and found[key] not in allowed:
            raise BadRequestError(f"Invalid value {found[key]!r} for fake directive {key!r} in directive.")
    for key in ("gemini_thoughts", "gemini_cached"):
        if key in found:
            try:
                _parse_count(found[key])
            except ValueError:
                raise BadRequestError(
                    f"Invalid value {found[key]!r} for fake directive {key!r} in directive."
                ) from None
    return text, found


# --- request validation -----------------------------------------------------------------


def _unknown(name: str, where: str) -> BadRequestError:
    at = f" at '{where}'" if where else ""
    return BadRequestError(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


def _check_fields(value: Any, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestError(f"Invalid JSON payload received. Expected an object at '{where}'.")
    for name in value:
        if name not in allowed:
            raise _unknown(name, where)
    return value


def _check_part(part: Any, where: str) -> dict[str, Any]:
    part = _check_fields(part, _PART_DATA | _PART_META, where)
    data = [name for name in part if name in _PART_DATA]
    if len(data) != 1:
        raise BadRequestError(f"* {where}.data: required oneof field 'data' must have one initialized field\n")
    kind = data[0]
    value = part[kind]
    if kind == "text" and not isinstance(value, str):
        raise BadRequestError(f"Invalid value at '{where}.text', expected a string.")
    if kind == "inlineData":
        _check_fields(value, frozenset({"mimeType", "data"}), f"{where}.inline_data")
        if not value.get("mimeType") or not isinstance(value.get("data"), str):
            raise BadRequestError(f"* {where}.inline_data: mimeType and data are required.\n")
    if kind == "fileData":
        _check_fields(value, frozenset({"mimeType", "fileUri"}), f"{where}.file_data")
        if not value.get("fileUri"):
            raise BadRequestError(f"* {where}.file_data.file_uri: fileUri is required.\n")
    if kind == "functionCall":
        _check_fields(value, frozenset({"id", "name", "args"}), f"{where}.function_call")
        if not value.get("name") or not isinstance(value.get("args", {}), dict):
            raise BadRequestError(f"* {where}.function_call: name is required and args must be an object.\n")
    if kind == "functionResponse":
        _check_fields(value, frozenset({"id", "name", "response"}), f"{where}.function_response")
        if not value.get("name") or not isinstance(value.get("response"), dict):
            raise BadRequestError(f"* {where}.function_response: name and a response object are required.\n")
    return part


def _check_contents(data: dict[str, Any]) -> list[dict[str, Any]]:
    contents = data.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequestError("* GenerateContentRequest.contents: contents is not specified\n")
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        _check_fields(content, frozenset({"role", "parts"}), where)
        if content.get("role", "user") not in ("user", "model"):
            raise BadRequestError("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise BadRequestError(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n")
        for j, part in enumerate(parts):
            _check_part(part, f"{where}.parts[{j}]")
    system = data.get("systemInstruction")
    if system is not None:
        _check_fields(system, frozenset({"role", "parts"}), "system_instruction")
        if not isinstance(system.get("parts"), list) or not system["parts"]:
            raise BadRequestError("* GenerateContentRequest.system_instruction.parts: parts must not be empty.\n")
        for j, part in enumerate(system["parts"]):
            _check_part(part, f"system_instruction.parts[{j}]")
    return contents


def _check_tools(data: dict[str, Any]) -> list[str]:
    names: list[str] = []
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequestError("Invalid JSON payload received. 'tools' must be an array.")
        for i, tool in enumerate(tools):
            tool = _check_fields(
                tool, frozenset({"functionDeclarations", "googleSearch", "codeExecution", "urlContext"}), f"tools[{i}]"
            )
            for j, declaration in enumerate(tool.get("functionDeclarations") or ()):
                where = f"tools[{i}].function_declarations[{j}]"
                _check_fields(declaration, _DECLARATION_FIELDS, where)
                if not isinstance(declaration.get("name"), str) or not declaration["name"]:
                    raise BadRequestError(f"* GenerateContentRequest.{where}.name: Name cannot be empty.\n")
                if "parameters" in declaration and "parametersJsonSchema" in declaration:
                    raise BadRequestError(
                        f"* GenerateContentRequest.{where}: "
                        "parameters and parametersJsonSchema are mutually exclusive.\n"
                    )
                names.append(declaration["name"])
    tool_config = data.get("toolConfig")
    if tool_config is not None:
        _check_fields(tool_config, frozenset({"functionCallingConfig"}), "tool_config")
        calling = _check_fields(
            tool_config.get("functionCallingConfig") or {},
            frozenset({"mode", "allowedFunctionNames"}),
            "tool_config.function_calling_config",
        )
        mode = calling.get("mode", "AUTO")
        if mode not in _MODES:
            raise BadRequestError(f"Invalid value at 'tool_config.function_calling_config.mode' ({mode!r}).")
        allowed = calling.get("allowedFunctionNames")
        if allowed is not None:
            if mode not in ("ANY", "VALIDATED"):
                raise BadRequestError(
                    "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                    "allowed_function_names is only allowed when mode is ANY.\n"
                )
            for name in allowed:
                if name not in names:
                    raise BadRequestError(
                        f"* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                        f"function {name!r} is not declared.\n"
                    )
    return names


def _check_generation_config(data: dict[str, Any]) -> int | None:
    """Validate ``generationConfig``; return ``maxOutputTokens``."""
    config = data.get("generationConfig")
    if config is None:
        return None
    _check_fields(config, _GENERATION_FIELDS, "generation_config")
    for name, low, high in (("temperature", 0.0, 2.0), ("topP", 0.0, 1.0)):
        value = config.get(name)
        if value is not None and (type(value) not in (int, float) or not low <= value <= high):
            raise BadRequestError(f"* GenerateContentRequest.generation_config.{name}: must be in [{low}, {high}].\n")
    stops = config.get("stopSequences")
    if stops is not None and (
        not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in stops)
    ):
        raise BadRequestError(
            "* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences are allowed.\n"
        )
    if config.get("candidateCount", 1) != 1:
        raise BadRequestError("The fake upstream only supports candidateCount=1.")
    mime_type = config.get("responseMimeType")
    if mime_type is not None and mime_type not in _MIME_TYPES:
        raise BadRequestError(
            f"* GenerateContentRequest.generation_config.response_mime_type: {mime_type!r} is unsupported.\n"
        )
    if "responseSchema" in config and "responseJsonSchema" in config:
        raise BadRequestError("responseSchema and responseJsonSchema are mutually exclusive.")
    if ("responseSchema" in config or "responseJsonSchema" in config) and mime_type != "application/json":
        raise BadRequestError(
            "* GenerateContentRequest.generation_config.response_mime_type: must be application/json.\n"
        )
    limit = config.get("maxOutputTokens")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise BadRequestError("* GenerateContentRequest.generation_config.max_output_tokens: must be positive.\n")
    return limit


# --- the reply ---------------------------------------------------------------------------


class GeminiPlan:
    """Everything decided about one answer before any byte is sent."""

    def __init__(
        self,
        *,
        model: str,
        controls: Controls,
        words: tuple[str, ...] | list[str],
        tool: str | None,
        finish_reason: str,
        prompt_tokens: int,
        dialect: dict[str, str],
    ) -> None:
        self.model = model
        self.controls = controls
        self.words = words
        self.tool = tool
        self.finish_reason = finish_reason
        self.prompt_tokens = prompt_tokens
        self.block = dialect.get("gemini_block")
        self.error = dialect.get("gemini_error")
        self.thoughts = int(dialect.get("gemini_thoughts", 0))
        self.cached = min(int(dialect.get("gemini_cached", 0)), prompt_tokens)
        self.response_id = _random_id("fake", 64)

    def completion_tokens(self) -> int:
        if self.tool is not None:
            return max(1, (len(self.tool) + len(TOOL_ARGUMENTS) + 3) // 4)
        return len(self.words)

    def usage(self, candidates: int, thoughts: int) -> dict[str, Any]:
        prompt = self.prompt_tokens
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        # Like Gemini, an event before any answer token leaves the count out.
        if candidates:
            usage["candidatesTokenCount"] = candidates
        usage["totalTokenCount"] = prompt + candidates + thoughts
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if self.cached:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.cached}]
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return usage

    def _response(self, usage: dict[str, Any], candidate: dict[str, Any] | None) -> dict[str, Any]:
        response: dict[str, Any] = {}
        if candidate is not None:
            response["candidates"] = [candidate]
        else:
            response["promptFeedback"] = {"blockReason": "SAFETY", "safetyRatings": _BLOCKED_RATINGS}
        response["usageMetadata"] = usage
        response["modelVersion"] = self.model
        response["responseId"] = self.response_id
        return response

    def _thought_part(self) -> dict[str, Any]:
        return {"text": " ".join(_lorem(self.thoughts)), "thought": True}

    def _answer_part(self) -> dict[str, Any]:
        if self.tool is not None:
            return {"functionCall": {"name": self.tool, "args": TOOL_ARGS}}
        return {"text": " ".join(self.words)}

    def _safety_candidate(self) -> dict[str, Any]:
        return {"finishReason": "SAFETY", "index": 0, "safetyRatings": _BLOCKED_RATINGS}

    def response(self) -> dict[str, Any]:
        if self.block == "prompt":
            return self._response(self.usage(0, 0), None)
        usage = self.usage(self.completion_tokens(), self.thoughts)
        if self.block == "safety":
            return self._response(usage, self._safety_candidate())
        parts = [self._thought_part()] if self.thoughts else []
        parts.append(self._answer_part())
        candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": self.finish_reason, "index": 0}
        return self._response(usage, candidate)

    def stream_responses(self) -> list[dict[str, Any]]:
        if self.block == "prompt":
            return [self._response(self.usage(0, 0), None)]
        responses: list[dict[str, Any]] = []
        if self.thoughts:
            content = {"parts": [self._thought_part()], "role": "model"}
            responses.append(self._response(self.usage(0, self.thoughts), {"content": content, "index": 0}))
        if self.tool is not None:
            pieces: list[dict[str, Any]] = [self._answer_part()]
        else:
            last = len(self.words) - 1
            pieces = [{"text": w if i == last else w + " "} for i, w in enumerate(self.words)] or [{"text": ""}]
        for index, part in enumerate(pieces):
            tokens = self.completion_tokens() if self.tool is not None else min(index + 1, len(self.words))
            candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}, "index": 0}
            if index == len(pieces) - 1 and self.block != "safety":
                candidate["finishReason"] = self.finish_reason
            responses.append(self._response(self.usage(tokens, self.thoughts), candidate))
        if self.block == "safety":
            usage = self.usage(self.completion_tokens(), self.thoughts)
            responses.append(self._response(usage, self._safety_candidate()))
        return responses


def _texts(parts: list[dict[str, Any]]) -> list[str]:
    return [part["text"] for part in parts if isinstance(part.get("text"), str) and not part.get("thought")]


def _prompt_chars(data: dict[str, Any], contents: list[dict[str, Any]]) -> int:
    chars = sum(len(text) for text in _texts((data.get("systemInstruction") or {}).get("parts") or []))
    for content in contents:
        for part in content["parts"]:
            if isinstance(part.get("text"), str):
                chars += len(part["text"])
            elif "functionResponse" in part:
                response = part["functionResponse"]["response"]
                result = response.get("result")
                chars += len(result) if isinstance(result, str) else len(orjson.dumps(response))
    return chars


def _tool_name(data: dict[str, Any], names: list[str], last_is_user: bool, text: str) -> str | None:
    if not names:
        return None
    calling = (data.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = calling.get("mode", "AUTO")
    if mode == "NONE":
        return None
    allowed = calling.get("allowedFunctionNames")
    if mode in ("ANY", "VALIDATED") and allowed:
        return str(allowed[0])
    # Only a user's words trigger a call, so agent loops that send the result back terminate.
    if not last_is_user:
        return None
    if mode == "ANY" or "weather" in text.lower():
        return names[0]
    return None


def plan_reply(defaults: Controls, raw_body: bytes, fake_headers: Headers, model: str) -> GeminiPlan:
    controls = defaults
    if fake_headers:
        controls = controls.copy()
        for name, value in fake_headers:
            key = _HEADER_KEYS.get(name)
            if key is None:
                raise BadRequestError(f"Unknown fake header {name.decode('latin-1')!r}.")
            controls.set(key, value.decode("latin-1").strip(), "header")
    try:
        data = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        raise BadRequestError("Invalid JSON payload received. Unexpected token.") from None
    data = _check_fields(data, _TOP_LEVEL, "")
    contents = _check_contents(data)
    names = _check_tools(data)
    limit = _check_generation_config(data)

    user_turns = [c for c in contents if c.get("role", "user") == "user" and _texts(c["parts"])]
    last_user_text = " ".join(_texts(user_turns[-1]["parts"])) if user_turns else ""
    last = contents[-1]
    last_is_user = last.get("role", "user") == "user" and "functionResponse" not in last["parts"][-1]
    dialect: dict[str, str] = {}
    if DIRECTIVE_OPEN in last_user_text:
        last_user_text, dialect = take_dialect_directives(last_user_text, model)
        last_user_text, controls = _apply_directives(last_user_text, controls, model)
    tool = _tool_name(data, names, last_is_user, last_user_text)
    if dialect.get("gemini_block"):
        tool = None

    words: tuple[str, ...] | list[str]
    if tool is not None:
        words = ()
    elif controls.words is not None:
        words = _lorem(controls.words)
    else:
        words = (REPLY_PREFIX + last_user_text.strip()[:SNIPPET_CHARS]).split()
    finish_reason = "STOP"
    if limit is not None and len(words) > limit:
        words = words[:limit]
        finish_reason = "MAX_TOKENS"
    prompt_tokens = max(1, (_prompt_chars(data, contents) + 3) // 4)
    return GeminiPlan(
        model=model,
        controls=controls,
        words=words,
        tool=tool,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        dialect=dialect,
    )


# --- embeddings --------------------------------------------------------------------------


def _embed_item(data: Any, where: str, model: str, *, batched: bool) -> tuple[str, int]:
    """The text and vector size of one ``EmbedContentRequest``, validated."""
    data = _check_fields(data, _EMBED_FIELDS, where)
    name = data.get("model")
    if batched and name != f"models/{model}":
        # The URL names the model; each request in a batch must repeat it.
        raise BadRequestError(f"* BatchEmbedContentsRequest.{where}.model: must be models/{model}, as in the URL.\n")
    if name is not None and not (isinstance(name, str) and name.startswith("models/")):
        raise BadRequestError(f"* EmbedContentRequest.model: unexpected model name format {name!r}.\n")
    at = f"{where}.content" if where else "content"
    content = _check_fields(data.get("content"), frozenset({"role", "parts"}), at)
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise BadRequestError(f"* EmbedContentRequest.{at}.parts: parts must not be empty.\n")
    texts = _texts([_check_part(part, f"{at}.parts[{j}]") for j, part in enumerate(parts)])
    if not texts:
        raise BadRequestError(f"* EmbedContentRequest.{at}: only text parts are embedded, and there is none.\n")
    task = data.get("taskType")
    if task is not None and task not in _TASK_TYPES:
        raise BadRequestError(
            f"Invalid value at '{where + '.' if where else ''}task_type' "
            f'(type.googleapis.com/google.ai.generativelanguage.v1beta.TaskType), "{task}"'
        )
    if data.get("title") is not None and not isinstance(data["title"], str):
        raise BadRequestError(f"Invalid value at '{where + '.' if where else ''}title', expected a string.")
    dimensions = data.get("outputDimensionality", DEFAULT_DIMENSIONS)
    if type(dimensions) is not int or not 1 <= dimensions <= MAX_EMBED_DIMENSIONS:
        raise BadRequestError(
            f"* EmbedContentRequest.output_dimensionality: must be between 1 and {MAX_EMBED_DIMENSIONS}.\n"
        )
    return " ".join(texts), dimensions


def _embed_items(raw_body: bytes, model: str, *, batch: bool) -> list[tuple[str, int]]:
    try:
        data = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        raise BadRequestError("Invalid JSON payload received. Unexpected token.") from None
    if not batch:
        return [_embed_item(data, "", model, batched=False)]
    requests = _check_fields(data, frozenset({"requests"}), "").get("requests")
    if not isinstance(requests, list) or not requests:
        raise BadRequestError("* BatchEmbedContentsRequest.requests: requests must not be empty.\n")
    if len(requests) > MAX_EMBED_BATCH:
        raise BadRequestError(
            f"* BatchEmbedContentsRequest.requests: at most {MAX_EMBED_BATCH} requests can be in one batch\n"
        )
    return [_embed_item(item, f"requests[{i}]", model, batched=True) for i, item in enumerate(requests)]


async def _embed(app: FakeUpstream, scope: Scope, receive: Receive, send: Send, model: str, *, batch: bool) -> None:
    """``:embedContent`` and ``:batchEmbedContents``; like Gemini, no usage is reported."""
    stats = app.stats
    stats.requests += 1
    raw_body = await _read_body(receive)
    headers: Headers = scope["headers"]
    query = scope.get("query_string", b"").decode("latin-1")
    stats.last_request = (scope["method"], f"{scope['path']}?{query}" if query else scope["path"], headers, raw_body)
    key = next((value for name, value in headers if name == b"x-goog-api-key"), b"")
    if not key.strip() and not parse_qs(query).get("key"):
        stats.errors += 1
        await _answer(send, 403, error_body(403, _UNREGISTERED_CALLER))
        return
    dialect: dict[str, str] = {}
    controls = app.defaults
    try:
        items = _embed_items(raw_body, model, batch=batch)
        text, dimensions = items[0]
        if DIRECTIVE_OPEN in text:
            text, dialect = take_dialect_directives(text, model)
            text, controls = _apply_directives(text, controls, model)
            items[0] = (text, dimensions)
    except BadRequestError as exc:
        stats.errors += 1
        await _answer(send, 400, error_body(400, exc.message))
        return
    if dialect.get("gemini_error") is not None:
        stats.errors += 1
        await _answer(
            send, 400, _api_key_invalid() if dialect["gemini_error"] == "api_key_invalid" else _failed_precondition()
        )
        return
    if controls.latency_ms > 0:
        await asyncio.sleep(controls.latency_ms / 1000)
    if controls.status is not None:
        stats.errors += 1
        await _answer(send, controls.status, injected_error(controls.status, model, controls.retry_after))
        return
    embeddings = [{"values": vector(text, dimensions)} for text, dimensions in items]
    stats.completed += 1
    await _answer(send, 200, orjson.dumps({"embeddings": embeddings} if batch else {"embedding": embeddings[0]}))


# --- the routes -----------------------------------------------------------------------


async def _answer(send: Send, status: int, body: bytes) -> None:
    await _send_json(send, status, body, _JSON_HEADERS)


async def handle(app: FakeUpstream, scope: Scope, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    model, _, action = path[len(MODELS_PATH) :].rpartition(":") if path.startswith(MODELS_PATH) else ("", "", "")
    if not model or "/" in model or action not in _GENERATE_ACTIONS | _EMBED_ACTIONS:
        await _answer(send, 404, error_body(404, f"Requested entity was not found: {path}"))
        return
    if scope["method"] != "POST":
        await _answer(send, 405, error_body(405, f"Method {scope['method']} is not allowed.", status="UNIMPLEMENTED"))
        return
    if action in _EMBED_ACTIONS:
        await _embed(app, scope, receive, send, model, batch=action == "batchEmbedContents")
        return
    await _generate(app, scope, receive, send, model, streaming=action == "streamGenerateContent")


async def _generate(
    app: FakeUpstream, scope: Scope, receive: Receive, send: Send, model: str, *, streaming: bool
) -> None:
    stats = app.stats
    stats.requests += 1
    raw_body = await _read_body(receive)
    headers: Headers = scope["headers"]
    query = scope.get("query_string", b"").decode("latin-1")
    stats.last_request = (scope["method"], f"{scope['path']}?{query}" if query else scope["path"], headers, raw_body)
    params = parse_qs(query)

    key = b""
    fake_headers: Headers = []
    for name, value in headers:
        if name == b"x-goog-api-key":
            key = value
        elif name.startswith(b"x-fake-"):
            fake_headers.append((name, value))
    if not key.strip() and not params.get("key"):
        stats.errors += 1
        await _answer(send, 403, error_body(403, _UNREGISTERED_CALLER))
        return

    try:
        plan = plan_reply(app.defaults, raw_body, fake_headers, model)
    except BadRequestError as exc:
        stats.errors += 1
        await _answer(send, 400, error_body(400, exc.message))
        return
    if plan.error is not None:
        # Gemini checks the key before anything else, so no latency.
        stats.errors += 1
        await _answer(send, 400, _api_key_invalid() if plan.error == "api_key_invalid" else _failed_precondition())
        return

    controls = plan.controls
    if controls.latency_ms > 0:
        await asyncio.sleep(controls.latency_ms / 1000)
    if controls.status is not None:
        stats.errors += 1
        await _answer(send, controls.status, injected_error(controls.status, model, controls.retry_after))
        return
    if streaming:
        await _stream(app, plan, receive, send, sse=params.get("alt") == ["sse"])
    else:
        stats.completed += 1
        await _answer(send, 200, orjson.dumps(plan.response()))


async def _stream(app: FakeUpstream, plan: GeminiPlan, receive: Receive, send: Send, *, sse: bool) -> None:
    stats = app.stats
    controls = plan.controls
    responses: list[Any] = list(plan.stream_responses())
    failing = controls.fail_after_chunks is not None
    if failing:
        responses = responses[: controls.fail_after_chunks]
        responses.append({"error": _MIDSTREAM_ERROR})
    if sse:
        # Gemini frames events with CRLF; LF here, which the shared response faults
        # (truncate_stream, malformed_json) split on. Adapters must accept both.
        events = [b"data: " + orjson.dumps(r) + b"\n\n" for r in responses]
        headers = _SSE_HEADERS
    else:
        # Without alt=sse the events are the elements of one JSON array, sent as they come.
        events = [(b"[" if i == 0 else b",\r\n") + orjson.dumps(r) for i, r in enumerate(responses)]
        events.append(b"]")
        headers = _JSON_HEADERS
    await send_stream(send, receive, stats, headers, events, controls.chunk_delay_ms, failing=failing)


def register() -> None:
    """Add this dialect's routes with `providers.fake_upstream.register_dialect`."""
    register_dialect(PREFIX, handle)
