"""The hot path's per-process cache: freshness, cached misses, one load for concurrent misses."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from muxer_project.cached_loader import CachedLoader


def counting_loader(ttl: float = 60.0, value: object = "v") -> tuple[CachedLoader[int, object], list[int]]:
    calls: list[int] = []

    def load(key: int) -> object:
        calls.append(key)
        return value

    return CachedLoader("test", load, lambda: ttl), calls


def test_a_fresh_copy_is_served_without_loading_again() -> None:
    loader, calls = counting_loader()
    assert loader.get_sync(1) == "v"
    assert loader.get_sync(1) == "v"
    assert calls == [1]


def test_an_expired_copy_is_loaded_again() -> None:
    loader, calls = counting_loader(ttl=0.0)
    loader.get_sync(1)
    loader.get_sync(1)
    assert calls == [1, 1]


def test_a_none_result_is_cached_like_any_other() -> None:
    loader, calls = counting_loader(value=None)
    assert loader.get_sync(7) is None
    assert loader.cached(7) == (True, None)
    assert loader.get_sync(7) is None
    assert calls == [7]


def test_forget_drops_one_key_or_all() -> None:
    loader, _ = counting_loader()
    loader.get_sync(1)
    loader.get_sync(2)
    loader.forget(1)
    assert loader.cached(1) == (False, None)
    assert loader.cached(2) == (True, "v")
    loader.forget()
    assert loader.cached(2) == (False, None)


def test_the_cache_is_bounded() -> None:
    loader, _ = counting_loader()
    loader.max_entries = 3
    for key in range(5):
        loader.get_sync(key)
    assert len(loader._entries) <= 3


@pytest.mark.asyncio
async def test_concurrent_misses_share_one_load_on_a_worker_thread() -> None:
    started = threading.Event()
    threads: list[str] = []
    calls: list[int] = []

    def slow(key: int) -> str:
        calls.append(key)
        threads.append(threading.current_thread().name)
        started.set()
        time.sleep(0.05)
        return f"value-{key}"

    loader: CachedLoader[int, str] = CachedLoader("slow", slow, lambda: 60.0)
    results = await asyncio.gather(*(loader.get(3) for _ in range(20)))

    assert results == ["value-3"] * 20
    assert calls == [3]
    assert threads != [threading.current_thread().name]
