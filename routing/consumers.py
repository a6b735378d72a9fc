"""The proxy's hot endpoints, as Channels consumers.

Django's request handler costs several times more per request than a
consumer, so the consumer base class does here what middleware does
elsewhere: request ids, the body size limit, the OpenAI error shape. The work
for each request runs as a task beside a watcher on the connection; when the
client goes away, the task is cancelled, which closes the upstream call, and
the usage seen so far is still recorded.

Before a chat request is counted, routed or held against a budget, the input
limits (``routing/limits.py``) and the organization's PII policy
(``routing/pii.py``) apply: masked values leave as placeholders, and the
answer, streamed or not, gets them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import orjson
import structlog
from channels.consumer import AsyncConsumer
from django.conf import settings

from accounts.auth import KeyIdentity, authenticate
from accounts.http_security import cors_headers, cors_is_preflight
from audit.context import request_id_from
from billing.budgets import (
    Reservation,
    organization_budgets,
    reserve,
    settle,
    worst_case_cost,
    worst_case_input_tokens,
)
from billing.pricing import cost_usd
from billing.request_log import request_log_bodies
from billing.tokens import estimate_text_tokens
from billing.usage import UsageEvent, usage_emit
from muxer_project import metrics
from muxer_project.errors import DATABASE_UNAVAILABLE, APIError, invalid_request, overloaded, service_unavailable
from muxer_project.lifespan import process_state
from muxer_project.logs import access_line
from providers.adapters import ChatResult, ChatStream, EmbeddingResult, ProviderError, Usage, adapter_for
from providers.catalog import CallTimeouts, CatalogModel, get_catalog
from providers.credentials import catalog_for, organization_keys
from providers.http import call_timeouts, upstream_request_id
from providers.resilience import backoff_seconds, breaker, counts_against_provider, latency

from .cascade import AnswerScore, score_answer
from .idempotency import REPLAYED, StoredResponse, idempotency_claim, idempotency_key_from
from .limits import check_context_window, check_input_tokens, check_message_count
from .pii import (
    CompletionStreamRestorer,
    GuardResult,
    PIIAction,
    PIIEntity,
    PIIPolicy,
    Restorer,
    describe_counts,
    guard,
)
from .ratelimit import admit
from .response_cache import (
    AnswerAssembler,
    CacheDirective,
    CacheResult,
    cache_applies,
    cache_directive,
    cache_entry,
    cached_answer_get,
    cached_answer_store,
    fresh_completion,
    request_fingerprint,
    response_cache_key,
)
from .schema import (
    ChatRequest,
    EmbeddingRequest,
    RoutingOptions,
    parse_chat_request,
    parse_embedding_request,
    parse_max_cost,
    parse_strategy,
    too_large,
)
from .selection import PromptScore, RouteDecision, prompt_text, select_embedding_model, select_route
from .semantic import semantic_model_for
from .strategies.base import capped_output_tokens, permitted
from .strategies.heuristic import assess

logger = logging.getLogger(__name__)
T = TypeVar("T")

JSON = b"application/json"
Headers = list[tuple[bytes, bytes]]
# Channels passes plain dicts; asgiref's TypedDict unions add nothing here.
ASGIReceiveCallable = Callable[[], Awaitable[dict[str, Any]]]
ASGISendCallable = Callable[[dict[str, Any]], Awaitable[None]]


async def _wait_for_disconnect(receive: ASGIReceiveCallable) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _closing(send: ASGISendCallable) -> ASGISendCallable:
    """``send`` that asks the client to close its connection after this response: a draining worker's keep-alive
    clients then reconnect, and the load balancer sends them to another instance."""

    async def closing_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return closing_send


class GatewayConsumer(AsyncConsumer):
    """Base for proxy endpoints: read the body, run :meth:`handle`, shape errors, record metrics and the access log."""

    methods = frozenset({"POST"})
    # The endpoint's name in metrics and logs.
    endpoint = "proxy"
    # Known once the key is checked; the model and provider that answered, once one did.
    identity: KeyIdentity | None = None
    served: tuple[str, str] = ("", "")
    # The response's status and error code, for metrics and the access log.
    status = 0
    error_code = ""
    # Seconds spent waiting for providers; the rest of the request's time is the gateway's own.
    upstream_seconds = 0.0
    ttft_seconds: float | None = None
    # The response cache's verdict: "hit", "miss", "bypass", or "off" (not eligible).
    cache_result = "off"
    # The x-ratelimit-* headers of the limits this request was counted against; on every response.
    rate_headers: Headers = []
    # x-muxer-pii (the entity types found in the request and how often); on every response once known.
    pii_headers: Headers = []
    # x-muxer-cache (hit, miss or bypass) once the response cache has looked at the request.
    cache_headers: Headers = []
    # Access-Control-* for a browser caller from an allowed origin (the consumers bypass Django's middleware).
    cors: Headers = []
    # Proxy requests this process is serving, every endpoint together: what MUXER_MAX_INFLIGHT_REQUESTS caps,
    # and what a stopping worker waits for. Only ever changed as GatewayConsumer.inflight, never per subclass.
    inflight: ClassVar[int] = 0

    async def __call__(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:  # type: ignore[override]
        self.scope = scope
        if process_state.draining:
            send = _closing(send)
        self._send = send
        self.started = time.perf_counter()
        # The caller's X-Request-ID when it is a sane token; sent on to the provider and back in the response.
        self.request_id = request_id_from(self.header(b"x-request-id"))
        self.response_started = False
        self.response_complete = False
        self.cors = cors_headers(scope["method"], scope["headers"])
        with structlog.contextvars.bound_contextvars(request_id=self.request_id):
            upstream_request_id.set(self.request_id)
            try:
                cap = settings.MUXER_MAX_INFLIGHT_REQUESTS
                if cap and GatewayConsumer.inflight >= cap:
                    # Refused before the body is read: queueing it would only hold memory and time out later.
                    metrics.overloaded.labels(self.endpoint).inc()
                    await self.send_error(overloaded())
                    return
                GatewayConsumer.inflight += 1
                try:
                    await self._serve(scope, receive, send)
                finally:
                    GatewayConsumer.inflight -= 1
            finally:
                self.observe()

    async def _serve(self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if cors_is_preflight(scope["method"], scope["headers"]):
            await send(
                {"type": "http.response.start", "status": 204, "headers": [*self.cors, (b"content-length", b"0")]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            if scope["method"] not in self.methods:
                allowed = ", ".join(sorted(self.methods))
                raise APIError(
                    405,
                    f"{scope['method']} is not allowed here; use {allowed}.",
                    code="method_not_allowed",
                    headers={"allow": allowed},
                )
            body = await self._read_body(receive, settings.MUXER_MAX_BODY_BYTES)
        except APIError as exc:
            await self.send_error(exc)
            return
        if body is None:  # the client left before sending its body
            return
        work = asyncio.ensure_future(self._run(body))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The server gave up on this request (a shutdown's grace period ran out): stop the work as a
            # disconnect would, and let it record its usage before this task ends.
            work.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise
        if not work.done() and not self.response_complete:
            # The client left mid-response: stop the work, which stops the upstream call.
            work.cancel()
        # Servers report a disconnect once the response is complete, too; then the
        # remaining work (recording usage) just finishes.
        with contextlib.suppress(asyncio.CancelledError):
            await work
        watcher.cancel()

    async def _read_body(self, receive: ASGIReceiveCallable, limit: int) -> bytes | None:
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large(limit)
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _run(self, body: bytes) -> None:
        try:
            await self.handle(body)
        except APIError as exc:
            if self.response_started:
                logger.warning("request %s failed after the response began: %s", self.request_id, exc.message)
            else:
                await self.send_error(exc)
        except DATABASE_UNAVAILABLE as exc:
            # Something this request needs is not in the process's caches, and the database is unreachable.
            logger.warning("request %s: database unavailable (%s)", self.request_id, type(exc).__name__)
            if not self.response_started:
                await self.send_error(service_unavailable())
        except Exception:
            logger.exception("request %s failed", self.request_id)
            if not self.response_started:
                await self.send_error(APIError(500, "The gateway failed unexpectedly.", type="server_error"))

    async def handle(self, body: bytes) -> None:
        raise NotImplementedError

    # --- helpers ----------------------------------------------------------
    def header(self, name: bytes) -> str | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return value.decode("latin-1")
        return None

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def observe(self) -> None:
        """Metrics and the access-log line for the finished request (a client that left counts as 499)."""
        elapsed = time.perf_counter() - self.started
        status = self.status if self.response_complete or self.status >= 400 else 499
        identity = self.identity
        org = str(identity.organization_id) if identity is not None else ""
        model, provider = self.served
        route: RouteDecision | None = getattr(self, "route", None)
        strategy = route.strategy if route is not None else ""
        endpoint = self.endpoint
        metrics.requests.labels(endpoint, org, model, provider, strategy, str(status)).inc()
        metrics.request_duration.labels(endpoint).observe(elapsed)
        overhead = max(elapsed - self.upstream_seconds, 0.0)
        metrics.gateway_overhead.labels(endpoint).observe(overhead)
        if self.error_code == "rate_limit_exceeded":
            metrics.rate_limited.labels(org, endpoint).inc()
        elif self.error_code == "budget_exceeded":
            metrics.budget_refusals.labels(org).inc()
        elif status == 401:
            metrics.auth_failures.labels("api_key").inc()
        if self.cache_result != "off":
            metrics.cache_requests.labels(org, self.cache_result).inc()
        access_line(
            request_id=self.request_id,
            endpoint=endpoint,
            method=self.scope["method"],
            status=status,
            error_code=self.error_code or None,
            org_id=identity.organization_id if identity is not None else None,
            key_prefix=identity.prefix if identity is not None else None,
            model=model or None,
            provider=provider or None,
            strategy=strategy or None,
            route_reason=route.reason if route is not None else None,
            attempts=getattr(self, "attempts", None) or None,
            cache=self.cache_result,
            latency_ms=round(elapsed * 1000, 1),
            upstream_ms=round(self.upstream_seconds * 1000, 1),
            ttft_ms=None if self.ttft_seconds is None else round(self.ttft_seconds * 1000, 1),
            overhead_ms=round(overhead * 1000, 2),
        )

    async def start_response(self, status: int, content_type: bytes, headers: Headers) -> None:
        self.response_started = True
        self.status = status
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"x-request-id", self.request_id.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    *self.cors,
                    *self.rate_headers,
                    *self.pii_headers,
                    *self.cache_headers,
                    *headers,
                ],
            }
        )

    async def send_body(self, body: bytes, *, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
        if not more:
            self.response_complete = True

    async def send_json(self, status: int, body: bytes, headers: Headers | None = None) -> None:
        await self.start_response(status, JSON, headers or [])
        await self.send_body(body)

    async def send_error(self, exc: APIError) -> None:
        self.error_code = exc.code or ""
        headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        if any(name.startswith(b"x-ratelimit-") for name, _ in headers):
            self.rate_headers = []  # the refusal carries its own
        await self.send_json(exc.status, exc.body_bytes(), headers)


def _muxer_headers(model: CatalogModel, reason: str) -> Headers:
    return [
        (b"x-muxer-model", model.name.encode()),
        (b"x-muxer-provider", model.provider.encode()),
        (b"x-muxer-route-reason", reason.encode()),
    ]


def _openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens, "audio_tokens": 0},
    }


def _completion_chars(body: dict[str, Any]) -> int:
    chars = 0
    for choice in body.get("choices") or ():
        content = (choice.get("message") or {}).get("content")
        if isinstance(content, str):
            chars += len(content)
    return chars


def circuit_open(model: CatalogModel) -> ProviderError:
    return ProviderError(
        f"{model.provider} is failing; its circuit for '{model.name}' is open.",
        status=503,
        retryable=True,
        code="circuit_open",
    )


@dataclass(slots=True)
class OpenedStream:
    stream: ChatStream
    chunks: AsyncGenerator[dict[str, Any], None]


async def open_stream(stream: ChatStream) -> OpenedStream:
    """Open a provider stream and wait for its first chunk, within the first-byte timeout.

    Nothing reaches the client before this returns, so a failure up to here
    (refused, reset, an error event or an empty stream) can still be retried
    or sent to a fallback.
    """
    chunks: AsyncGenerator[dict[str, Any], None] | None = None
    try:
        async with asyncio.timeout((call_timeouts.get() or CallTimeouts.defaults()).first_byte):
            await stream.open()
            chunks = as_generator(stream.chunks())
            first = await anext(chunks)
    except TimeoutError:
        await _discard(stream, chunks)
        raise ProviderError(
            "The provider sent nothing in time.", status=504, retryable=True, code="upstream_timeout"
        ) from None
    except StopAsyncIteration:
        await _discard(stream, chunks)
        raise ProviderError("The provider ended the stream without content.", status=502, retryable=True) from None
    except BaseException:
        await _discard(stream, chunks)
        raise
    if stream.progress.error is not None:
        await _discard(stream, chunks)
        error = stream.progress.error
        raise ProviderError(
            f"The provider failed before streaming: {str(error.get('message') or 'error')[:300]}",
            status=502,
            retryable=True,
            code=str(error.get("code") or "upstream_error"),
        )
    return OpenedStream(stream=stream, chunks=_prepend(first, chunks))


def as_generator(chunks: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[dict[str, Any], None]:
    """Any async iterator as an async generator, which can be closed explicitly."""

    async def generator() -> AsyncGenerator[dict[str, Any], None]:
        async for chunk in chunks:
            yield chunk

    return generator()


async def _prepend(
    first: dict[str, Any], rest: AsyncGenerator[dict[str, Any], None]
) -> AsyncGenerator[dict[str, Any], None]:
    yield first
    try:
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


async def _discard(stream: ChatStream, chunks: AsyncGenerator[dict[str, Any], None] | None) -> None:
    if chunks is not None:
        await chunks.aclose()
    await stream.close()


class RoutedConsumer(GatewayConsumer):
    """Base for endpoints that call providers: the retry/fallback loop and usage records."""

    attempts = 0
    # When the successful provider call started (perf_counter).
    call_started = 0.0
    # The step of a cascade that is running (1 otherwise), and the route, for the usage records.
    step = 1
    route: RouteDecision | None = None
    # The budget hold for this request, and the organization's cap on answer length (None: the model's).
    reservation: Reservation | None = None
    output_cap: int | None = None
    # For savings reports: the heuristic's score of the prompt, and a hash of the request as a cache keys it.
    complexity: float | None = None
    fingerprint = ""
    # The PII guard: the entity types found and how often, and the originals of the placeholders
    # that masking sent upstream (None: nothing to put back in the answer).
    pii_counts: dict[PIIEntity, int] | None = None
    restorer: Restorer | None = None
    # The response cache's key for this request when a miss's answer is to be kept (None: not kept).
    cache_key: str | None = None
    # The body as the client sent it, for an organization that keeps request logs (None: it does not).
    client_body: bytes | None = None

    def pii_restore_wanted(self) -> bool:
        """``X-Muxer-PII-Restore``: whether masked values are put back in the answer (the default) or left masked."""
        raw = self.header(b"x-muxer-pii-restore")
        if raw is None:
            return True
        value = raw.strip().lower()
        if value in ("true", "1", "yes"):
            return True
        if value in ("false", "0", "no"):
            return False
        raise invalid_request("'X-Muxer-PII-Restore' must be true or false.", param="X-Muxer-PII-Restore")

    def apply_pii_policy(self, policy: PIIPolicy, messages: list[dict[str, Any]], *, param: str) -> GuardResult | None:
        """Apply the organization's PII policy to the texts about to leave for a provider.

        What was found becomes the ``x-muxer-pii`` header and one log line, both
        entity types and counts only. A blocked type refuses the request with a 400
        before anything is counted, held or sent. None when nothing was found.
        """
        result = guard(messages, policy)
        if not result.counts:
            return None
        found = describe_counts(result.counts)
        self.pii_counts = result.counts
        self.pii_headers = [(b"x-muxer-pii", found.encode())]
        by_action: dict[PIIAction, list[str]] = {}
        org = str(self.identity.organization_id) if self.identity is not None else ""
        for entity, count in result.counts.items():
            metrics.pii_detections.labels(org, entity.value, policy.action_for(entity).value).inc(count)
        for entity in sorted(result.counts, key=lambda e: e.value):
            by_action.setdefault(policy.action_for(entity), []).append(entity.value)
        outcome = "; ".join(f"{action.value}: {', '.join(names)}" for action, names in sorted(by_action.items()))
        logger.info("request %s: PII found (%s); %s", self.request_id, found, outcome)
        if result.blocked:
            names = sorted(entity.value for entity in result.blocked_entities)
            raise APIError(
                400,
                f"This organization's PII policy blocks requests containing: {', '.join(names)}. "
                "Remove them and send the request again.",
                code="pii_blocked",
                param=param,
            )
        return result

    def guard_chat(self, identity: KeyIdentity, request: ChatRequest) -> None:
        """Mask (or refuse) PII in what the client sent: every message's text and text parts, system
        prompts, tool results and tool call arguments, and the ``user`` field. Tool definitions
        (written by the developer, not the end user), images and files are not read."""
        restore = self.pii_restore_wanted()
        policy = identity.pii_policy
        if policy.is_off:
            return
        payload = request.payload
        user = payload.get("user")
        texts = payload["messages"]
        if isinstance(user, str):
            texts = [*texts, {"role": "user", "content": user}]
        result = self.apply_pii_policy(policy, texts, param="messages")
        if result is None or not result.restorer:
            return
        messages = result.messages
        if isinstance(user, str):
            payload["user"] = messages.pop()["content"]
        # Every attempt (retries, fallbacks, a cascade's steps), the router and the usage notes see only these.
        request.replace_messages(messages)
        if restore:
            self.restorer = result.restorer

    def restore_answer(self, body: dict[str, Any]) -> None:
        if self.restorer is not None:
            self.restorer.restore_completion(body)

    def answer_restorer(self) -> CompletionStreamRestorer | None:
        return None if self.restorer is None else CompletionStreamRestorer(self.restorer)

    async def _call_route(
        self,
        identity: KeyIdentity,
        route: RouteDecision,
        start: Callable[[CatalogModel], Awaitable[T]],
        *,
        stream: bool,
    ) -> tuple[CatalogModel, T]:
        """Call the route's models in order until one answers.

        A retryable failure is retried on the same model with backoff, then the
        next model takes over; everything stays within the retry budget. A model
        whose circuit is open is skipped. A non-retryable failure that is the
        client's fault (a 400) ends the chain: another model would refuse it too.
        Only the final outcome becomes a usage record.
        """
        deadline = time.monotonic() + settings.MUXER_RETRY_BUDGET_SECONDS
        last: tuple[CatalogModel, ProviderError] | None = None
        self.attempts = 0
        for model in route.chain:
            if not await breaker.allow(model):
                last = last or (model, circuit_open(model))
                continue
            call_timeouts.set(model.call_timeouts)
            for attempt in range(settings.MUXER_RETRY_ATTEMPTS_PER_MODEL):
                self.attempts += 1
                attempt_started = time.perf_counter()
                try:
                    result = await start(model)
                except ProviderError as error:
                    self.upstream_seconds += time.perf_counter() - attempt_started
                    metrics.provider_errors.labels(model.provider, model.name, str(error.status)).inc()
                    last = (model, error)
                    if counts_against_provider(error):
                        await breaker.record(model, ok=False)
                    if not error.retryable:
                        if error.status < 500:
                            await self._record_failure(identity, model, error, stream=stream)
                            raise self._client_error(error) from None
                        break  # our credentials for this provider: try the next one
                    delay = backoff_seconds(attempt, error.retry_after)
                    if attempt + 1 == settings.MUXER_RETRY_ATTEMPTS_PER_MODEL:
                        break
                    if time.monotonic() + delay > deadline:
                        break
                    # Waiting out a provider's trouble is not the gateway's own time.
                    slept = time.perf_counter()
                    await asyncio.sleep(delay)
                    self.upstream_seconds += time.perf_counter() - slept
                else:
                    took = time.perf_counter() - attempt_started
                    self.upstream_seconds += took
                    self.call_started = attempt_started
                    if stream:
                        self.ttft_seconds = took
                        metrics.time_to_first_token.labels(model.provider, model.name).observe(took)
                    else:
                        metrics.upstream_latency.labels(model.provider, model.name).observe(took)
                    await breaker.record(model, ok=True)
                    latency.record(model, took * 1000)
                    return model, result
            if time.monotonic() > deadline:
                break
        assert last is not None, "a route always has a model"
        await self._record_failure(identity, *last, stream=stream)
        raise self._client_error(last[1]) from None

    def _usage_event(
        self,
        identity: KeyIdentity,
        model: CatalogModel,
        usage: Usage,
        *,
        status: str,
        http_status: int,
        stream: bool,
        error_code: str = "",
    ) -> UsageEvent:
        self.served = (model.name, model.provider)
        return {
            "request_id": self.request_id,
            "organization_id": identity.organization_id,
            "api_key_id": identity.key_id,
            "team_id": identity.team_id,
            "user_id": identity.user_id,
            "model": model.name,
            "provider": model.provider,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "usage_estimated": usage.estimated,
            "cost_usd": format(self._charge(model, usage), "f"),
            "latency_ms": self.elapsed_ms(),
            "status": status,
            "http_status": http_status,
            "error_code": error_code,
            "stream": stream,
            "created_at": time.time(),
            "attempt": self.step,
            "route_strategy": self.route.strategy if self.route is not None else "",
            "route_reason": self.route.reason if self.route is not None else "",
            "prompt_features": self.route.prompt_features if self.route is not None else None,
            "complexity": self.complexity,
            "request_fingerprint": self.fingerprint,
            "pii_detections": {e.value: n for e, n in self.pii_counts.items()} if self.pii_counts else None,
        }

    def _charge(self, model: CatalogModel, usage: Usage) -> Decimal:
        """The cost of one attempt, counted against the request's budget hold."""
        cost = cost_usd(model, usage)
        if self.reservation is not None:
            self.reservation.charge(model.name, cost)
        return cost

    async def hold_budget(
        self,
        identity: KeyIdentity,
        payload: dict[str, Any],
        *,
        alternatives: tuple[CatalogModel, ...],
        steps: tuple[CatalogModel, ...] = (),
        max_output_tokens: int | None = None,
        max_cost_usd: Decimal | None = None,
    ) -> None:
        """Reserve the request's worst case against the budgets that apply (or refuse it with a 429).

        ``alternatives`` are models of which one answers (a model and its fallbacks):
        the worst case is the dearest. ``steps`` are further models that may all be
        billed (a cascade's escalations). A cost cap bounds the whole.
        """
        found = await organization_budgets(identity.organization_id)
        self.output_cap = found.max_output_tokens_cap
        if not found.rules:
            return
        input_tokens = worst_case_input_tokens(payload)

        def worst(model: CatalogModel) -> Decimal:
            output = max_output_tokens or min(self.output_cap or model.max_output_tokens, model.max_output_tokens)
            cost = worst_case_cost(model, input_tokens, output)
            return cost if max_cost_usd is None else min(cost, max_cost_usd)

        costs = {m.name: worst(m) for m in (*alternatives, *steps)}
        total = max(costs[m.name] for m in alternatives) + sum((costs[m.name] for m in steps), Decimal(0))
        if max_cost_usd is not None:
            total = min(total, max_cost_usd)
        self.reservation = await reserve(
            rules=found.rules,
            team_id=identity.team_id,
            api_key_id=identity.key_id,
            user_id=identity.user_id,
            costs=costs,
            total=total,
        )

    def payload_for(self, request: ChatRequest, model: CatalogModel, spent: Decimal = Decimal(0)) -> dict[str, Any]:
        """The body for ``model``: under a cost cap, with the max_tokens that keeps this call within what is left."""
        route = self.route
        if request.max_output_tokens is not None:
            return request.payload
        if route is None or route.max_cost_usd is None:
            if self.output_cap is None:
                return request.payload
            # The organization's cap is what the budget hold assumed; the provider must not write more.
            return {**request.payload, "max_tokens": min(self.output_cap, model.max_output_tokens)}
        bound = capped_output_tokens(model, request.prompt_tokens, route.max_cost_usd - spent, None)
        if bound is None:
            raise ProviderError(
                f"'{model.name}' cannot answer within what is left of the cost cap.",
                status=400,
                retryable=False,
                code="cost_cap_exceeded",
            )
        if self.output_cap is not None:
            bound = min(bound, self.output_cap)
        return {**request.payload, "max_tokens": bound}

    def describe_request(self, request: ChatRequest, route: RouteDecision) -> None:
        """Note the prompt's complexity (the router's, or the heuristic's now) and the request's fingerprint."""
        if route.complexity is not None:
            self.complexity = route.complexity
        else:
            self.complexity = assess(
                prompt_text(request),
                prompt_tokens=request.prompt_tokens,
                turns=len(request.payload["messages"]),
                has_tools=request.has_tools,
                has_images=request.has_images,
                wants_json=request.wants_json,
            ).score
        self.fingerprint = self.fingerprint or request_fingerprint(request)

    # Whether this endpoint runs a cascade's later steps; one that cannot serves the first step only.
    runs_cascades = True
    cascade_note = ""

    def routing_options(self) -> RoutingOptions:
        """What the request's headers ask of the router; none by default."""
        return RoutingOptions()

    def requested_fallbacks(self) -> tuple[str, ...]:
        """``X-Muxer-Fallbacks``: the models to fall back to, in order."""
        return tuple(name.strip() for name in (self.header(b"x-muxer-fallbacks") or "").split(",") if name.strip())

    async def admit_and_route(self, identity: KeyIdentity, request: ChatRequest) -> RouteDecision:
        """What every chat-shaped endpoint does before calling a provider (:meth:`admit_request`, then
        :meth:`route_request`); chat completions looks in the response cache between the two."""
        await self.admit_request(identity, request)
        return await self.route_request(identity, request)

    async def admit_request(self, identity: KeyIdentity, request: ChatRequest) -> None:
        """Apply the input limits and the PII policy, and count the request against the rate limits."""
        check_input_tokens(request.prompt_tokens)
        self.guard_chat(identity, request)
        tokens = request.prompt_tokens + (request.max_output_tokens or settings.MUXER_ROUTER_EXPECTED_OUTPUT_TOKENS)
        self.rate_headers = await admit(identity, tokens)

    async def route_request(self, identity: KeyIdentity, request: ChatRequest) -> RouteDecision:
        """Choose the request's route, note what the usage record keeps, and hold its worst case against the
        budgets."""
        options = self.routing_options()
        requested_fallbacks = self.requested_fallbacks()
        catalog = await get_catalog()
        if not request.routed:
            named = catalog.get(request.model)
            # Only a model the key may use: for any other, the router's refusal says why.
            if named is not None and identity.may_use(named.name) and identity.allows_provider(named.provider):
                check_context_window(named, request.prompt_tokens, request.max_output_tokens)
        own_keys = await organization_keys(identity.organization_id)
        scorer = PromptScore(await semantic_model_for(identity.organization_id)) if request.routed else None
        deciding = time.perf_counter()
        route = select_route(
            catalog=catalog_for(catalog, identity.organization_id, own_keys),
            identity=identity,
            request=request,
            semantic=scorer,
            options=options,
            requested_fallbacks=requested_fallbacks,
        )
        metrics.routing_decision.labels(route.strategy).observe(time.perf_counter() - deciding)
        if route.escalations and not self.runs_cascades:
            route = replace(route, escalations=(), reason=route.reason + self.cascade_note)
        if scorer is not None:
            route = replace(route, prompt_features=scorer.compact(prompt_text(request)))
        self.route = route
        self.describe_request(request, route)
        await self.hold_budget(
            identity,
            request.payload,
            alternatives=route.chain,
            steps=route.escalations,
            max_output_tokens=request.max_output_tokens,
            max_cost_usd=route.max_cost_usd,
        )
        return route

    async def settle_budget(self) -> None:
        if self.reservation is not None:
            await settle(self.reservation)

    def cacheable_answer(self, model: CatalogModel, body: dict[str, Any], usage: Usage) -> bytes | None:
        """The answer as the cache keeps it, taken before the PII restorer changes ``body``; None when this
        request's answer is not to be kept or cannot be."""
        if self.cache_key is None:
            return None
        return cache_entry(model=model.name, provider=model.provider, body=body, usage=usage)

    async def keep_answer(self, identity: KeyIdentity, entry: bytes | None) -> None:
        if entry is not None and self.cache_key is not None:
            await cached_answer_store(self.cache_key, entry, ttl=identity.response_cache_ttl)

    def log_bodies(self, event: UsageEvent, response: dict[str, Any] | None) -> None:
        """Attach the request as the client sent it and the answer as it got it (PII masked) to the usage event
        that carries the answer, for an organization that keeps them; a failure costs the log, not the record."""
        if self.client_body is None:
            return
        try:
            event["request_log"] = request_log_bodies(request=orjson.loads(self.client_body), response=response)
        except Exception as exc:  # noqa: BLE001 - never lose the usage record over its bodies
            logger.warning("request %s: bodies not logged (%s)", self.request_id, type(exc).__name__)

    async def _record_failure(
        self, identity: KeyIdentity, model: CatalogModel, error: ProviderError, *, stream: bool
    ) -> None:
        event = self._usage_event(
            identity, model, Usage(), status="error", http_status=error.status, stream=stream, error_code=error.code
        )
        self.log_bodies(event, None)
        await usage_emit(event)

    @staticmethod
    def _client_error(error: ProviderError) -> APIError:
        headers = {"retry-after": error.retry_after} if error.retry_after else None
        return APIError(error.status, error.message, type=error.type, code=error.code, headers=headers)

    def _route_headers(self, model: CatalogModel, route: RouteDecision) -> Headers:
        reason = route.reason if model is route.model else f"{route.reason};fallback-from={route.model.name}"
        headers = [
            *_muxer_headers(model, reason),
            (b"x-muxer-strategy", route.strategy.encode()),
            (b"x-muxer-attempts", str(self.attempts).encode()),
        ]
        if self.reservation is not None and self.reservation.left_usd is not None:
            headers.append((b"x-muxer-budget-remaining", f"{self.reservation.left_usd:.10f}".encode()))
        return headers


