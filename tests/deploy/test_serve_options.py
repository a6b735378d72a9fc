"""The server runner's keep-alive option, which the deployments set above their proxies' idle timeouts."""

from __future__ import annotations

import pytest

from muxer_project.serve import build_config, parse_args


def test_keep_alive_defaults_to_uvicorns_five_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUXER_KEEP_ALIVE_SECONDS", raising=False)
    assert build_config(parse_args([])).timeout_keep_alive == 5


def test_keep_alive_comes_from_the_environment_or_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUXER_KEEP_ALIVE_SECONDS", "75")
    assert build_config(parse_args([])).timeout_keep_alive == 75
    assert build_config(parse_args(["--timeout-keep-alive", "90"])).timeout_keep_alive == 90
