"""Every fault the fake upstream can inject, on the primary model: what share the fallback serves, at what cost."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import Stack, record
from .load import Run, drive

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

FALLBACK = {"X-Muxer-Fallbacks": "fake-large"}
# Faults before the first byte reaches the client: the gateway can still retry and fall back, so all must be served.
BEFORE_THE_ANSWER = [
    ("status=500", False),
    ("status=503", False),
    ("status=429 retry_after=0", False),
    ("first_byte_delay_ms=1500", False),
    ("reset_after_bytes=0", False),
    ("malformed_json=1", False),
    ("status=500", True),
    ("first_byte_delay_ms=1500", True),
    ("reset_after_bytes=0", True),
    ("malformed_json=1", True),
    ("fail_after_chunks=0", True),
]
# Faults in the middle of a stream: the client already has part of the answer, so the gateway ends the stream
# with an error event (never a fake [DONE]) and records it; no fallback is possible.
MID_STREAM = ["fail_after_chunks=3", "truncate_stream=1", "reset_after_bytes=400"]


def body(fault: str | None, stream: bool) -> dict[str, object]:
    text = "Tell me about Paris" if fault is None else f"Tell me about Paris [fake {fault} model=fake-small]"
    return {"model": "fake-small", "messages": [{"role": "user", "content": text}], "stream": stream}


def complete(run: Run, stream: bool) -> int:
    """Answers that are whole: a 200, and for a stream its [DONE] without an error event."""
    if not stream:
        return len(run.served)
    return sum(1 for o in run.served if b"data: [DONE]" in o.body and b'"error"' not in o.body)


def load(stack: Stack, fault: str | None, stream: bool, count: int) -> Run:
    return asyncio.run(
        drive(
            stack.url,
            stack.key,
            lambda _: body(fault, stream),
            count=count,
            concurrency=5,
            prefix="fault",
            headers=FALLBACK,
        )
    )


def test_the_fallback_serves_every_fault_before_the_answer_and_mid_stream_faults_are_recorded(stack: Stack) -> None:
    load(stack, None, False, 20)  # warm-up: each worker's first requests open its pools
    baseline = load(stack, None, False, 40)
    baseline_stream = load(stack, None, True, 40)
    assert complete(baseline, False) == 40
    assert complete(baseline_stream, True) == 40
    figures: dict[str, dict[str, float]] = {}

    for fault, stream in BEFORE_THE_ANSWER:
        count = 10 if "delay" in fault else 30
        run = load(stack, fault, stream, count)
        name = f"{fault}{' (stream)' if stream else ''}"
        base = baseline_stream if stream else baseline
        figures[name] = {
            "served_by_fallback_pct": round(100 * complete(run, stream) / count, 1),
            "added_p99_ms": round(1000 * (run.p99() - base.p99()), 1),
        }
        assert complete(run, stream) == count, (name, run.statuses())
        rows = stack.rows([o.request_id for o in run.outcomes])
        # Each request is billed once, to the model that answered.
        assert all(len(found) == 1 and found[0].model == "fake-large" for found in rows.values()), name

    for fault in MID_STREAM:
        run = load(stack, fault, True, 20)
        ended_with_error = sum(1 for o in run.served if b'"error"' in o.body and b"data: [DONE]" not in o.body)
        rows = stack.rows([o.request_id for o in run.outcomes])
        figures[f"{fault} (stream)"] = {
            "served_by_fallback_pct": 0.0,
            "ended_with_error_event_pct": 100 * ended_with_error / 20,
        }
        assert ended_with_error == 20, (fault, run.statuses())
        assert all(len(found) == 1 and found[0].status == "error" for found in rows.values()), fault

    record("upstream_faults", **dict(figures.items()))
