"""The deploy checks share the alert-rule tests' promtool fixture (a skip locally without it, a failure under CI)."""

from tests.observability.conftest import promtool

__all__ = ["promtool"]
