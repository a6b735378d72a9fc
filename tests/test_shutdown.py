"""Graceful shutdown: the gateway under its runner (``python -m muxer_project.serve``), in a process of its own.

On SIGTERM a worker turns unready at once, keeps serving through the drain
period, then refuses new connections, lets the streams in flight finish within
the grace period (cutting them at its end), records their usage, and exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from django.conf import settings

from billing.models import UsageRecord
from billing.usage import usage_drain
from muxer_project.redis import sync_redis
from tests.conftest import BREAKER_OFF, ROOT, FakeUpstream, database_url, free_port, provider_env, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Runner:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    usage_stream: str


@pytest.fixture
def start_runner(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., Runner]]:
    """Start the gateway under its runner with extra settings; stopped (if still running) after the test."""
    started: list[Runner] = []

    def start(**env_overrides: str) -> Runner:
        port = free_port()
        stream = f"muxer:usage:test:{uuid.uuid4().hex}"
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            **provider_env(fake_upstream.url),
            **BREAKER_OFF,
            "SECRET_KEY": settings.SECRET_KEY,
            "MUXER_USAGE_STREAM": stream,
            **env_overrides,
        }
        log = tmp_path / f"runner-{port}.log"
        command = [sys.executable, "-m", "muxer_project.serve", "--port", str(port), "--log-level", "info"]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        runner = Runner(process=process, url=f"http://127.0.0.1:{port}", log=log, usage_stream=stream)
        started.append(runner)
        wait_for(f"{runner.url}/healthz", process, log)
        return runner

    yield start
    for runner in started:
        if runner.process.poll() is None:
            stop(runner.process)
        if settings.REDIS_URL:
            sync_redis().delete(runner.usage_stream)


@dataclass
class SlowStream:
    """A streamed chat completion read on a thread of its own; ``first_chunk`` is set once it is under way."""

    url: str
    key: str
    words: int
    chunk_delay_ms: int
    first_chunk: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    request_id: str = ""
    body: bytes = b""
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._read, daemon=True)
        thread.start()
        return thread

    def _read(self) -> None:
        content = f"[fake chunk_delay_ms={self.chunk_delay_ms} words={self.words}] tell me a story"
        payload = {"model": "fake-small", "stream": True, "messages": [{"role": "user", "content": content}]}
        try:
            with httpx.stream(
                "POST",
                f"{self.url}/v1/chat/completions",
                json=payload,
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=60.0,
            ) as response:
                self.status = response.status_code
                self.request_id = response.headers.get("x-request-id", "")
                for part in response.iter_raw():
                    self.body += part
                    if b"data: {" in self.body:
                        self.first_chunk.set()
        except BaseException as exc:  # reported to the test, which asserts on it
            self.error = exc
        finally:
            self.first_chunk.set()


def _chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "fake-small", "messages": [{"role": "user", "content": "Hello gateway"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10.0,
    )


def _usage_row(request_id: str, stream: str) -> UsageRecord | None:
    if settings.REDIS_URL:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(settings, "MUXER_USAGE_STREAM", stream)
            while usage_drain(block_ms=0):
                pass
    return UsageRecord.objects.filter(request_id=request_id).first()


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1.0)
    except httpx.ConnectError:
        return True
    return False


def test_sigterm_drains_then_finishes_the_stream_and_records_its_usage(
    api_key: str, start_runner: Callable[..., Runner]
) -> None:
    drain = 2.0
    runner = start_runner(MUXER_SHUTDOWN_DRAIN_SECONDS=str(drain), MUXER_SHUTDOWN_GRACE_SECONDS="30")
    assert httpx.get(f"{runner.url}/readyz", timeout=5).status_code == 200
    # 16 chunks 300 ms apart: the stream outlives the drain period by a couple of seconds.
    slow = SlowStream(runner.url, api_key, words=16, chunk_delay_ms=300)
    reader = slow.start()
    assert slow.first_chunk.wait(10), "the stream never started"
    assert slow.error is None

    runner.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # (a) Unready at once.
    ready = httpx.get(f"{runner.url}/readyz", timeout=2)
    assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
    # (b) Still serving during the drain, and telling keep-alive clients to go elsewhere.
    served = _chat(runner.url, api_key)
    assert served.status_code == 200, served.text
    assert served.headers["connection"] == "close"
    assert time.monotonic() - signalled < drain, "the checks above took longer than the drain period"

    # (c) After the drain period, new connections are refused while the stream is still running.
    deadline = signalled + drain + 3
    while not _refused(runner.url):
        assert time.monotonic() < deadline, "the worker still accepts connections after the drain period"
        time.sleep(0.1)
    assert time.monotonic() - signalled >= drain - 0.2
    assert reader.is_alive(), "the stream ended before the worker stopped accepting; the test proves nothing"

    # (d) The stream finishes whole.
    reader.join(timeout=20)
    assert slow.error is None, repr(slow.error)
    assert slow.status == 200
    assert slow.body.endswith(b"data: [DONE]\n\n")
    words = [
        orjson.loads(event[len(b"data: ") :])["choices"][0]["delta"].get("content") or ""
        for event in slow.body.split(b"\n\n")
        if event.startswith(b"data: {") and b'"choices":[{' in event
    ]
    assert len("".join(words).split()) == 16

    # (e) The process exits 0, and the stream's usage is in the ledger.
    assert runner.process.wait(timeout=20) == 0, runner.log.read_text()
    row = _usage_row(slow.request_id, runner.usage_stream)
    assert row is not None, f"no usage row for {slow.request_id}"
    assert (row.status, row.stream, row.http_status, row.output_tokens) == ("ok", True, 200, 16)


def test_a_stream_past_the_grace_period_is_cut_and_its_usage_recorded(
    api_key: str, start_runner: Callable[..., Runner]
) -> None:
    runner = start_runner(MUXER_SHUTDOWN_DRAIN_SECONDS="0", MUXER_SHUTDOWN_GRACE_SECONDS="1")
    # 40 chunks 250 ms apart: ten seconds, far past the grace period.
    slow = SlowStream(runner.url, api_key, words=40, chunk_delay_ms=250)
    reader = slow.start()
    assert slow.first_chunk.wait(10), "the stream never started"

    signalled = time.monotonic()
    runner.process.send_signal(signal.SIGTERM)
    assert runner.process.wait(timeout=15) == 0, runner.log.read_text()
    # Stopped at the grace deadline (plus the server's own ticks), not at the stream's end.
    assert time.monotonic() - signalled < 5
    reader.join(timeout=10)
    assert not slow.body.endswith(b"data: [DONE]\n\n")

    row = _usage_row(slow.request_id, runner.usage_stream)
    assert row is not None, f"no usage row for the cut stream {slow.request_id}:\n{runner.log.read_text()}"
    assert (row.status, row.error_code, row.stream) == ("client_disconnected", "client_disconnected", True)
    # Billed for what was streamed before the cut: some words, not all forty.
    assert 0 < row.output_tokens < 40


def test_a_connection_made_before_the_socket_closes_still_gets_its_answer(start_runner: Callable[..., Runner]) -> None:
    """A client (a proxy, on a fresh connection) that connected before the listening socket closed and sends its
    request only after: answered, not reset. uvicorn alone closes such a connection at once, and a proxy does not
    retry a POST it has already sent."""
    runner = start_runner(MUXER_SHUTDOWN_DRAIN_SECONDS="0.3")
    port = int(runner.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as early:
        runner.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _refused(runner.url):  # the drain is over and the socket closed: new connections are refused
            assert time.monotonic() < deadline, "the runner never stopped accepting"
            time.sleep(0.01)
        early.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := early.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    assert runner.process.wait(timeout=15) == 0, runner.log.read_text()


def test_with_workers_a_stopping_runner_refuses_new_connections_instead_of_dropping_them(
    start_runner: Callable[..., Runner],
) -> None:
    """Under uvicorn's supervisor (two workers) every request made while the runner stops is either answered or
    refused at connect, which a proxy retries elsewhere; none is taken in and then dropped (the supervisor's own
    copy of the listening socket would keep it open after the workers have closed theirs)."""
    runner = start_runner(MUXER_SHUTDOWN_DRAIN_SECONDS="0.2", WEB_CONCURRENCY="2")
    runner.process.send_signal(signal.SIGTERM)
    outcomes: list[int | str] = []
    deadline = time.monotonic() + 20
    while runner.process.poll() is None and time.monotonic() < deadline:
        try:
            outcomes.append(httpx.get(f"{runner.url}/healthz", timeout=2.0).status_code)
        except httpx.ConnectError:
            outcomes.append("refused")
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)
        time.sleep(0.01)
    assert runner.process.wait(timeout=15) == 0, runner.log.read_text()
    assert "refused" in outcomes, outcomes
    assert set(outcomes) <= {200, "refused"}, outcomes
