"""Serve the gateway under uvicorn, stopping gracefully.

    python -m muxer_project.serve [--host H] [--port P] [--workers N] [--log-level L] [--access-log]
                                  [--proxy-headers] [--forwarded-allow-ips IPS] [--limit-concurrency N]
                                  [--loop L] [--http H] [--timeout-keep-alive S]

The same server as ``uvicorn muxer_project.asgi:application`` (``--workers``
runs uvicorn's own supervisor), except how a worker stops. uvicorn stops
accepting as soon as it gets SIGTERM, while a load balancer may still be
sending it requests. Here, on SIGTERM, a worker:

1. answers ``/readyz`` with 503 ``draining`` at once, and asks keep-alive
   clients of the proxy to close their connections;
2. keeps serving for ``MUXER_SHUTDOWN_DRAIN_SECONDS``, long enough for the
   load balancer to see it unready and stop routing to it;
3. stops accepting, and lets requests and streams in flight finish for up
   to ``MUXER_SHUTDOWN_GRACE_SECONDS`` (uvicorn's graceful-shutdown timeout;
   past it they are cancelled, and record their usage as cut);
4. waits for the usage of every proxy request to be recorded, closes its
   outbound clients (the ASGI lifespan's shutdown), and exits 0.

With ``--workers N`` the supervisor passes SIGTERM on to each worker, and each
drains as above. SIGINT (Ctrl+C in a terminal) skips the drain period; a
second SIGINT stops at once. Defaults come from the environment: ``HOST``,
``PORT``, ``WEB_CONCURRENCY``, ``MUXER_KEEP_ALIVE_SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import selectors
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

logger = logging.getLogger("muxer.serve")

APP = "muxer_project.asgi:application"
# At shutdown: how long the loop keeps accepting connections the kernel has already queued before the listening
# socket closes, and how long a connection made just before then has to send its request (GracefulServer.shutdown).
ACCEPT_QUEUE_SECONDS = 0.5
FRESH_CONNECTION_SECONDS = 1.0


class GracefulServer(uvicorn.Server):
    """A uvicorn server that drains before it stops (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stop_requested_at: float | None = None
        self.stop_signal = 0
        self.drain_noted = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: set flags only (logging here could deadlock on its lock); on_tick does the rest.
        from muxer_project.lifespan import process_state

        if self.stop_requested_at is not None:
            # A second signal cuts the drain short; a second Ctrl+C also the wait for requests in flight.
            if sig == signal.SIGINT and self.should_exit:
                self.force_exit = True
            self.should_exit = True
            return
        process_state.begin_draining()
        self.stop_signal = sig
        self.stop_requested_at = time.monotonic()
        # Unlike uvicorn's own handler, the signal is not raised again once stopped: a drained worker exits 0.

    def drain_seconds(self) -> float:
        from django.conf import settings

        return 0.0 if self.stop_signal == signal.SIGINT else float(settings.MUXER_SHUTDOWN_DRAIN_SECONDS)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:
            _sample_inflight()
        if self.stop_requested_at is not None and not self.should_exit:
            drain = self.drain_seconds()
            if not self.drain_noted:
                self.drain_noted = True
                logger.info(
                    "draining: readiness is off; serving %.1f s more, then up to %s s for requests in flight",
                    drain,
                    self.config.timeout_graceful_shutdown,
                )
            if time.monotonic() - self.stop_requested_at >= drain:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, without resetting connections that clients have already made.

        Closing a listening socket resets every connection the kernel has queued for
        it, and uvicorn then closes each connection whose request has not arrived
        yet, unread bytes and all. Either way a client that has already sent its
        request (a proxy, on a fresh connection) gets a reset, and a proxy does not
        retry a POST it has sent. So the loop first accepts what is queued (for up
        to ACCEPT_QUEUE_SECONDS), and connections still waiting for their request
        get up to FRESH_CONNECTION_SECONDS to send it; Go's http.Server.Shutdown
        spares new connections the same way.
        """
        if not self.force_exit:
            listeners = [sock for server in self.servers for sock in server.sockets]
            deadline = time.monotonic() + ACCEPT_QUEUE_SECONDS
            # Polled: nothing signals that the kernel's queue has emptied.
            while listeners and time.monotonic() < deadline and _readable(listeners):  # noqa: ASYNC110
                await asyncio.sleep(0)  # the event loop accepts what is queued
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            deadline = time.monotonic() + FRESH_CONNECTION_SECONDS
            # An HTTP connection's cycle is None until its first request's headers are in (websockets have none).
            while time.monotonic() < deadline and any(  # noqa: ASYNC110 - uvicorn's protocols signal nothing here
                getattr(c, "cycle", False) is None for c in self.server_state.connections
            ):
                await asyncio.sleep(0.005)
        await super().shutdown(sockets)


def _readable(sockets: list[Any]) -> bool:
    """Whether any of these listening sockets has a connection waiting to be accepted."""
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


def _sample_inflight() -> None:
    from muxer_project import metrics
    from routing.consumers import GatewayConsumer

    metrics.inflight_requests.set(GatewayConsumer.inflight)


class GracefulProcess(multiprocess.Process):
    """A ``--workers`` child whose server drains; uvicorn's supervisor builds its children from this class."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GracefulServer(config=self.config)
        return self._server


class GracefulSupervisor(multiprocess.Multiprocess):
    """uvicorn's ``--workers`` supervisor, letting go of the listening socket once it has told the workers to stop.

    The supervisor holds the socket too (to start replacement workers). Kept open
    after the workers have drained and closed theirs, it would still complete
    connections that nobody accepts, and reset them when the supervisor exits;
    closed, the socket is gone with the last worker's copy and new connections
    are refused, which a proxy retries elsewhere.
    """

    def terminate_all(self) -> None:
        super().terminate_all()
        for sock in self.sockets:
            sock.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m muxer_project.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--access-log", action="store_true", help="uvicorn's access log too (the gateway writes its own)"
    )
    parser.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from --forwarded-allow-ips")
    parser.add_argument("--forwarded-allow-ips", default=None)
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        help="uvicorn's cap on a worker's connections and tasks (503 past it); the proxy's own is "
        "MUXER_MAX_INFLIGHT_REQUESTS",
    )
    parser.add_argument("--loop", default="auto", help="auto picks uvloop when installed")
    parser.add_argument("--http", default="auto", help="auto picks httptools when installed")
    parser.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=int(os.environ.get("MUXER_KEEP_ALIVE_SECONDS", "5")),
        help="seconds an idle keep-alive connection stays open; behind a proxy that reuses connections, longer "
        "than the proxy's own idle timeout",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> uvicorn.Config:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "muxer_project.settings")
    from django.conf import settings

    return uvicorn.Config(
        APP,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        limit_concurrency=args.limit_concurrency,
        loop=args.loop,
        http=args.http,
        timeout_keep_alive=args.timeout_keep_alive,
        timeout_graceful_shutdown=math.ceil(settings.MUXER_SHUTDOWN_GRACE_SECONDS),
    )


def main(argv: list[str] | None = None) -> None:
    config = build_config(parse_args(argv))
    if config.workers > 1:
        # uvicorn's supervisor makes its children from this module-level name; ours drain before they stop.
        multiprocess.Process = GracefulProcess  # type: ignore[misc]
        GracefulSupervisor(config, sockets=[config.bind_socket()]).run()
        return
    server = GracefulServer(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    # Through the module's real name, so that --workers children (spawned, not forked) unpickle the same classes.
    from muxer_project.serve import main as serve_main

    serve_main()
