"""PostgreSQL (or any database) unreachable.

- A request whose key, catalog and budgets a process has cached is still
  served, from a copy past its lifetime too (``MUXER_STALE_CACHE_SECONDS``);
  its usage waits on the Redis stream and is written once the database is back.
- A request that needs the database gets 503 ``service_unavailable`` with
  ``Retry-After``, never a 500: on the proxy, on DRF views (JSON) and on
  console pages (a plain page).
- The usage writer survives the outage: it acknowledges nothing it has not
  committed, backs off, and writes everything once the database answers again.

In process, the database is taken away by making every connection attempt
fail as an unreachable server's would. The PostgreSQL tests put a TCP relay
between real processes (the gateway, the usage writer) and the database, and
cut it: connections are refused, and those open are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
from django.conf import settings
from django.db import OperationalError, connection, connections
from django.test import AsyncClient, Client
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import Organization, User
from billing.models import UsageRecord
from billing.usage import GROUP, UsageEvent, usage_pending
from muxer_project.redis import sync_redis
from tests.conftest import ROOT, FakeUpstream, database_url, free_port, gateway_processes, stop
from tests.factories import issue_key
from tests.routing.harness import chat, post, usage_rows

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def database_down() -> Iterator[None]:
    """Every attempt to use a connection, on any thread, fails as with a server that refuses connections."""

    def refuse(self: object) -> None:
        raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')

    with mock.patch.object(type(connections["default"]), "ensure_connection", refuse):
        yield


# --- the proxy, in process ---------------------------------------------------------


@pytest.fixture
def unseen_key(organization: Organization, owner: User, catalog: None) -> str:
    """A key no process has looked up yet."""
    return issue_key(organization, created_by=owner).secret


# Served requests queue their usage on the Redis stream; without Redis it is written directly, which needs the
# database (such a request gets 503 rather than an answer nobody is billed for).


@pytest.mark.redis
async def test_a_cached_key_is_served_while_the_database_is_down(api_key: str, upstream: FakeUpstream) -> None:
    assert (await post(chat(), key=api_key)).status == 200
    with database_down():
        replies = [await post(chat(), key=api_key) for _ in range(3)]
        assert usage_pending() == 4
    assert [reply.status for reply in replies] == [200, 200, 200]
    assert replies[0].json()["choices"][0]["message"]["content"] == "Fake reply to: Hello gateway"
    # Back up: the queued usage reaches the ledger.
    rows = await usage_rows()
    assert {reply.headers["x-request-id"] for reply in replies} <= {row.request_id for row in rows}
    assert len(rows) == 4


@pytest.mark.redis
async def test_a_copy_past_its_lifetime_serves_during_an_outage(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    for name in ("MUXER_KEY_CACHE_SECONDS", "MUXER_CATALOG_CACHE_SECONDS", "MUXER_BUDGET_CACHE_SECONDS"):
        setattr(settings, name, 0.1)
    assert (await post(chat(), key=api_key)).status == 200
    await asyncio.sleep(0.2)  # every copy has expired
    with database_down():
        first = await post(chat(), key=api_key)
        # While the database stays down, the copies answer at once; one reload a second is tried behind them.
        second = await post(chat(), key=api_key)
    assert (first.status, second.status) == (200, 200)
    # Back up: fresh copies again.
    assert (await post(chat(), key=api_key)).status == 200


async def test_past_the_stale_allowance_the_request_gets_503(
    api_key: str, upstream: FakeUpstream, settings: SettingsWrapper
) -> None:
    settings.MUXER_STALE_CACHE_SECONDS = 0
    settings.MUXER_KEY_CACHE_SECONDS = 0.1
    assert (await post(chat(), key=api_key)).status == 200
    await asyncio.sleep(0.2)
    with database_down():
        reply = await post(chat(), key=api_key)
    assert reply.status == 503
    assert reply.error["code"] == "service_unavailable"


async def test_a_key_never_seen_gets_503_service_unavailable(unseen_key: str, upstream: FakeUpstream) -> None:
    with database_down():
        reply = await post(chat(), key=unseen_key)
    assert reply.status == 503
    assert reply.error == {
        "message": "The gateway cannot reach its database; try again shortly.",
        "type": "server_error",
        "param": None,
        "code": "service_unavailable",
    }
    assert reply.headers["retry-after"] == "5"
    assert await usage_rows() == []


async def test_the_messages_endpoint_answers_503_in_its_own_shape(unseen_key: str, upstream: FakeUpstream) -> None:
    body = {"model": "fake-small", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello"}]}
    with database_down():
        reply = await post(body, key=unseen_key, path="/v1/messages")
    assert reply.status == 503
    assert reply.json()["type"] == "error"
    assert reply.headers["retry-after"] == "5"


# --- Django's side: DRF views and console pages ------------------------------------------


def test_a_drf_view_answers_503_json(unseen_key: str) -> None:
    with database_down():
        response = Client().get("/v1/models", headers={"Authorization": f"Bearer {unseen_key}"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response.json()["error"]["type"] == "server_error"
    assert response["Retry-After"] == "5"


def test_a_signed_in_api_call_answers_503_json(organization: Organization, owner: User) -> None:
    client = Client()
    client.force_login(owner)
    with database_down():
        response = client.get(f"/api/orgs/{organization.slug}/keys/")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"


def test_a_console_page_answers_a_503_page(organization: Organization, owner: User) -> None:
    client = Client()
    client.force_login(owner)
    with database_down():
        response = client.get("/console/")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert b"Temporarily unavailable" in response.content
    assert response["Retry-After"] == "5"


async def test_under_asgi_too_a_console_page_and_an_api_call_answer_503(
    organization: Organization, owner: User
) -> None:
    client = AsyncClient()
    await client.aforce_login(owner)
    with database_down():
        page = await client.get("/console/")
        api = await client.get(f"/api/orgs/{organization.slug}/keys/")
    assert (page.status_code, api.status_code) == (503, 503)
    assert b"Temporarily unavailable" in page.content
    assert api.json()["error"]["code"] == "service_unavailable"


# --- real processes against PostgreSQL, through a relay that can be cut ---------------------------


class Relay:
    """A TCP relay to the database. ``cut()`` closes the port (new connections are refused) and drops every
    connection through it; ``restore()`` opens it again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() first: on Linux a bare close() leaves a thread blocked in accept() still accepting.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def relay() -> Iterator[Relay]:
    db = connection.settings_dict
    relay = Relay((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    relay.restore()
    yield relay
    relay.cut()


def relayed_database_url(relay: Relay) -> str:
    return database_url().replace(f":{connection.settings_dict.get('PORT') or 5432}/", f":{relay.port}/", 1)


@pytest.fixture
def usage_writer(relay: Relay, usage_stream: str, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """``manage.py usage_writer`` on this test's stream, reaching the database through the relay."""
    processes: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "writer.log"

    def start() -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "DATABASE_URL": relayed_database_url(relay),
            "REDIS_URL": settings.REDIS_URL,
            "MUXER_USAGE_STREAM": usage_stream,
            "SECRET_KEY": settings.SECRET_KEY,
            "DATABASE_CONNECT_TIMEOUT_SECONDS": "2",
        }
        command = [sys.executable, "manage.py", "usage_writer", "--linger-ms", "50"]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    yield start
    for process in processes:
        stop(process)


def event(organization: Organization, key_id: int, request_id: str) -> UsageEvent:
    return {
        "request_id": request_id,
        "organization_id": organization.pk,
        "api_key_id": key_id,
        "team_id": None,
        "user_id": None,
        "model": "fake-small",
        "provider": "fake",
        "input_tokens": 4,
        "output_tokens": 5,
        "cached_input_tokens": 0,
        "reasoning_tokens": 0,
        "usage_estimated": False,
        "cost_usd": "0.0000010000",
        "latency_ms": 3,
        "status": "ok",
        "http_status": 200,
        "error_code": "",
        "stream": False,
        "created_at": time.time(),
    }


def pending_in_group(stream: str) -> int:
    try:
        summary: Any = sync_redis().xpending(stream, GROUP)
    except Exception:  # no group yet: nothing delivered
        return 0
    return int(summary["pending"])


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.redis
def test_the_usage_writer_survives_an_outage_and_writes_everything_after_it(
    organization: Organization,
    owner: User,
    relay: Relay,
    usage_stream: str,
    usage_writer: Callable[[], subprocess.Popen[bytes]],
) -> None:
    key_id = issue_key(organization, created_by=owner).api_key.pk
    client = sync_redis()
    rows = UsageRecord.objects.filter(organization=organization)

    def emit(count: int) -> list[str]:
        ids = [f"req_{uuid.uuid4().hex}" for _ in range(count)]
        for request_id in ids:
            client.xadd(usage_stream, {"e": orjson.dumps(event(organization, key_id, request_id))})
        return ids

    writer = usage_writer()
    first = emit(2)
    wait_until(lambda: rows.count() == 2, 15, "the first batch")

    # The writer holds a connection now; cutting the relay drops it mid-life, and new ones are refused.
    relay.cut()
    second = emit(3)
    wait_until(lambda: pending_in_group(usage_stream) == 3, 10, "the writer to take the second batch")
    time.sleep(2)  # several failed passes
    assert writer.poll() is None, "the writer died with the database"
    assert rows.count() == 2
    # Taken but not acknowledged, and still in the stream: nothing is lost.
    assert pending_in_group(usage_stream) == 3
    assert client.xlen(usage_stream) == 3

    relay.restore()
    wait_until(lambda: rows.count() == 5, 20, "the writer to write the second batch after the outage")
    wait_until(lambda: client.xlen(usage_stream) == 0, 5, "the stream to empty")
    assert pending_in_group(usage_stream) == 0
    assert set(rows.values_list("request_id", flat=True)) == {*first, *second}
    assert writer.poll() is None


@pytest.mark.postgres
@pytest.mark.redis
def test_the_gateway_through_an_outage_serves_cached_keys_refuses_the_rest_and_loses_no_usage(
    organization: Organization,
    owner: User,
    catalog: None,
    relay: Relay,
    usage_stream: str,
    usage_writer: Callable[[], subprocess.Popen[bytes]],
    fake_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    seen = issue_key(organization, created_by=owner).secret
    unseen = issue_key(organization, created_by=owner).secret
    rows = UsageRecord.objects.filter(organization=organization)

    def ask(url: str, key: str) -> httpx.Response:
        return httpx.post(
            f"{url}/v1/chat/completions",
            json=chat(),
            headers={"Authorization": f"Bearer {key}"},
            timeout=15,
        )

    with gateway_processes(
        1,
        fake_upstream,
        tmp_path_factory,
        DATABASE_URL=relayed_database_url(relay),
        MUXER_USAGE_STREAM=usage_stream,
        DATABASE_CONNECT_TIMEOUT_SECONDS="2",
        # Short lifetimes: during the outage every copy is past its lifetime, and served as a stale one.
        MUXER_KEY_CACHE_SECONDS="0.2",
        MUXER_CATALOG_CACHE_SECONDS="0.2",
        MUXER_BUDGET_CACHE_SECONDS="0.2",
    ) as (url,):
        assert ask(url, seen).status_code == 200
        relay.cut()
        time.sleep(0.3)
        served = [ask(url, seen) for _ in range(4)]
        refused = ask(url, unseen)
        ready = httpx.get(f"{url}/readyz", timeout=10)

        assert [response.status_code for response in served] == [200] * 4
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert refused.headers["retry-after"] == "5"
        # Reported, but the instance stays in rotation (the database is shared: README "Health").
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["database"]["status"] == "failing"
        assert rows.count() == 0
        assert sync_redis().xlen(usage_stream) == 5

        # Back up: every served request's usage waited on the stream, and the writer puts it in the ledger.
        relay.restore()
        usage_writer()
        wait_until(lambda: rows.count() == 5, 20, "the usage of the five served requests")
        request_ids = {response.headers["x-request-id"] for response in served}
        assert request_ids <= set(rows.values_list("request_id", flat=True))
        # And the key never seen works again.
        assert ask(url, unseen).status_code == 200
