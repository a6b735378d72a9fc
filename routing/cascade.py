"""How a cascade judges an answer: good enough to return, or escalate to the next tier.

The score starts at 1 and each sign of a weak answer multiplies it down:

- ``finish_reason``: cut off by the length limit, or stopped by a content filter;
- a refusal (the API's ``refusal`` field, or the usual phrases) or hedging;
- length against what the prompt asked for: an empty answer, or a one-liner
  to a request for an essay, code or an explanation;
- invalid JSON when the request asked for JSON;
- the model's own token log-probabilities, when the request asked for them.

Each factor is recorded, so the route's explanation says why it escalated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from .schema import ChatRequest

REFUSAL = re.compile(
    r"\b(?:i'?m sorry,? but i (?:can(?:not|'t)|am unable|won't)|i can(?:not|'t) (?:help|assist|provide|comply)|"
    r"i am unable to|i'm unable to|as an ai(?: language model)?|i (?:must|have to) decline)\b"
)
HEDGE = re.compile(
    r"\b(?:i'?m not (?:sure|certain)|i don'?t know|i do not know|it'?s (?:hard|difficult) to say|"
    r"i (?:may|might) be wrong|i cannot be certain|unclear to me|i'?m not able to determine)\b"
)
# Asks that expect a substantial answer, and the fewest words such an answer has.
LONG_ASK = re.compile(
    r"\b(?:explain|describe|write|essay|implement|step[- ]by[- ]step|in detail|analy[sz]e|compare|code|"
    r"function|program|story|report|plan)\b"
)
SUBSTANTIAL_WORDS = 25
# Only the start of an answer is searched for refusals and hedges: that is where models put them.
SCAN_CHARS = 600

FACTORS = {
    "length_cut": 0.5,
    "content_filter": 0.0,
    "empty": 0.0,
    "refusal": 0.1,
    "hedging": 0.6,
    "too_short": 0.5,
    "invalid_json": 0.0,
}


@dataclass(frozen=True, slots=True)
class AnswerScore:
    score: float
    reasons: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        return f"{self.score:.2f}" + (f" ({','.join(self.reasons)})" if self.reasons else "")


def _answer_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _mean_logprob(choice: dict[str, Any]) -> float | None:
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    values = [t["logprob"] for t in tokens or () if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)]
    return sum(values) / len(values) if values else None


def score_answer(request: ChatRequest, body: dict[str, Any], prompt: str) -> AnswerScore:
    """Judge a chat completion (OpenAI shape) as an answer to ``request``; ``prompt`` is the last user turn."""
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return AnswerScore(0.0, ("empty",))
    choice = choices[0]
    message = choice.get("message") or {}
    reasons: list[str] = []
    finish = choice.get("finish_reason")
    if finish == "length":
        reasons.append("length_cut")
    elif finish == "content_filter":
        reasons.append("content_filter")
    text = _answer_text(message)
    if message.get("tool_calls"):
        # A tool call is an answer of its own kind; judge its arguments only when JSON is at stake.
        pass
    elif message.get("refusal"):
        reasons.append("refusal")
    elif not text.strip():
        reasons.append("empty")
    else:
        head = text[:SCAN_CHARS].lower()
        if REFUSAL.search(head):
            reasons.append("refusal")
        elif HEDGE.search(head):
            reasons.append("hedging")
        if LONG_ASK.search(prompt.lower()) and len(text.split()) < SUBSTANTIAL_WORDS:
            reasons.append("too_short")
        if request.wants_json:
            try:
                orjson.loads(text)
            except orjson.JSONDecodeError:
                reasons.append("invalid_json")
    score = 1.0
    for reason in reasons:
        score *= FACTORS[reason]
    mean = _mean_logprob(choice)
    if mean is not None:
        # exp(mean log-prob) is the geometric-mean token probability: a model's confidence in its own words.
        confidence = math.exp(mean)
        score *= 0.5 + 0.5 * confidence
        if confidence < 0.5:
            reasons.append(f"low_logprob:{confidence:.2f}")
    return AnswerScore(round(score, 4), tuple(reasons))
