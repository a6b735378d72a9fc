"""How long one routing decision takes, per strategy, on a 2,000-token prompt.

Run from the repo root:  .venv/bin/python bench/routing_latency.py [--runs 5000]

Each decision is the whole of ``select_route`` for ``muxer/<strategy>``: reading
the prompt, scoring it, filtering the seeded catalog (every provider
configured) by policy, capability, health and cost, and ranking the tier. No
database or network: the catalog is built in memory from the seed data, as the
gateway holds it in process. Targets: heuristic p99 <= 1 ms, semantic p99 <= 3 ms.
The machine is shared, so read the figures beside each other, not as absolutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "muxer_project.settings")

import django

django.setup()

import orjson  # noqa: E402

from accounts.auth import KeyIdentity  # noqa: E402
from billing.tokens import estimate_prompt_tokens  # noqa: E402
from providers.catalog import Catalog, CatalogModel  # noqa: E402
from providers.catalog_seed import MODELS, PROVIDERS  # noqa: E402
from providers.services import quality_tier_default  # noqa: E402
from routing.schema import parse_chat_request  # noqa: E402
from routing.selection import select_route  # noqa: E402
from routing.semantic import default_semantic_model  # noqa: E402

PARAGRAPH = (
    "Our checkout service times out under load. The handler below retries the payment call, then writes the "
    "order. Explain step by step why the p99 latency grows with concurrency, compare a queue-based design "
    "with the current one, and propose a fix with code.\n"
    "```python\nasync def checkout(order):\n    for attempt in range(3):\n        try:\n"
    "            return await payments.charge(order.total)\n        except Timeout:\n"
    "            await asyncio.sleep(2 ** attempt)\n```\n"
)


def two_thousand_token_prompt() -> str:
    text = ""
    while estimate_prompt_tokens([{"role": "user", "content": text}]) < 2_000:
        text += PARAGRAPH
    return text


def seeded_catalog() -> Catalog:
    wire = {p["slug"]: p["wire_format"] for p in PROVIDERS}
    models = {}
    for seed in MODELS:
        if seed["kind"] != "chat":
            continue
        models[seed["name"]] = CatalogModel(
            name=seed["name"],
            kind=seed["kind"],
            provider=seed["provider"],
            wire_format=wire[seed["provider"]],
            base_url="http://127.0.0.1:9/v1",
            credential="sk-bench",
            input_price_per_mtok_usd=seed["input_price_per_mtok_usd"],
            output_price_per_mtok_usd=seed["output_price_per_mtok_usd"],
            cached_input_price_per_mtok_usd=seed["cached_input_price_per_mtok_usd"],
            context_window=seed["context_window"],
            max_output_tokens=seed["max_output_tokens"],
            supports_streaming=seed["supports_streaming"],
            supports_tools=seed["supports_tools"],
            supports_vision=seed["supports_vision"],
            supports_json_mode=seed["supports_json_mode"],
            created=0,
            quality_tier=quality_tier_default(seed["name"]),
        )
    return Catalog(models=models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5_000)
    args = parser.parse_args()

    catalog = seeded_catalog()
    identity = KeyIdentity(
        key_id=1,
        prefix="mm_live_bench",
        digest="0" * 64,
        organization_id=1,
        team_id=None,
        user_id=None,
        allowed_models=frozenset(),
        org_allowed_models=frozenset(),
        expires_at=None,
        revoked=False,
    )
    semantic = default_semantic_model()
    prompt = two_thousand_token_prompt()
    tokens = estimate_prompt_tokens([{"role": "user", "content": prompt}])
    print(f"prompt: {len(prompt)} characters, ~{tokens} tokens; catalog: {len(catalog.models)} chat models")
    print(f"{'strategy':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  decision")
    for strategy in ("heuristic", "semantic", "hybrid", "cascade"):
        body = orjson.dumps({"model": f"muxer/{strategy}", "messages": [{"role": "user", "content": prompt}]})
        request = parse_chat_request(body)
        for _ in range(200):  # warm caches and the allocator
            select_route(catalog=catalog, identity=identity, request=request, semantic=semantic)
        timings = []
        for _ in range(args.runs):
            started = time.perf_counter()
            decision = select_route(catalog=catalog, identity=identity, request=request, semantic=semantic)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        p99 = timings[int(len(timings) * 0.99) - 1]
        print(
            f"{strategy:<10} {statistics.median(timings):>8.3f} {p99:>8.3f} {timings[-1]:>8.3f}  "
            f"{decision.model.name} ({decision.reason[:70]})"
        )


if __name__ == "__main__":
    main()
