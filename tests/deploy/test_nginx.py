"""deploy/nginx/nginx.conf: read as text, accepted by `nginx -t`, and run in front of two stub replicas.

Outside compose two things in the file cannot work, and a copy changes exactly those: the upstream
`server gateway:8000 resolve ...` becomes loopback addresses (the name resolves only through Docker's
DNS, and Debian's nginx, 1.22, predates `resolve`, which open-source nginx has since 1.27.3), and the
`listen 80` ports become free loopback ports. The server_name include is rendered from its template
as the nginx image's entrypoint renders it. Everything else is the file as compose mounts it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.conftest import IN_CI

from .files import ENV_EXAMPLE, NGINX_CONF, NGINX_TEMPLATES, env_file, nginx_directives

SERVER_NAME = env_file(ENV_EXAMPLE)["MUXER_SERVER_NAMES"].split()[0]
UPSTREAM_LINE = re.compile(r"^(\s*)server gateway:8000 resolve (max_fails=\d+ fail_timeout=\w+);$", re.MULTILINE)


def _nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if path is None:
        message = "nginx is not installed (make nginx installs Debian's nginx-light)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _testable_copy(directory: Path, *, listen: int, upstreams: list[int]) -> Path:
    """The config with only the substitutions the module's docstring names."""
    text = NGINX_CONF.read_text()
    match = UPSTREAM_LINE.search(text)
    assert match, "the upstream server line changed; update this test's substitution"
    indent, parameters = match.groups()
    servers = "\n".join(f"{indent}server 127.0.0.1:{port} {parameters};" for port in upstreams)
    text = UPSTREAM_LINE.sub(lambda _: servers, text)
    assert text.count("listen 80") == 2
    text = text.replace("listen 80", f"listen 127.0.0.1:{listen}")
    conf_d = directory / "conf.d"
    conf_d.mkdir()
    for template in NGINX_TEMPLATES.glob("*.template"):
        rendered = template.read_text().replace("${MUXER_SERVER_NAMES}", SERVER_NAME)
        (conf_d / template.name.removesuffix(".template")).write_text(rendered)
    text = text.replace("/etc/nginx/conf.d/", f"{conf_d}/")
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


# --- the file, read as text --------------------------------------------------------------------------


def test_retries_only_what_never_reached_a_replica() -> None:
    text = NGINX_CONF.read_text()
    assert nginx_directives(text, "proxy_next_upstream") == [["error", "timeout"]]
    assert "non_idempotent" not in "".join(line.split("#")[0] for line in text.splitlines())
    # ...and the reason is written beside it.
    assert "non_idempotent" in text
    assert "bill twice" in text


def test_passive_health_and_dynamic_resolution() -> None:
    text = NGINX_CONF.read_text()
    (server,) = [args for args in nginx_directives(text, "server") if args[0] == "gateway:8000"]
    assert "resolve" in server
    assert any(arg.startswith("max_fails=") and int(arg.split("=")[1]) > 0 for arg in server)
    assert any(arg.startswith("fail_timeout=") for arg in server)
    assert nginx_directives(text, "zone")[0][0] == "gateway"
    (resolver,) = nginx_directives(text, "resolver")
    assert resolver[0] == "127.0.0.11", "Docker's embedded DNS"


def test_body_limit_is_the_gateways() -> None:
    (limit,) = nginx_directives(NGINX_CONF.read_text(), "client_max_body_size")
    value = limit[0]
    assert value.endswith("m")
    assert int(value[:-1]) * 2**20 == settings.MUXER_MAX_BODY_BYTES


def test_streams_pass_unbuffered_and_outlast_the_slowest_answer() -> None:
    text = NGINX_CONF.read_text()
    assert nginx_directives(text, "proxy_buffering") == [["off"]]
    read_timeouts = [int(args[0].removesuffix("s")) for args in nginx_directives(text, "proxy_read_timeout")]
    assert min(read_timeouts) > settings.MUXER_UPSTREAM_TIMEOUT_SECONDS


def test_nginx_closes_idle_upstream_connections_before_the_gateway() -> None:
    import yaml

    from .files import COMPOSE

    (timeout,) = nginx_directives(NGINX_CONF.read_text(), "keepalive_timeout")
    gateway = yaml.safe_load(COMPOSE.read_text())["services"]["gateway"]
    assert float(gateway["environment"]["MUXER_KEEP_ALIVE_SECONDS"]) > int(timeout[0].removesuffix("s"))


# --- nginx -t ----------------------------------------------------------------------------------------


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    nginx = _nginx()
    config = _testable_copy(tmp_path, listen=_free_port(), upstreams=[_free_port()])
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(config), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_rejects_a_broken_copy(tmp_path: Path) -> None:
    nginx = _nginx()
    config = _testable_copy(tmp_path, listen=_free_port(), upstreams=[_free_port()])
    config.write_text(config.read_text().replace("proxy_next_upstream error timeout;", "proxy_next_upstream erorr;"))
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(config), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "erorr" in result.stderr


# --- nginx running in front of two stub replicas -----------------------------------------------------


@dataclass
class Replica:
    """A stub gateway replica. `dies` reads each request, then closes the connection unanswered."""

    dies: bool
    seen: list[dict[str, str]] = field(default_factory=list)
    stream_may_finish: threading.Event = field(default_factory=threading.Event)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                replica.seen.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "id": self.headers.get("X-Test-Id", ""),
                        "xff": self.headers.get("X-Forwarded-For", ""),
                        "proto": self.headers.get("X-Forwarded-Proto", ""),
                        "host": self.headers.get("Host", ""),
                        "length": str(len(body)),
                    }
                )
                if replica.dies:
                    self.close_connection = True
                    return
                if self.path == "/v1/stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"data: first\n\n")
                    self.wfile.flush()
                    # The rest is sent only once the client has the first event: buffered, it never would.
                    replica.stream_may_finish.wait(timeout=15)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                answer = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = _serve
            do_POST = _serve

        return Handler


