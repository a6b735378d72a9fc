"""What this process believes about a backing store, so that an outage costs one timeout, not one per request.

A :class:`StoreState` is up until an operation on the store fails. The first
failure marks it down: logged once (a warning) and counted in
``muxer_store_transitions_total{to="down"}``. While it is down, callers ask
:meth:`StoreState.usable` and take their fallback at once, without waiting on a
timeout. At most once per cool-down the state sends a probe (a ``PING``) from a
background task; when the store answers, the recovery hooks run (billing rebuilds
the budget counters it could not update from the ledger) and only then is the
store marked up again: logged once at info, counted with ``to="up"``. A probe or
hook that fails keeps the store down for another cool-down, and counts in
``muxer_store_errors_total{operation="probe"}``, so that counter keeps rising
for as long as the outage lasts.

The state is per process: each worker finds out on its own, within one timeout
of its first request after the store fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from muxer_project import metrics

logger = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class StoreState:
    def __init__(self, store: str, *, probe: Hook, cooldown: Callable[[], float]) -> None:
        self.store = store
        self._probe = probe
        self._cooldown = cooldown
        self._hooks: list[Hook] = []
        self._lock = threading.Lock()
        self._up = True
        self._down_since = 0.0
        self._retry_at = 0.0
        self._probing: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up

    def on_recovery(self, hook: Hook) -> None:
        """Run ``hook`` after the store answers again and before it is used again; it may raise to stay down."""
        if hook not in self._hooks:
            self._hooks.append(hook)

    def usable(self) -> bool:
        """Whether to use the store now. False while it is down: take the fallback (a probe may start)."""
        if self._up:
            return True
        now = time.monotonic()
        with self._lock:
            if now < self._retry_at or (self._probing is not None and not self._probing.done()):
                return False
            self._retry_at = now + self._cooldown()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # A synchronous caller (a task, a console page) is off the hot path: it may try the store itself.
            return True
        self._probing = loop.create_task(self._recover())
        return False

    def failed(self, operation: str, error: BaseException) -> None:
        """An operation on the store failed (the caller serves from its fallback)."""
        metrics.store_errors.labels(self.store, operation).inc()
        with self._lock:
            self._retry_at = time.monotonic() + self._cooldown()
            if not self._up:
                return
            self._up = False
            self._down_since = time.monotonic()
        metrics.store_transitions.labels(self.store, "down").inc()
        # The exception's type only: a message can carry a connection string and its password.
        logger.warning(
            "%s unavailable (%s during %s): serving from fallbacks, asking it again every %.3g s",
            self.store,
            type(error).__name__,
            operation,
            self._cooldown(),
        )

    def fallback(self, operation: str) -> None:
        """An operation was answered by its fallback instead of the store."""
        metrics.store_fallbacks.labels(self.store, operation).inc()

    @contextmanager
    def absorbing(self, operation: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
        """Run a block against the store; one of ``errors`` marks the store down instead of propagating."""
        try:
            yield
        except errors as error:
            self.failed(operation, error)

    async def _recover(self) -> None:
        try:
            await self._probe()
            for hook in list(self._hooks):
                await hook()
        except Exception as error:  # noqa: BLE001 - still down: the next cool-down tries again
            with self._lock:
                self._retry_at = time.monotonic() + self._cooldown()
            # Counted, so an outage keeps muxer_store_errors_total rising; logged only when it ends.
            metrics.store_errors.labels(self.store, "probe").inc()
            logger.debug("%s still unavailable (%s)", self.store, type(error).__name__)
            return
        self._recovered()

    def _recovered(self) -> None:
        with self._lock:
            if self._up:
                return
            self._up = True
            down_for = time.monotonic() - self._down_since
        metrics.store_transitions.labels(self.store, "up").inc()
        logger.info("%s answers again after %.1f s down: back to normal", self.store, down_for)

    async def wait_recovered(self) -> bool:
        """Tests: wait for a probe in flight to finish; whether the store is up."""
        probing = self._probing
        if probing is not None and not probing.done():
            await asyncio.wait([probing])
        return self._up

    def forget(self) -> None:
        """Tests: back to up, with no probe pending."""
        with self._lock:
            probing, self._probing = self._probing, None
            self._up, self._retry_at, self._down_since = True, 0.0, 0.0
        if probing is not None and not probing.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                probing.cancel()
