"""The fake upstream's OpenAI embeddings endpoint: ``POST /v1/embeddings``.

Vectors are deterministic (derived from a SHA-256 of each input), so tests can
compare them; ``prompt_tokens`` is ceil(characters / 4) per input. A
``[fake status=N]`` directive in the first input answers with that error.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import orjson

from providers import fake_upstream as fake

DEFAULT_DIMENSIONS = 8


def vector(text: str, dimensions: int) -> list[float]:
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    return [round(byte / 127.5 - 1.0, 6) for byte in digest[:dimensions]]


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list) and value:
        return [v if isinstance(v, str) else " ".join(map(str, v)) for v in value]
    raise fake.BadRequestError("'input' must be a string or a non-empty array.", "input")


async def handle(app: fake.FakeUpstream, scope: fake.Scope, receive: fake.Receive, send: fake.Send) -> None:
    if scope["method"] != "POST" or scope["path"] != "/v1/embeddings":
        body = fake._error_body(f"Invalid URL ({scope['method']} {scope['path']})", "invalid_request_error", None, None)
        await fake._send_json(send, 404, body, fake._JSON_HEADERS)
        return
    raw = await fake._read_body(receive)
    app.stats.requests += 1
    app.stats.last_request = (scope["method"], scope["path"], scope["headers"], raw)
    if not any(name == b"authorization" and value.startswith(b"Bearer ") for name, value in scope["headers"]):
        app.stats.errors += 1
        body = fake._error_body("You didn't provide an API key.", "invalid_request_error", None, "invalid_api_key")
        await fake._send_json(send, 401, body, fake._JSON_HEADERS)
        return
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            raise fake.BadRequestError("you must provide a model parameter", "model")
        texts = _texts(data.get("input"))
        controls = app.defaults
        if fake.DIRECTIVE_OPEN in texts[0]:
            texts[0], controls = fake._apply_directives(texts[0], controls, data["model"])
    except (orjson.JSONDecodeError, fake.BadRequestError) as exc:
        app.stats.errors += 1
        message = str(exc) if isinstance(exc, fake.BadRequestError) else "We could not parse the JSON body."
        await fake._send_json(
            send, 400, fake._error_body(message, "invalid_request_error", None, None), fake._JSON_HEADERS
        )
        return
    if controls.status is not None:
        app.stats.errors += 1
        body, extra = fake._injected_error(controls.status, data["model"], controls.retry_after)
        await fake._send_json(send, controls.status, body, [*fake._JSON_HEADERS, *extra])
        return
    dimensions = data.get("dimensions") or DEFAULT_DIMENSIONS
    as_base64 = data.get("encoding_format") == "base64"
    items = []
    for index, text in enumerate(texts):
        values = vector(text, dimensions)
        embedding: Any = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode() if as_base64 else values
        items.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(max(1, -(-len(text) // 4)) for text in texts)
    body = orjson.dumps(
        {
            "object": "list",
            "data": items,
            "model": data["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
    app.stats.completed += 1
    await fake._send_json(send, 200, body, fake._JSON_HEADERS)


def register() -> None:
    fake.register_dialect("/v1/embeddings", handle)
