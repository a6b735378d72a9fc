"""How the cascade judges an answer: finish reason, refusals, hedging, length, JSON and log-probabilities."""

from __future__ import annotations

import math
from typing import Any

import pytest

from routing.cascade import score_answer
from tests.routing.test_selection import request

GOOD = "Paris is the capital of France, and it has been for a very long time."


def completion(content: Any = GOOD, *, finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": finish}
        ]
    }


def judge(body: dict[str, Any], prompt: str = "What is the capital of France?", **fields: Any) -> Any:
    return score_answer(request("auto", content=prompt, **fields), body, prompt)


def test_a_plain_complete_answer_scores_full_marks() -> None:
    verdict = judge(completion())

    assert (verdict.score, verdict.reasons) == (1.0, ())


def test_an_answer_cut_off_by_the_length_limit_scores_half() -> None:
    assert judge(completion(finish="length")).score == 0.5


def test_a_content_filter_stop_scores_zero() -> None:
    assert judge(completion(finish="content_filter")).score == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot assist with this request.",
        "As an AI language model, I do not have opinions.",
    ],
)
def test_a_refusal_scores_low(text: str) -> None:
    verdict = judge(completion(text))

    assert verdict.score == pytest.approx(0.1)
    assert "refusal" in verdict.reasons


def test_the_apis_refusal_field_counts_as_a_refusal() -> None:
    assert judge(completion(None, refusal="No.")).reasons == ("refusal",)


def test_hedging_lowers_the_score() -> None:
    verdict = judge(completion("I'm not sure, but it might be Lyon or Paris, depending on the period you mean."))

    assert verdict.score == pytest.approx(0.6)
    assert verdict.reasons == ("hedging",)


def test_an_empty_answer_scores_zero() -> None:
    assert judge(completion("   ")).score == 0.0
    assert judge({"choices": []}).score == 0.0


def test_a_one_liner_to_a_request_for_an_explanation_is_too_short() -> None:
    verdict = judge(completion("It depends."), prompt="Explain in detail how TCP congestion control works.")

    assert verdict.reasons == ("too_short",)
    assert verdict.score == 0.5


def test_a_short_answer_to_a_short_question_is_fine() -> None:
    assert judge(completion("Paris."), prompt="Capital of France?").score == 1.0


def test_invalid_json_scores_zero_when_json_was_asked_for() -> None:
    fmt = {"type": "json_object"}

    assert judge(completion('{"city": "Paris"}'), response_format=fmt).score == 1.0
    verdict = judge(completion('{"city": "Par'), response_format=fmt)
    assert (verdict.score, verdict.reasons) == (0.0, ("invalid_json",))


def test_a_tool_call_is_an_answer() -> None:
    body = completion(None, finish="tool_calls", tool_calls=[{"id": "c1", "type": "function"}])

    assert judge(body).score == 1.0


def test_low_token_logprobs_lower_the_score() -> None:
    body = completion()
    body["choices"][0]["logprobs"] = {"content": [{"token": "Paris", "logprob": math.log(0.2)}]}

    verdict = judge(body)

    assert verdict.score == pytest.approx(0.5 + 0.5 * 0.2)
    assert verdict.reasons == ("low_logprob:0.20",)


def test_confident_logprobs_keep_the_score_high() -> None:
    body = completion()
    body["choices"][0]["logprobs"] = {"content": [{"token": "Paris", "logprob": math.log(0.98)}]}

    assert judge(body).score == pytest.approx(0.99)
