"""The hot path's per-process cache: freshness, cached misses, one load for concurrent misses."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.db import OperationalError
from pytest_django.fixtures import Settings as SettingsWrapper

from muxer_project.cached_loader import RETRY_SECONDS, CachedLoader


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


# --- the database unreachable: a stale copy serves, for a while ---------------------------------


class FlakyDatabase:
    """A load that fails as an unreachable database does while ``down`` (after ``delay`` seconds, as a frozen one)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.down = False
        self.delay = delay
        self.calls = 0

    def __call__(self, key: int) -> str:
        self.calls += 1
        if self.down:
            time.sleep(self.delay)
            raise OperationalError("connection refused")
        return f"value-{key}-{self.calls}"


@pytest.fixture
def stale_allowance(settings: SettingsWrapper) -> SettingsWrapper:
    settings.MUXER_STALE_CACHE_SECONDS = 60.0
    return settings


def test_an_expired_copy_serves_while_the_database_is_unreachable(stale_allowance: SettingsWrapper) -> None:
    database = FlakyDatabase()
    loader: CachedLoader[int, str] = CachedLoader("flaky", database, lambda: 0.0)
    assert loader.get_sync(1) == "value-1-1"
    database.down = True
    assert loader.get_sync(1) == "value-1-1"
    database.down = False
    assert loader.get_sync(1) == "value-1-3"


def test_past_the_allowance_the_outage_reaches_the_caller(stale_allowance: SettingsWrapper) -> None:
    database = FlakyDatabase()
    loader: CachedLoader[int, str] = CachedLoader("flaky", database, lambda: 0.0)
    loader.get_sync(1)
    stale_allowance.MUXER_STALE_CACHE_SECONDS = 0.0
    database.down = True
    with pytest.raises(OperationalError):
        loader.get_sync(1)


def test_a_key_never_loaded_has_no_copy_to_fall_back_on(stale_allowance: SettingsWrapper) -> None:
    database = FlakyDatabase()
    database.down = True
    loader: CachedLoader[int, str] = CachedLoader("flaky", database, lambda: 60.0)
    with pytest.raises(OperationalError):
        loader.get_sync(1)


def test_other_errors_are_not_hidden_behind_a_stale_copy(stale_allowance: SettingsWrapper) -> None:
    calls: list[int] = []

    def broken(key: int) -> str:
        calls.append(key)
        if len(calls) > 1:
            raise ValueError("a bug, not an outage")
        return "v"

    loader: CachedLoader[int, str] = CachedLoader("broken", broken, lambda: 0.0)
    loader.get_sync(1)
    with pytest.raises(ValueError, match="a bug"):
        loader.get_sync(1)


@pytest.mark.asyncio
async def test_while_down_a_stale_copy_answers_at_once_and_the_database_is_retried_behind_it(
    stale_allowance: SettingsWrapper,
) -> None:
    database = FlakyDatabase(delay=0.3)  # a frozen database: each attempt takes its time to fail
    loader: CachedLoader[int, str] = CachedLoader("frozen", database, lambda: 0.0)
    assert await loader.get(1) == "value-1-1"
    database.down = True
    assert await loader.get(1) == "value-1-1"  # this one waited for the failed attempt
    attempts = database.calls

    started = time.perf_counter()
    answers = [await loader.get(1) for _ in range(20)]
    assert answers == ["value-1-1"] * 20
    assert time.perf_counter() - started < 0.2
    # At most one background attempt started meanwhile, not one per request.
    assert database.calls - attempts <= 1

    database.down = False
    await asyncio.sleep(RETRY_SECONDS + 0.4)
    await loader.get(1)  # starts the background reload that finds the database back
    await asyncio.sleep(0.1)
    # Back: loads run again (a loader still marked down would keep answering with the old copy).
    assert await loader.get(1) != "value-1-1"