class ChatCompletionsConsumer(RoutedConsumer):
    """``POST /v1/chat/completions``, streamed and not; routed requests may run as a cascade."""

    endpoint = "chat_completions"

    async def handle(self, body: bytes) -> None:
        identity = self.identity = await self.identify()
        request = parse_chat_request(body)
        check_message_count(len(request.payload["messages"]))
        directive = cache_directive(self.header(b"x-muxer-cache"))
        if identity.request_log:
            self.client_body = body
        idempotency_key = idempotency_key_from(self.header(b"idempotency-key"), stream=request.stream)
        if idempotency_key is not None:
            await self.answer_once(identity, request, directive, idempotency_key, body)
            return
        await self.answer(identity, request, directive)

    async def answer(self, identity: KeyIdentity, request: ChatRequest, directive: CacheDirective | None) -> None:
        await self.admit_request(identity, request)
        if await self.answer_from_cache(identity, request, directive):
            return
        route = await self.route_request(identity, request)
        try:
            if route.escalations:
                await self._cascade(identity, request, route)
            elif request.stream:
                await self._stream(identity, request, route)
            else:
                await self._complete(identity, request, route)
        finally:
            await self.settle_budget()

    async def answer_once(
        self,
        identity: KeyIdentity,
        request: ChatRequest,
        directive: CacheDirective | None,
        idempotency_key: str,
        body: bytes,
    ) -> None:
        """``Idempotency-Key`` (routing/idempotency.py): replay the response the key's first request got, before
        this one is rate limited, routed or billed; or answer it, and keep what the client gets."""
        claimed = await idempotency_claim(identity=identity, idempotency_key=idempotency_key, body=body)
        if isinstance(claimed, StoredResponse):
            self.served = (claimed.header(b"x-muxer-model"), claimed.header(b"x-muxer-provider"))
            await self.start_response(claimed.status, claimed.content_type, [*claimed.headers, REPLAYED])
            await self.send_body(claimed.body)
            return
        self._send = claimed.recording(self._send)
        try:
            await self.answer(identity, request, directive)
        except APIError as exc:
            if self.response_started:
                raise
            # Sent here rather than by _run, so that an error worth keeping is kept while the key is held.
            await self.send_error(exc)
        finally:
            # A request that did not finish (the client left, the gateway failed) frees its key.
            await claimed.release()

    async def identify(self) -> KeyIdentity:
        """The caller's key, from the Authorization header (the console's in-process calls name one instead)."""
        return await authenticate(self.header(b"authorization"))

    def note_cache(self, result: CacheResult) -> None:
        self.cache_result = result
        self.cache_headers = [] if result == "off" else [(b"x-muxer-cache", result.encode())]

    async def answer_from_cache(
        self, identity: KeyIdentity, request: ChatRequest, directive: CacheDirective | None
    ) -> bool:
        """Answer from the response cache when the request allows it and an answer is kept (see
        routing/response_cache.py): no route, no budget hold, no provider call, and a usage record at $0.
        Otherwise note the key, so that the answer this request gets is kept. Whether it answered."""
        skipped = cache_applies(request, ttl=identity.response_cache_ttl, directive=directive)
        if skipped is not None:
            self.note_cache(skipped)
            return False
        self.fingerprint = request_fingerprint(request)
        key = response_cache_key(
            identity=identity,
            request=request,
            fingerprint=self.fingerprint,
            options=self.routing_options(),
            fallbacks=self.requested_fallbacks(),
        )
        cached = await cached_answer_get(key)
        model = None if cached is None else (await get_catalog()).get(cached.model)
        # A kept answer from a model this key may not use (or one since disabled) is not served: the request
        # goes to its own route, and its answer replaces the kept one.
        if cached is None or model is None or model.provider != cached.provider or not permitted(model, identity):
            self.note_cache("miss")
            self.cache_key = key
            return False
        self.note_cache("hit")
        self.served = (model.name, model.provider)
        body = cached.body
        fresh_completion(body)
        self.restore_answer(body)
        headers = [
            (b"x-muxer-model", model.name.encode()),
            (b"x-muxer-provider", model.provider.encode()),
            (b"x-muxer-route-reason", b"cache"),
            (b"x-muxer-cost-usd", b"0"),
            (b"x-muxer-overhead-ms", f"{self.elapsed_ms():.1f}".encode()),
        ]
        event = self._usage_event(identity, model, cached.usage, status="ok", http_status=200, stream=request.stream)
        event["cost_usd"] = "0"
        event["cache_hit"] = True
        self.log_bodies(event, body)
        await usage_emit(event)
        if request.stream:
            await self._replay_stream(request, model, ChatResult(body=body, usage=cached.usage), cached.usage, headers)
        else:
            await self.send_json(200, orjson.dumps(body), headers)
        return True

    def routing_options(self) -> RoutingOptions:
        """The routing headers: ``X-Muxer-Strategy`` and ``X-Muxer-Max-Cost`` (USD)."""
        strategy = self.header(b"x-muxer-strategy")
        max_cost = self.header(b"x-muxer-max-cost")
        return RoutingOptions(
            strategy=None if strategy is None else parse_strategy(strategy.strip(), param="X-Muxer-Strategy"),
            max_cost_usd=None if max_cost is None else parse_max_cost(max_cost, param="X-Muxer-Max-Cost"),
        )

    async def _call_chat(
        self, identity: KeyIdentity, request: ChatRequest, route: RouteDecision, spent: Decimal = Decimal(0)
    ) -> tuple[CatalogModel, ChatResult, Usage]:
        async def start(model: CatalogModel) -> ChatResult:
            adapter = adapter_for(model)
            assert adapter is not None
            return await adapter.chat(model, self.payload_for(request, model, spent))

        model, result = await self._call_route(identity, route, start, stream=False)
        usage = result.usage
        if usage.estimated:
            usage.input_tokens = request.prompt_tokens
            usage.output_tokens = estimate_text_tokens(_completion_chars(result.body))
        return model, result, usage

    async def _complete(self, identity: KeyIdentity, request: ChatRequest, route: RouteDecision) -> None:
        upstream_started = time.perf_counter()
        model, result, usage = await self._call_chat(identity, request, route)
        upstream_ms = (time.perf_counter() - upstream_started) * 1000
        kept = self.cacheable_answer(model, result.body, usage)
        self.restore_answer(result.body)
        event = self._usage_event(identity, model, usage, status="ok", http_status=200, stream=False)
        # Settled before the answer goes out, so the client's next request sees this one's hold released.
        await self.settle_budget()
        headers = self._route_headers(model, route)
        headers.append((b"x-muxer-cost-usd", event["cost_usd"].encode()))
        headers.append((b"x-muxer-overhead-ms", f"{self.elapsed_ms() - upstream_ms:.1f}".encode()))
        # Recorded before the answer goes out: a worker killed in between loses an answer, never its charge.
        self.log_bodies(event, result.body)
        await usage_emit(event)
        await self.send_json(200, orjson.dumps(result.body), headers)
        await self.keep_answer(identity, kept)

    async def _cascade(self, identity: KeyIdentity, request: ChatRequest, route: RouteDecision) -> None:
        """Ask each tier in turn until an answer scores well enough; every attempt is billed and recorded.

        Steps before the last are asked without streaming, so they can be judged
        whole; a streamed request gets the accepted answer replayed as a stream,
        and the last step streams live. A step that fails, or that the cost cap
        has no room for, ends the cascade with the best answer so far.
        """
        steps = (route.model, *route.escalations)
        prompt = prompt_text(request)
        threshold = settings.MUXER_CASCADE_ACCEPT_SCORE
        answers: list[tuple[CatalogModel, ChatResult, Usage, AnswerScore, int]] = []
        spent = Decimal(0)
        chosen: int | None = None
        try:
            for index, step in enumerate(steps):
                if index and not self._fits(request, step, route, spent):
                    break
                self.step = index + 1
                step_route = RouteDecision(
                    model=step,
                    reason=route.reason,
                    strategy=route.strategy,
                    fallbacks=route.fallbacks if index == 0 else (),
                )
                try:
                    if index == len(steps) - 1 and request.stream:
                        trail = self._trail(answers, streaming=step)
                        await self._stream(identity, request, step_route, cascade_trail=trail, spent=spent)
                        return
                    model, result, usage = await self._call_chat(identity, request, step_route, spent)
                except APIError as error:
                    # A tier that fails is passed over; a request every tier would refuse is not.
                    if self.response_started or (not answers and (error.status < 500 or index == len(steps) - 1)):
                        raise
                    continue
                spent += cost_usd(model, usage)
                verdict = score_answer(request, result.body, prompt)
                answers.append((model, result, usage, verdict, index + 1))
                if verdict.score >= threshold:
                    break
            if not answers:
                raise APIError(
                    400, "No step of the cascade fits the cost cap.", code="cost_cap_exceeded", param="model"
                )
            chosen = max(range(len(answers)), key=lambda i: (answers[i][3].score, i))
            model, result, usage, verdict, step_number = answers[chosen]
            self.step = step_number
            # Only an accepted answer is kept: the best of weak ones (a later tier failed) is not worth repeating.
            kept = self.cacheable_answer(model, result.body, usage) if verdict.score >= threshold else None
            self.restore_answer(result.body)
            headers = self._route_headers(model, replace(route, model=steps[step_number - 1]))
            headers.append((b"x-muxer-cascade", self._trail(answers).encode()))
            headers.append((b"x-muxer-cost-usd", format(spent, "f").encode()))
            if request.stream:
                await self._replay_stream(request, model, result, usage, headers)
            else:
                await self.send_json(200, orjson.dumps(result.body), headers)
            await self.keep_answer(identity, kept)
        finally:
            await self._record_steps(identity, answers, chosen=chosen)

    @staticmethod
    def _fits(request: ChatRequest, model: CatalogModel, route: RouteDecision, spent: Decimal) -> bool:
        """Whether what is left of the cost cap has room for another step on ``model``."""
        if route.max_cost_usd is None:
            return True
        prompt_tokens = request.prompt_tokens
        left = route.max_cost_usd - spent
        return capped_output_tokens(model, prompt_tokens, left, request.max_output_tokens) is not None

    @staticmethod
    def _trail(answers: list[tuple[Any, ...]], streaming: CatalogModel | None = None) -> str:
        """Each judged step as ``model=score (reasons)``, and the step that streams live, if any."""
        judged = [f"{a[0].name}={a[3].describe()}" for a in answers]
        if streaming is not None:
            judged.append(f"{streaming.name}=streamed")
        return ";".join(judged)

    async def _record_steps(
        self,
        identity: KeyIdentity,
        answers: list[tuple[CatalogModel, ChatResult, Usage, AnswerScore, int]],
        *,
        chosen: int | None,
    ) -> None:
        current = self.step
        for index, (model, result, usage, verdict, step_number) in enumerate(answers):
            self.step = step_number
            status = "ok" if index == chosen else "escalated"
            event = self._usage_event(identity, model, usage, status=status, http_status=200, stream=False)
            if status == "escalated":
                event["error_code"] = f"cascade_score_{verdict.score:.2f}"
            else:
                self.log_bodies(event, result.body)  # the accepted answer, as the client got it
            await usage_emit(event)
        self.step = current

    async def _replay_stream(
        self, request: ChatRequest, model: CatalogModel, result: ChatResult, usage: Usage, headers: Headers
    ) -> None:
        """Send a whole answer as an OpenAI event stream: the role, the content (or tool calls), the finish."""
        body = result.body
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        base = {
            "id": body.get("id"),
            "object": "chat.completion.chunk",
            "created": body.get("created"),
            "model": body.get("model") or model.name,
            "system_fingerprint": body.get("system_fingerprint"),
        }
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        events = [
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]},
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}],
            },
        ]
        if request.include_usage:
            for event in events:
                event["usage"] = None
            events.append({**base, "choices": [], "usage": _openai_usage(usage)})
        payload = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
        await self.start_response(
            200, b"text/event-stream", [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"), *headers]
        )
        await self.send_body(payload + b"data: [DONE]\n\n")

    async def _stream(
        self,
        identity: KeyIdentity,
        request: ChatRequest,
        route: RouteDecision,
        *,
        cascade_trail: str | None = None,
        spent: Decimal = Decimal(0),
    ) -> None:
        async def start(model: CatalogModel) -> OpenedStream:
            adapter = adapter_for(model)
            assert adapter is not None
            return await open_stream(adapter.stream(model, self.payload_for(request, model, spent)))

        model, opened = await self._call_route(identity, route, start, stream=True)
        stream, chunks = opened.stream, opened.chunks
        progress = stream.progress
        status, http_status, error_code = "ok", 200, ""
        first: dict[str, Any] | None = None
        headers = self._route_headers(model, route)
        if cascade_trail is not None:
            headers.append((b"x-muxer-cascade", cascade_trail.encode()))
        restoring = self.answer_restorer()
        # The whole answer, for the response cache (as the provider sent it) and the request log (as the client
        # got it); only built when one of them wants it.
        assembler = AnswerAssembler() if self.cache_key is not None or self.client_body is not None else None
        answer: dict[str, Any] | None = None
        kept: bytes | None = None
        try:
            await self.start_response(
                200,
                b"text/event-stream",
                [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"), *headers],
            )
            try:
                async with asyncio.timeout(model.call_timeouts.total):
                    async for chunk in chunks:
                        if assembler is not None:
                            assembler.feed(chunk)
                        if restoring is not None:
                            restoring.feed(chunk)
                        if first is None and "choices" in chunk:
                            first = chunk
                        if request.include_usage and "choices" in chunk:
                            chunk["usage"] = None
                        await self.send_body(b"data: " + orjson.dumps(chunk) + b"\n\n", more=True)
            except TimeoutError:
                progress.error = {
                    "message": f"{model.provider} did not finish within the total timeout.",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_timeout",
                }
                await self.send_body(b"data: " + orjson.dumps({"error": progress.error}) + b"\n\n", more=True)
            if progress.error is None and not progress.finished:
                # The provider's stream ended without its final event: say so rather than fake a [DONE].
                progress.error = {
                    "message": f"{model.provider} ended the stream before finishing.",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_incomplete",
                }
                await self.send_body(b"data: " + orjson.dumps({"error": progress.error}) + b"\n\n", more=True)
            if progress.error is not None:
                status, http_status = "error", 502
                error_code = str(progress.error.get("code") or "upstream_error")
            else:
                usage = self._settled_usage(request, stream.progress.usage, progress.completion_chars)
                if assembler is not None:
                    answer = assembler.completion(model=model.name, usage=_openai_usage(usage))
                    kept = None if assembler.lossy else self.cacheable_answer(model, answer, usage)
                    self.restore_answer(answer)
                tail = b""
                if request.include_usage and first is not None:
                    usage_chunk: dict[str, Any] = {
                        "id": first.get("id"),
                        "object": "chat.completion.chunk",
                        "created": first.get("created"),
                        "model": model.name,
                        "system_fingerprint": first.get("system_fingerprint"),
                        "choices": [],
                        "usage": _openai_usage(usage),
                    }
                    tail = b"data: " + orjson.dumps(usage_chunk) + b"\n\n"
                # An SSE comment: clients ignore it, but the cost of a stream is only known here.
                tail += b": x-muxer-cost-usd=" + format(cost_usd(model, usage), "f").encode() + b"\n\n"
                await self.send_body(tail + b"data: [DONE]\n\n", more=True)
            await self.send_body(b"")
            await self.keep_answer(identity, kept)
        except asyncio.CancelledError:
            status, http_status, error_code = "client_disconnected", 499, "client_disconnected"
            raise
        finally:
            await chunks.aclose()
            await stream.close()
            # The provider's whole stream, from the call that opened it; its time after the first chunk is
            # upstream time too.
            streamed = time.perf_counter() - self.call_started
            metrics.upstream_latency.labels(model.provider, model.name).observe(streamed)
            self.upstream_seconds += max(streamed - (self.ttft_seconds or 0.0), 0.0)
            usage = self._settled_usage(request, progress.usage, progress.completion_chars)
            event = self._usage_event(
                identity, model, usage, status=status, http_status=http_status, stream=True, error_code=error_code
            )
            self.log_bodies(event, answer if status == "ok" else None)
            await usage_emit(event)

    @staticmethod
    def _settled_usage(request: ChatRequest, reported: Usage | None, completion_chars: int) -> Usage:
        if reported is not None:
            return reported
        return Usage(
            input_tokens=request.prompt_tokens,
            output_tokens=estimate_text_tokens(completion_chars),
            estimated=True,
        )


class EmbeddingsConsumer(RoutedConsumer):
    """``POST /v1/embeddings``: retried like chat; no fallback to another model, whose vectors would differ."""

    endpoint = "embeddings"

    async def handle(self, body: bytes) -> None:
        identity = self.identity = await authenticate(self.header(b"authorization"))
        request = parse_embedding_request(body)
        input_tokens = sum(estimate_text_tokens(len(text)) for text in request.texts)
        check_input_tokens(input_tokens, param="input")
        self.guard_input(identity, request)
        self.rate_headers = await admit(identity, input_tokens)
        catalog = await get_catalog()
        own_keys = await organization_keys(identity.organization_id)
        model = select_embedding_model(
            catalog=catalog_for(catalog, identity.organization_id, own_keys), identity=identity, name=request.model
        )
        route = RouteDecision(model=model, reason="explicit")
        await self.hold_budget(identity, {"messages": [{"content": t} for t in request.texts]}, alternatives=(model,))
        try:
            await self._embed(identity, request, route)
        finally:
            await self.settle_budget()

    def guard_input(self, identity: KeyIdentity, request: EmbeddingRequest) -> None:
        """Mask (or refuse) PII in the texts to embed; token-id inputs carry no readable text. Nothing is
        restored: vectors hold no text to put it back into."""
        policy = identity.pii_policy
        if policy.is_off:
            return
        raw = request.payload["input"]
        if isinstance(raw, str):
            texts = [raw]
        elif all(isinstance(item, str) for item in raw):
            texts = raw
        else:
            return
        result = self.apply_pii_policy(policy, [{"content": text} for text in texts], param="input")
        if result is None or not result.restorer:
            return
        masked = [message["content"] for message in result.messages]
        request.payload["input"] = masked[0] if isinstance(raw, str) else masked
        request.texts = masked

    async def _embed(self, identity: KeyIdentity, request: EmbeddingRequest, route: RouteDecision) -> None:
        async def start(target: CatalogModel) -> EmbeddingResult:
            adapter = adapter_for(target)
            assert adapter is not None
            return await adapter.embed(target, request.payload)

        model, result = await self._call_route(identity, route, start, stream=False)
        usage = result.usage
        if usage.estimated:
            usage.input_tokens = sum(estimate_text_tokens(len(text)) for text in request.texts)
        event = self._usage_event(identity, model, usage, status="ok", http_status=200, stream=False)
        headers = self._route_headers(model, route)
        headers.append((b"x-muxer-cost-usd", event["cost_usd"].encode()))
        await usage_emit(event)
        await self.send_json(200, orjson.dumps(result.body), headers)