@dataclass
class Stack:
    url: str
    dying: Replica
    healthy: Replica
    log: Path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    nginx = _nginx()
    if os.geteuid() != 0:
        # Debian's nginx writes request bodies under /var/lib/nginx, which only root may write.
        message = "running nginx with Debian's temp paths needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    dying, healthy = Replica(dies=True), Replica(dies=False)
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), replica.handler()) for replica in (dying, healthy)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    port = _free_port()
    config = _testable_copy(tmp_path, listen=port, upstreams=[server.server_address[1] for server in servers])
    log = (tmp_path / "nginx.log").open("w")
    process = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(config), "-e", "stderr", "-g", f"daemon off; pid {tmp_path}/nginx.pid;"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/nginx-health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "nginx.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
        yield Stack(url=url, dying=dying, healthy=healthy, log=tmp_path / "nginx.log")
    finally:
        dying.stream_may_finish.set()
        healthy.stream_may_finish.set()
        process.terminate()
        process.wait(timeout=15)
        log.close()
        for server in servers:
            server.shutdown()
            server.server_close()


def _ids(replica: Replica, method: str) -> set[str]:
    return {request["id"] for request in replica.seen if request["method"] == method}


def test_a_post_a_replica_received_is_never_sent_to_another(stack: Stack) -> None:
    headers = {"Host": SERVER_NAME}
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        # Round robin alternates; keep sending each method until the dying replica has had one of each.
        for number in range(10):
            method = "GET" if _ids(stack.dying, "POST") else "POST"
            request_id = f"{method}-{number}"
            response = client.request(
                method, "/v1/chat/completions", headers={**headers, "X-Test-Id": request_id}, content=b"{}"
            )
            statuses[request_id] = response.status_code
            if _ids(stack.dying, "GET") and _ids(stack.dying, "POST"):
                break
    died_post, died_get = _ids(stack.dying, "POST"), _ids(stack.dying, "GET")
    unreached = f"round robin never reached the dying replica: {statuses}\n{stack.log.read_text()}"
    assert died_post, unreached
    assert died_get, unreached
    for request_id in died_post:
        assert statuses[request_id] == 502
        assert request_id not in _ids(stack.healthy, "POST"), "a POST that was sent was sent again"
    for request_id in died_get:
        assert statuses[request_id] == 200
        assert request_id in _ids(stack.healthy, "GET"), "a GET whose replica failed is retried elsewhere"
    for request_id in _ids(stack.healthy, "POST"):
        assert statuses[request_id] == 200


def test_client_forwarding_headers_are_replaced(stack: Stack) -> None:
    spoofed = {"Host": SERVER_NAME, "X-Forwarded-For": "127.0.0.9, 10.1.2.3"}
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        for number in range(4):
            client.get("/api/ping", headers={**spoofed, "X-Test-Id": f"xff-{number}"})
        client.get("/api/ping", headers={"Host": SERVER_NAME, "X-Forwarded-Proto": "https", "X-Test-Id": "https"})
    seen = {request["id"]: request for request in stack.healthy.seen}
    assert any(key.startswith("xff-") for key in seen)
    for key, request in seen.items():
        assert request["xff"] == "127.0.0.1", request
        assert request["host"] == SERVER_NAME
        assert request["proto"] == ("https" if key == "https" else "http")


def test_other_hosts_and_metrics_never_reach_a_replica(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        assert client.get("/v1/models", headers={"Host": "other.example"}).status_code == 421
        assert client.get("/metrics", headers={"Host": SERVER_NAME}).status_code == 404
    assert stack.healthy.seen == stack.dying.seen == []


def test_bodies_over_the_gateways_limit_are_refused(stack: Stack) -> None:
    limit = settings.MUXER_MAX_BODY_BYTES
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        too_big = client.post("/v1/embeddings", headers={"Host": SERVER_NAME}, content=b"x" * (limit + 1))
        assert too_big.status_code == 413
        for number in range(4):
            fits = client.post(
                "/v1/embeddings", headers={"Host": SERVER_NAME, "X-Test-Id": f"fits-{number}"}, content=b"x" * limit
            )
            if fits.status_code == 200:
                break
    assert fits.status_code == 200
    assert [request["length"] for request in stack.healthy.seen if request["id"] == f"fits-{number}"] == [str(limit)]


def test_events_are_passed_on_as_they_come(stack: Stack) -> None:
    stack.dying.dies = False  # both replicas stream, whichever round robin picks
    with (
        httpx.Client(base_url=stack.url, timeout=httpx.Timeout(15)) as client,
        client.stream("POST", "/v1/stream", headers={"Host": SERVER_NAME}, content=b"{}") as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines) == "data: first"
        # Only now may the replica send the rest: had nginx held the first event back until the stream ended,
        # the read above would have waited for ever. (Debian's nginx passes this small stream on even with
        # proxy_buffering on, so test_streams_pass_unbuffered_... guards that directive itself.)
        stack.healthy.stream_may_finish.set()
        stack.dying.stream_may_finish.set()
        rest = [line for line in lines if line]
    assert rest == ["data: [DONE]"]
