"""Validation of an OpenAI chat-completions request body.

Hand-written rather than a DRF serializer: it runs on every proxied request,
and a serializer costs more than the rest of the gateway's own work together.
Each failure names the offending parameter, as OpenAI's API does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from billing.tokens import estimate_prompt_tokens
from muxer_project.errors import APIError, invalid_request

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})

# Accepted and passed to the provider without further checks.
PASSTHROUGH = frozenset(
    {
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
        "metadata",
        "reasoning_effort",
        "store",
        "service_tier",
        "modalities",
        "prediction",
        "audio",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
        "web_search_options",
        "functions",
        "function_call",
    }
)
CHECKED = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "seed",
        "user",
        "stream",
        "stream_options",
        "presence_penalty",
        "frequency_penalty",
        "muxer",
    }
)
KNOWN = PASSTHROUGH | CHECKED

STRATEGIES = ("heuristic", "semantic", "cascade", "hybrid")
# `model` values that ask the gateway to choose: the org's default strategy, or one by name.
STRATEGY_ALIASES = {f"muxer/{name}": name for name in STRATEGIES}
QUALITY_TIER_NAMES = {"economy": 1, "standard": 2, "premium": 3}
MUXER_OPTIONS = frozenset({"strategy", "max_cost_usd", "quality_floor"})
# A cap above this is a typo, not a budget.
MAX_COST_CAP_USD = Decimal(10_000)


@dataclass(frozen=True, slots=True)
class RoutingOptions:
    """What the client asked of the router: in the ``muxer`` body field, headers or the model alias."""

    strategy: str | None = None
    max_cost_usd: Decimal | None = None
    quality_floor: int | None = None


@dataclass(slots=True)
class ChatRequest:
    payload: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_output_tokens: int | None
    has_images: bool
    has_tools: bool
    wants_json: bool
    options: RoutingOptions = RoutingOptions()
    _prompt_tokens: int | None = field(default=None, repr=False, compare=False)

    @property
    def prompt_tokens(self) -> int:
        """The estimated prompt tokens, worked out once per request."""
        if self._prompt_tokens is None:
            self._prompt_tokens = estimate_prompt_tokens(self.payload["messages"])
        return self._prompt_tokens

    def replace_messages(self, messages: list[dict[str, Any]]) -> None:
        """Send other messages (the PII guard's masked copies); the token estimate follows them."""
        self.payload["messages"] = messages
        self._prompt_tokens = None

    @property
    def routed(self) -> bool:
        """Whether the gateway picks the model (``auto`` or a strategy alias) rather than the client."""
        return self.model == "auto" or self.model in STRATEGY_ALIASES


def _one_of(value: Any, allowed: frozenset[str]) -> bool:
    # A membership test on a list or dict would raise TypeError (unhashable), not say no.
    return isinstance(value, str) and value in allowed


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_in(payload: dict[str, Any], name: str, low: float, high: float) -> None:
    value = payload.get(name)
    if value is None:
        return
    if not _is_number(value):
        raise invalid_request(f"'{name}' must be a number.", param=name)
    if not low <= value <= high:
        raise invalid_request(f"'{name}' must be between {low:g} and {high:g}; got {value!r}.", param=name)


def _positive_int(payload: dict[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise invalid_request(f"'{name}' must be a positive integer.", param=name)
    return int(value)


def _check_content(content: Any, index: int, role: str) -> bool:
    """Validate one message's content; return whether it carries an image."""
    param = f"messages[{index}].content"
    if content is None:
        if role in ("assistant", "function"):
            return False
        raise invalid_request(f"'{param}' is required for role '{role}'.", param=param)
    if isinstance(content, str):
        return False
    if not isinstance(content, list) or not content:
        raise invalid_request(f"'{param}' must be a string or a non-empty array of content parts.", param=param)
    has_image = False
    for j, part in enumerate(content):
        part_param = f"{param}[{j}]"
        if not isinstance(part, dict) or not _one_of(part.get("type"), PART_TYPES):
            raise invalid_request(
                f"'{part_param}' must be an object whose 'type' is one of {sorted(PART_TYPES)}.", param=part_param
            )
        kind = part["type"]
        if kind == "text" and not isinstance(part.get("text"), str):
            raise invalid_request(f"'{part_param}.text' must be a string.", param=f"{part_param}.text")
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise invalid_request(
                    f"'{part_param}.image_url.url' must be a string.", param=f"{part_param}.image_url"
                )
            has_image = True
    return has_image


def _check_messages(messages: Any) -> bool:
    if messages is None:
        raise invalid_request("'messages' is required.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty array.", param="messages")
    has_images = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid_request(f"'messages[{i}].role' must be one of {sorted(ROLES)}.", param=f"messages[{i}].role")
        if role == "assistant" and message.get("content") is None and not message.get("tool_calls"):
            raise invalid_request(f"'messages[{i}]' needs 'content' or 'tool_calls'.", param=f"messages[{i}].content")
        has_images |= _check_content(message.get("content"), i, role)
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise invalid_request(
                f"'messages[{i}].tool_call_id' is required for role 'tool'.", param=f"messages[{i}].tool_call_id"
            )
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise invalid_request(f"'messages[{i}].tool_calls' must be an array.", param=f"messages[{i}].tool_calls")
    return has_images


def _check_tools(payload: dict[str, Any]) -> bool:
    tools = payload.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid_request("'tools' must be an array.", param="tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or tool.get("type") != "function" or not function.get("name"):
                raise invalid_request(
                    f"'tools[{i}]' must be {{'type': 'function', 'function': {{'name': ...}}}}.", param=f"tools[{i}]"
                )
    choice = payload.get("tool_choice")
    if choice is not None and not (
        choice in TOOL_CHOICES if isinstance(choice, str) else isinstance(choice, dict) and choice.get("type")
    ):
        raise invalid_request("'tool_choice' must be 'none', 'auto', 'required' or an object.", param="tool_choice")
    return bool(tools)


def _check_response_format(payload: dict[str, Any]) -> bool:
    response_format = payload.get("response_format")
    if response_format is None:
        return False
    if not isinstance(response_format, dict) or not _one_of(response_format.get("type"), RESPONSE_FORMATS):
        raise invalid_request(
            f"'response_format.type' must be one of {sorted(RESPONSE_FORMATS)}.", param="response_format"
        )
    return bool(response_format["type"] != "text")


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise invalid_request("The request body is empty; send a JSON object.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"The request body is not valid JSON ({exc.msg} at position {exc.pos}).") from None
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.")
    return payload


def parse_chat_request(body: bytes) -> ChatRequest:
    payload = _json_object(body)
    unknown = payload.keys() - KNOWN
    if unknown:
        name = sorted(unknown)[0]
        raise invalid_request(f"Unrecognized request argument supplied: {name}", param=name)

    model = payload.get("model")
    if model is None:
        raise invalid_request("'model' is required.", param="model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' must be a non-empty string.", param="model")
    has_images = _check_messages(payload.get("messages"))

    _number_in(payload, "temperature", 0, 2)
    _number_in(payload, "top_p", 0, 1)
    _number_in(payload, "presence_penalty", -2, 2)
    _number_in(payload, "frequency_penalty", -2, 2)
    n = _positive_int(payload, "n")
    if n is not None and n > 128:
        raise invalid_request("'n' must be at most 128.", param="n")
    # Both are checked; the newer max_completion_tokens wins when both are sent.
    max_completion_tokens = _positive_int(payload, "max_completion_tokens")
    max_tokens = _positive_int(payload, "max_tokens")
    if max_completion_tokens is not None:
        max_tokens = max_completion_tokens
    seed = payload.get("seed")
    if seed is not None and not _is_int(seed):
        raise invalid_request("'seed' must be an integer.", param="seed")
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid_request("'user' must be a string.", param="user")
    stop = payload.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise invalid_request("'stop' must be a string or an array of at most 4 strings.", param="stop")

    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_request("'stream' must be a boolean.", param="stream")
    stream_options = payload.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise invalid_request("'stream_options' must be an object.", param="stream_options")
        if not stream:
            raise invalid_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
        include_usage = stream_options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise invalid_request(
                "'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage"
            )

    options = parse_routing_options(payload.pop("muxer", None), param="muxer")
    return ChatRequest(
        payload=payload,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_output_tokens=max_tokens,
        has_images=has_images,
        has_tools=_check_tools(payload),
        wants_json=_check_response_format(payload),
        options=options,
    )


def parse_strategy(value: Any, *, param: str) -> str:
    if not _one_of(value, frozenset(STRATEGIES)):
        raise invalid_request(f"'{param}' must be one of {', '.join(STRATEGIES)}; got {value!r}.", param=param)
    return str(value)


def parse_max_cost(value: Any, *, param: str) -> Decimal:
    """A cost cap in USD, from a JSON number or a header's text. Floats become Decimal through their text."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid_request(f"'{param}' must be a number of US dollars.", param=param)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise invalid_request(f"'{param}' must be a number of US dollars; got {value!r}.", param=param) from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_COST_CAP_USD:
        raise invalid_request(
            f"'{param}' must be more than 0 and at most {MAX_COST_CAP_USD} US dollars; got {value!r}.", param=param
        )
    return amount


def parse_quality_floor(value: Any, *, param: str) -> int:
    if _is_int(value) and 1 <= value <= 3:
        return int(value)
    if isinstance(value, str) and value in QUALITY_TIER_NAMES:
        return QUALITY_TIER_NAMES[value]
    raise invalid_request(
        f"'{param}' must be a quality tier: economy, standard or premium (or 1 to 3); got {value!r}.", param=param
    )


def parse_routing_options(raw: Any, *, param: str) -> RoutingOptions:
    """The ``muxer`` body field, which SDKs send through ``extra_body``; removed before the provider sees the body."""
    if raw is None:
        return RoutingOptions()
    if not isinstance(raw, dict):
        raise invalid_request(f"'{param}' must be an object.", param=param)
    unknown = raw.keys() - MUXER_OPTIONS
    if unknown:
        name = sorted(unknown)[0]
        raise invalid_request(
            f"Unrecognized field '{param}.{name}'; use {', '.join(sorted(MUXER_OPTIONS))}.", param=f"{param}.{name}"
        )
    strategy = raw.get("strategy")
    max_cost = raw.get("max_cost_usd")
    floor = raw.get("quality_floor")
    return RoutingOptions(
        strategy=None if strategy is None else parse_strategy(strategy, param=f"{param}.strategy"),
        max_cost_usd=None if max_cost is None else parse_max_cost(max_cost, param=f"{param}.max_cost_usd"),
        quality_floor=None if floor is None else parse_quality_floor(floor, param=f"{param}.quality_floor"),
    )


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"The request body is larger than the gateway's limit of {limit} bytes.",
        type="invalid_request_error",
        code="request_too_large",
    )


EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
MAX_EMBEDDING_INPUTS = 2048


@dataclass(slots=True)
class EmbeddingRequest:
    payload: dict[str, Any]
    model: str
    texts: list[str]


def _check_embedding_input(value: Any) -> list[str]:
    """The input's texts, for estimates; token-id arrays count as text of their ids."""
    if isinstance(value, str):
        if not value:
            raise invalid_request("'input' must not be empty.", param="input")
        return [value]
    if not isinstance(value, list) or not value:
        raise invalid_request("'input' must be a string or a non-empty array.", param="input")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise invalid_request(f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items.", param="input")
    if all(isinstance(item, str) and item for item in value):
        return list(value)
    if all(_is_int(item) for item in value):
        return [" ".join(map(str, value))]
    if all(isinstance(item, list) and item and all(_is_int(i) for i in item) for item in value):
        return [" ".join(map(str, item)) for item in value]
    raise invalid_request(
        "'input' must be a string, an array of non-empty strings, or an array of token arrays.", param="input"
    )


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    payload = _json_object(body)
    unknown = payload.keys() - EMBEDDING_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise invalid_request(f"Unrecognized request argument supplied: {name}", param=name)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a non-empty string.", param="model")
    if "input" not in payload:
        raise invalid_request("'input' is required.", param="input")
    texts = _check_embedding_input(payload["input"])
    encoding = payload.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise invalid_request("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    _positive_int(payload, "dimensions")
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid_request("'user' must be a string.", param="user")
    return EmbeddingRequest(payload=payload, model=model, texts=texts)
