"""Schemathesis against ``/api/schema/``, in process: the API answers every input as its schema says.

No input, valid or not, makes it answer 5xx; every status it answers is documented for the
operation, with the documented content type, a body that validates against the documented
schema (list envelopes, and the error shape of ``routing.openapi.error_responses``) and the
documented headers. Schemathesis generates invalid input too (its negative mode), which is
why each operation documents its 400, and a request it sends without credentials its 401.

Each operation runs against a tenant with data, as its owner (a JWT) or, on the
``/v1/`` DRF views, with its proxy key. The organization in the URL is the
tenant's; an id in the URL is the generated one half of the time (to reach
foreign, missing and absurd ids, and ones of the wrong type) and the
tenant's real object otherwise (to reach the handlers behind the lookup). The Channels consumers
(``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/messages``) are in the
schema but not in the WSGI application: their input validation has its own
tests in tests/routing.

Bounded and derandomized, so CI runs the same examples every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .endpoints import ID_FACTORIES, World, build_world

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
CONSUMER_PATHS = r"^/v1/(chat/completions|embeddings|messages)$"

schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application()).exclude(path_regex=CONSUMER_PATHS)


@pytest.fixture
def fuzz_world(catalog: None) -> Iterator[World]:
    # Django's own test client does the same: closing "old" connections after each request
    # would close the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield build_world("fuzzed")
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def aim(case: schemathesis.Case, world: World) -> None:
    params: dict[str, Any] = case.path_parameters or {}
    if "org" in params:
        params["org"] = world.slug
    for name, value in params.items():
        # Odd integers become the tenant's object; even ones, and values of the wrong type, stay as generated.
        if name in ID_FACTORIES and isinstance(value, int) and value % 2:
            params[name] = world.ids[name]


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_answers_as_documented(case: schemathesis.Case, fuzz_world: World) -> None:
    aim(case, fuzz_world)
    principal = "key:proxy" if case.path.startswith("/v1/") else "owner"
    case.call_and_validate(headers={"Authorization": fuzz_world.bearer(principal)}, checks=CHECKS)
