"""Each live-server test starts with an empty usage stream.

The gateway process outlives the tests, and transactional tests flush the
database between them; an event a previous test left on the stream would
name an API key that no longer exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings

from muxer_project.redis import sync_redis


@pytest.fixture(autouse=True)
def _empty_usage_stream(request: pytest.FixtureRequest) -> Iterator[None]:
    if not settings.REDIS_URL or "gateway" not in request.fixturenames:
        yield
        return
    stream = request.getfixturevalue("gateway").usage_stream
    sync_redis().delete(stream)
    yield
    sync_redis().delete(stream)
