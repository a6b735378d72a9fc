"""Secret hygiene over the whole test session: no issued secret reaches a log or an audit row.

A pytest plugin (registered in tests/conftest.py). During the session it

- records every secret the application issues: API keys (every one
  ``accounts.keys.generate_key`` makes, and any adopted through
  ``api_key_create``, such as the demo key), invitation tokens, webhook
  signing secrets, the provider keys organizations store (BYOK), and every
  JSON Web Token signed (access and refresh tokens alike: simplejwt signs
  each one through ``TokenBackend.encode``);
- captures every log record of the test process at DEBUG and up, with its
  arguments and traceback;
- after each test that used the database, and before its rows are rolled
  back or flushed, scans every audit event, field by field;
- at the end, scans the captured records and the log files of the servers the
  fixtures started (``*.log`` under pytest's temporary directory).

Any secret found fails the session, naming its kind, its non-secret prefix and
where it was seen; the secret itself is never printed. The scanner's own test
(tests/governance/test_hygiene.py) plants leaks to prove it finds them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
import traceback
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Fixtures that give a test the database; its audit rows are scanned before they go.
DB_FIXTURES = frozenset({"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"})


@dataclass(frozen=True)
class Leak:
    kind: str
    prefix: str
    where: str

    def __str__(self) -> str:
        return f"{self.kind} {self.prefix}… in {self.where}"


class SecretLedger:
    """The secrets issued so far, and a scan for them that costs one regex pass per text.

    Each secret is filed under its first ``ANCHOR`` characters; the scan finds
    the anchors with one alternation, then compares the candidates of each
    recorded length.
    """

    ANCHOR = 6

    def __init__(self) -> None:
        self._kinds: dict[str, str] = {}
        self._lengths: dict[str, set[int]] = {}
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kinds)

    def __contains__(self, secret: object) -> bool:
        return secret in self._kinds

    def add(self, kind: str, secret: object) -> None:
        if not isinstance(secret, str) or len(secret) < 12 or secret in self._kinds:
            return  # too short to be a secret worth the name (and to scan for without noise)
        with self._lock:
            anchor = secret[: self.ANCHOR]
            self._kinds[secret] = kind
            if anchor not in self._lengths:
                self._pattern = None
            self._lengths.setdefault(anchor, set()).add(len(secret))

    def _anchors(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._lengths:
            self._pattern = re.compile("|".join(re.escape(anchor) for anchor in sorted(self._lengths)))
        return self._pattern

    def find(self, text: str, where: str) -> list[Leak]:
        pattern = self._anchors()
        if pattern is None or not text:
            return []
        leaks: dict[str, Leak] = {}
        for match in pattern.finditer(text):
            start = match.start()
            for length in self._lengths.get(match.group(), ()):
                candidate = text[start : start + length]
                if candidate in self._kinds and candidate not in leaks:
                    leaks[candidate] = Leak(self._kinds[candidate], shown_prefix(candidate), where)
        return list(leaks.values())


def shown_prefix(secret: str) -> str:
    """What may be printed about a secret: an API key's lookup prefix (stored in the clear anyway), else 8 chars."""
    if secret.startswith("mm_live_"):
        return secret[:16]
    return secret[:8]


def record_text(record: logging.LogRecord) -> str:
    """A record as a handler would render it: message with its arguments, traceback, stack and extras."""
    try:
        message = record.getMessage()
    except Exception:  # a record whose arguments do not fit its format: scan the parts
        message = f"{record.msg!r} {record.args!r}"
    parts = [record.name, message]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    standard = logging.LogRecord("", 0, "", 0, "", None, None).__dict__
    parts.extend(f"{key}={_extra(value)}" for key, value in record.__dict__.items() if key not in standard)
    return "\n".join(parts)


def _extra(value: object) -> str:
    from django.http import HttpRequest

    if isinstance(value, HttpRequest):
        # Django's request logger attaches the request; what a handler shows of it is the method and path.
        # Its query string is what the client chose to send (a test that GETs with a key in it, say), not ours.
        return f"<{value.method} {value.path}>"
    return repr(value)


class CapturingHandler(logging.Handler):
    """Keeps the text of every record, rendered when it is emitted (arguments may change later)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.texts.append((record.name, record_text(record)))
        except Exception:  # a handler must never break the code that logs
            self.handleError(record)


def audit_leaks(ledger: SecretLedger, where: str) -> list[Leak]:
    """Every field of every audit event, as JSON, scanned for the ledger's secrets."""
    from audit.models import AuditEvent

    leaks: list[Leak] = []
    for row in AuditEvent.objects.order_by("pk").values():
        text = json.dumps(row, default=str, ensure_ascii=False)
        leaks.extend(ledger.find(text, f"audit event {row['id']} ({row['action']}) after {where}"))
    return leaks


