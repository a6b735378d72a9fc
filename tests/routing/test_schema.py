"""``parse_chat_request``: what a chat-completions body may look like, and what it tells the router."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from muxer_project.errors import APIError
from routing.schema import ChatRequest, parse_chat_request

USER = {"role": "user", "content": "hi"}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def parse(**fields: Any) -> ChatRequest:
    body = {"model": "fake-small", "messages": [USER], **fields}
    return parse_chat_request(orjson.dumps(body))


def rejection(**fields: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        parse(**fields)
    return caught.value


# --- accepted shapes --------------------------------------------------------------


def test_a_minimal_request_asks_for_nothing_special() -> None:
    request = parse()

    assert request == ChatRequest(
        payload={"model": "fake-small", "messages": [USER]},
        model="fake-small",
        stream=False,
        include_usage=False,
        max_output_tokens=None,
        has_images=False,
        has_tools=False,
        wants_json=False,
    )


def test_an_image_url_content_part_sets_has_images() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
    ]

    request = parse(messages=[{"role": "user", "content": content}])

    assert request.has_images is True


def test_text_only_content_parts_do_not_set_has_images() -> None:
    request = parse(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])

    assert request.has_images is False


def test_tools_set_has_tools() -> None:
    assert parse(tools=[WEATHER_TOOL], tool_choice="auto").has_tools is True


def test_an_empty_tools_array_does_not_set_has_tools() -> None:
    assert parse(tools=[]).has_tools is False


@pytest.mark.parametrize(
    ("response_format", "wants_json"),
    [
        ({"type": "json_object"}, True),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}, True),
        ({"type": "text"}, False),
    ],
)
def test_a_json_response_format_sets_wants_json(response_format: dict[str, Any], wants_json: bool) -> None:
    assert parse(response_format=response_format).wants_json is wants_json


def test_max_tokens_sets_the_output_limit() -> None:
    assert parse(max_tokens=50).max_output_tokens == 50


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse(max_tokens=50, max_completion_tokens=20).max_output_tokens == 20


def test_stream_with_include_usage() -> None:
    request = parse(stream=True, stream_options={"include_usage": True})

    assert (request.stream, request.include_usage) == (True, True)


def test_a_null_stream_means_no_stream() -> None:
    assert parse(stream=None).stream is False


def test_a_tool_call_round_trip_is_accepted() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]

    request = parse(messages=messages, tools=[WEATHER_TOOL])

    assert request.payload["messages"] == messages
    assert request.has_tools is True


def test_passthrough_parameters_are_kept_in_the_payload() -> None:
    request = parse(reasoning_effort="low", metadata={"team": "a"}, seed=7, user="u-1", stop=["\n"])

    assert request.payload["reasoning_effort"] == "low"
    assert request.payload["metadata"] == {"team": "a"}


# --- rejections -------------------------------------------------------------------


def test_it_rejects_an_image_part_without_a_url() -> None:
    error = rejection(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])

    assert (error.status, error.code, error.param) == (400, "invalid_request_error", "messages[0].content[0].image_url")


def test_it_rejects_a_content_part_of_unknown_type() -> None:
    error = rejection(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}])

    assert error.param == "messages[0].content[0]"


def test_it_rejects_a_text_part_without_text() -> None:
    error = rejection(messages=[USER, {"role": "user", "content": [{"type": "text", "text": 3}]}])

    assert error.param == "messages[1].content[0].text"
    assert error.message == "'messages[1].content[0].text' must be a string."


def test_it_rejects_an_empty_content_array() -> None:
    error = rejection(messages=[{"role": "user", "content": []}])

    assert error.param == "messages[0].content"


def test_it_rejects_a_user_message_without_content() -> None:
    error = rejection(messages=[{"role": "user"}])

    assert error.param == "messages[0].content"
    assert error.message == "'messages[0].content' is required for role 'user'."


def test_it_rejects_an_assistant_message_with_neither_content_nor_tool_calls() -> None:
    error = rejection(messages=[USER, {"role": "assistant", "content": None}])

    assert error.param == "messages[1].content"


def test_it_rejects_a_tool_message_without_its_call_id() -> None:
    error = rejection(messages=[USER, {"role": "tool", "content": "sunny"}])

    assert error.param == "messages[1].tool_call_id"


def test_it_rejects_a_message_that_is_not_an_object() -> None:
    error = rejection(messages=["hi"])

    assert error.param == "messages[0]"


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        pytest.param({"type": "function"}, "tools", id="not-an-array"),
        pytest.param([{"type": "function", "function": {}}], "tools[0]", id="function-without-name"),
        pytest.param([WEATHER_TOOL, {"type": "retrieval"}], "tools[1]", id="not-a-function"),
        pytest.param(["get_weather"], "tools[0]", id="a-string"),
    ],
)
def test_it_rejects_malformed_tools(tools: Any, param: str) -> None:
    error = rejection(tools=tools)

    assert (error.status, error.param) == (400, param)


def test_it_rejects_an_unknown_tool_choice() -> None:
    assert rejection(tools=[WEATHER_TOOL], tool_choice="sometimes").param == "tool_choice"


def test_it_rejects_an_unknown_response_format() -> None:
    assert rejection(response_format={"type": "yaml"}).param == "response_format"


def test_it_rejects_stream_options_without_stream() -> None:
    error = rejection(stream_options={"include_usage": True})

    assert error.param == "stream_options"
    assert error.message == "'stream_options' is only allowed when 'stream' is true."


def test_it_rejects_a_non_boolean_include_usage() -> None:
    assert rejection(stream=True, stream_options={"include_usage": "yes"}).param == "stream_options.include_usage"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"n": 0}, "n", id="n-zero"),
        pytest.param({"n": 129}, "n", id="n-too-many"),
        pytest.param({"top_p": 1.5}, "top_p", id="top-p"),
        pytest.param({"presence_penalty": -3}, "presence_penalty", id="presence-penalty"),
        pytest.param({"frequency_penalty": True}, "frequency_penalty", id="frequency-penalty-bool"),
        pytest.param({"seed": 1.5}, "seed", id="seed-float"),
        pytest.param({"user": 42}, "user", id="user-int"),
        pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "stop", id="stop-five"),
        pytest.param({"model": ""}, "model", id="model-empty"),
        pytest.param({"model": 4}, "model", id="model-int"),
        pytest.param({"max_completion_tokens": 0}, "max_completion_tokens", id="max-completion-zero"),
        pytest.param({"max_completion_tokens": 20, "max_tokens": "lots"}, "max_tokens", id="max-tokens-beside"),
    ],
)
def test_it_rejects_an_out_of_range_or_mistyped_parameter(fields: dict[str, Any], param: str) -> None:
    error = rejection(**fields)

    assert (error.status, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "invalid_request_error",
        param,
    )


def test_it_names_the_first_unknown_argument_alphabetically() -> None:
    error = rejection(zeta=1, alpha=2)

    assert error.param == "alpha"
    assert error.message == "Unrecognized request argument supplied: alpha"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": {"text": 1}}]}]}, "messages[0].content[0]"),
        ({"response_format": {"type": ["json_object"]}}, "response_format"),
    ],
)
def test_it_rejects_unhashable_values_where_a_name_is_expected(fields: dict[str, Any], param: str) -> None:
    # Found by fuzzing: a list or object here used to escape as a TypeError (a 500).
    error = rejection(**fields)

    assert (error.status, error.param) == (400, param)
