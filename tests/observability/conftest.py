"""promtool validates the alert rules, their unit tests and the scrape config.

Locally a missing promtool skips those tests; under CI (``CI`` set) it fails
them, as missing services do (tests/conftest.py): `make promtool` installs it.
"""

from __future__ import annotations

import pytest

from tests.conftest import IN_CI

from .promql import promtool_path


@pytest.fixture(scope="session")
def promtool() -> str:
    path = promtool_path()
    if path is None:
        message = "promtool is not on PATH (make promtool installs Debian's prometheus package)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path
