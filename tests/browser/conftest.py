"""Browser tests: Debian's chromium, driven by Playwright, against the gateway served as in production.

The server is a real uvicorn process on the test database next to the fake
upstream; with Redis configured (CI) the usage writer runs beside it, as a
deployment runs them. Mail goes to files, so a test can follow the links a
user would get. Each test's pages are screenshotted into ``screenshots/``
(``MUXER_SCREENSHOT_DIR``) for reviewing the look.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from playwright.sync_api import Browser, Page, sync_playwright

from accounts.models import User
from tests.conftest import BREAKER_OFF, ROOT, FakeUpstream, database_url, free_port, provider_env, stop, wait_for

SCREENSHOTS = Path(os.environ.get("MUXER_SCREENSHOT_DIR") or ROOT / "screenshots")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@dataclass
class LiveServer:
    url: str
    mail_dir: Path
    log: Path
    usage_stream: str

    def mails(self) -> list[Message]:
        """Every message sent so far, oldest first (the file backend writes one file per connection)."""
        messages: list[Message] = []
        for path in sorted(self.mail_dir.glob("*.log"), key=lambda p: p.stat().st_mtime):
            for raw in path.read_text().split("-" * 79):
                if raw.strip():
                    messages.append(email.message_from_string(raw.strip()))
        return messages

    def link_in_mail(self, *, to: str, path_part: str, timeout: float = 10.0) -> str:
        """The first link containing ``path_part`` in the newest message to ``to``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in reversed(self.mails()):
                if to.lower() not in str(message["To"]).lower():
                    continue
                body = _text_of(message)
                found = re.search(rf"https?://\S*{re.escape(path_part)}\S*", body)
                if found:
                    return found.group(0)
            time.sleep(0.1)
        raise AssertionError(f"no mail to {to} with a {path_part} link; log: {self.log}")


def _text_of(message: Message) -> str:
    if message.is_multipart():
        return "\n".join(_text_of(part) for part in message.get_payload() if isinstance(part, Message))
    payload = message.get_payload(decode=True)
    return payload.decode() if isinstance(payload, bytes) else str(message.get_payload())


@pytest.fixture(scope="session")
def live_server_process(
    django_db_setup: None, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("browser-server")
    mail_dir = workdir / "mail"
    mail_dir.mkdir()
    stream = f"muxer:usage:browser:{uuid.uuid4().hex}"
    queue = f"muxer-browser-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        **provider_env(fake_upstream.url),
        **BREAKER_OFF,
        "SECRET_KEY": settings.SECRET_KEY,
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(mail_dir),
        "MUXER_KEY_CACHE_SECONDS": "0.2",
        "MUXER_CATALOG_CACHE_SECONDS": "0.2",
        "MUXER_BUDGET_CACHE_SECONDS": "0.2",
        "MUXER_USAGE_STREAM": stream,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    port = free_port()
    log = workdir / "server.log"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "muxer_project.asgi:application", "--port", str(port),
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/healthz", processes[0], log)
        if settings.REDIS_URL:
            # As deployed: the usage writer and a Celery worker (alerts, mail) beside the web process.
            for name, command in (
                ("usage_writer", [sys.executable, "manage.py", "usage_writer", "--linger-ms", "50"]),
                ("celery", [sys.executable, "-m", "celery", "-A", "muxer_project", "worker", "-Q", queue,
                            "-n", f"{queue}@%h", "--pool", "solo", "--without-gossip", "--without-mingle",
                            "--without-heartbeat"]),
            ):  # fmt: skip
                log_file = (workdir / f"{name}.log").open("wb")
                processes.append(
                    subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                )
        yield LiveServer(url=url, mail_dir=mail_dir, log=log, usage_stream=stream)
    finally:
        for process in processes:
            stop(process)
        if settings.REDIS_URL:
            from muxer_project.redis import sync_redis

            sync_redis().delete(
                stream, f"{stream}:rejected", queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
            )


@pytest.fixture
def live(live_server_process: LiveServer, transactional_db: None, catalog: None) -> LiveServer:
    """The live server, with the test's rows committed where its process can read them."""
    return live_server_process


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One browser per module: Playwright's sync API keeps an event loop on this thread while it runs, which
    tests of other modules (asyncio.run, async_to_sync) must not find there.

    While it runs, the tests' own ORM calls are plain synchronous ones in a thread with a running loop, which
    Django refuses unless told otherwise; the switch is set for these modules only and taken back after, so
    no other test, nor any process a test starts, inherits it.
    """
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(chromium: Browser, live: LiveServer) -> Iterator[Page]:
    context = chromium.new_context(base_url=live.url, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


def set_password(user: User, password: str) -> None:
    """Store a password the server process can check: the test process hashes with MD5 for speed, the server
    knows only the real hashers."""
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(password, hasher.salt(), iterations=1000)
    user.save(update_fields=["password"])


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as ``screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
