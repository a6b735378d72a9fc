"""The fake upstream's openai_compat dialect (not written yet)."""

from __future__ import annotations


def register() -> None:
    """Add this dialect's routes with `providers.fake_upstream.register_dialect`."""
