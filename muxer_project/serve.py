"""Serve the gateway under uvicorn, stopping gracefully.

    python -m muxer_project.serve [--host H] [--port P] [--workers N] [--log-level L] [--access-log]
                                  [--proxy-headers] [--forwarded-allow-ips IPS] [--limit-concurrency N]
                                  [--loop L] [--http H]

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
``PORT``, ``WEB_CONCURRENCY``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

logger = logging.getLogger("muxer.serve")

APP = "muxer_project.asgi:application"


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
        timeout_graceful_shutdown=math.ceil(settings.MUXER_SHUTDOWN_GRACE_SECONDS),
    )


def main(argv: list[str] | None = None) -> None:
    config = build_config(parse_args(argv))
    if config.workers > 1:
        # uvicorn's supervisor makes its children from this module-level name; ours drain before they stop.
        multiprocess.Process = GracefulProcess  # type: ignore[misc]
        multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    server = GracefulServer(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    # Through the module's real name, so that --workers children (spawned, not forked) unpickle the same classes.
    from muxer_project.serve import main as serve_main

    serve_main()
