"""The in-process proxy fixtures (own usage stream, loop-bound clients closed) for billing tests too."""

from tests.routing.conftest import _close_loop_clients, usage_stream

__all__ = ["_close_loop_clients", "usage_stream"]