def log_leaks(ledger: SecretLedger, texts: Iterable[tuple[str, str]]) -> list[Leak]:
    leaks: list[Leak] = []
    for logger_name, text in texts:
        leaks.extend(ledger.find(text, f"a log record of {logger_name or 'root'}"))
    return leaks


def file_leaks(ledger: SecretLedger, paths: Iterable[Path]) -> list[Leak]:
    leaks: list[Leak] = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        leaks.extend(ledger.find(text, f"log file {path}"))
    return leaks


# --- the session's state -----------------------------------------------------------------------

LEDGER = SecretLedger()
HANDLER = CapturingHandler()
LEAKS: list[Leak] = []
_undo: list[Callable[[], None]] = []


def _wrap(module: Any, name: str, record: Callable[[tuple[Any, ...], dict[str, Any], Any], None]) -> None:
    original = getattr(module, name, None)
    if original is None:
        return  # not in this version of the code

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        record(args, kwargs, result)
        return result

    setattr(module, name, wrapper)
    _undo.append(lambda: setattr(module, name, original))


def _watch_secrets() -> None:
    from rest_framework_simplejwt.backends import TokenBackend

    from accounts import keys, services
    from providers import services as provider_services

    _wrap(keys, "generate_key", lambda a, k, result: LEDGER.add("API key", result))
    _wrap(keys, "generate_invitation_token", lambda a, k, result: LEDGER.add("invitation token", result))
    for name in ("api_key_create", "api_key_rotate"):
        _wrap(services, name, lambda a, k, result: LEDGER.add("API key", getattr(result, "secret", None)))
    _wrap(services, "invitation_create", lambda a, k, result: LEDGER.add("invitation token", result.token))
    _wrap(services, "organization_webhook_secret_rotate", lambda a, k, result: LEDGER.add("webhook secret", result))
    _wrap(provider_services, "provider_credential_set", lambda a, k, result: LEDGER.add("provider key", k["api_key"]))
    # Every token str()'d, whichever class (access, refresh, sliding) or code path (for_user, refresh rotation) made it.
    _wrap(TokenBackend, "encode", lambda a, k, result: LEDGER.add("JWT", result))


def _watch_logs() -> None:
    """Capture at DEBUG on the root logger; again whenever something (``django.setup()``) reconfigured logging."""
    root = logging.getLogger()
    if HANDLER not in root.handlers or root.level != logging.DEBUG:
        previous = root.level if root.level != logging.DEBUG else logging.INFO
        # The console handlers keep printing what they printed before; only the capture sees DEBUG.
        for handler in root.handlers:
            if handler is not HANDLER and handler.level < previous:
                _undo.append(functools.partial(handler.setLevel, handler.level))
                handler.setLevel(previous)
        _undo.append(functools.partial(root.setLevel, previous))
        root.setLevel(logging.DEBUG)
        if HANDLER not in root.handlers:
            root.addHandler(HANDLER)
            _undo.append(functools.partial(root.removeHandler, HANDLER))
    # Loggers that do not propagate would bypass the root's handler.
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate and HANDLER not in logger.handlers:
            logger.addHandler(HANDLER)
            _undo.append(functools.partial(logger.removeHandler, HANDLER))


def pytest_sessionstart(session: pytest.Session) -> None:
    _watch_secrets()
    _watch_logs()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _watch_logs()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    # Before the fixtures finish: the test's rows are still there, rolled back or flushed only after this.
    if DB_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("django_db"):
        from django.db import Error as DatabaseError

        # Not opened to this test after all (RuntimeError), or its transaction is already broken.
        with contextlib.suppress(RuntimeError, DatabaseError):
            LEAKS.extend(audit_leaks(LEDGER, item.nodeid))
    return (yield)


def server_logs(session: pytest.Session) -> list[Path]:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return []
    try:
        base = factory.getbasetemp()
    except (OSError, ValueError):
        return []
    return sorted(base.rglob("*.log"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for undo in reversed(_undo):
        undo()
    _undo.clear()
    LEAKS.extend(log_leaks(LEDGER, HANDLER.texts))
    LEAKS.extend(file_leaks(LEDGER, server_logs(session)))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if LEAKS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.ensure_newline()
            reporter.section("secret hygiene: issued secrets found where they must never be", sep="=", red=True)
            for leak in dict.fromkeys(LEAKS):
                reporter.write_line(f"LEAK: {leak}", red=True)
    elif reporter is not None and len(LEDGER):
        reporter.ensure_newline()
        reporter.write_line(
            f"secret hygiene: {len(LEDGER)} issued secrets, none in {len(HANDLER.texts)} log records, "
            f"the audit rows or {len(server_logs(session))} server log files"
        )
