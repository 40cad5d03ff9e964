"""The chat page in a real headless Chromium: the browser, a streaming model stub, a page
that fails its test when it throws or logs an error, and helpers that drive the page.

Each test module starts its own API and worker (a module-scoped ``cluster`` fixture)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import isolated_settings
from tests.support.cluster import Cluster
from tests.support.streaming_server import StreamingModelServer, reply_words

TOKENS = 30
REPLY = " ".join(reply_words(TOKENS))
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Every shown message, in order, as (role, text).
SHOWN = """() => Array.from(document.querySelectorAll('#messages [data-testid="message"]'))
  .filter((m) => !m.hidden && !m.closest('[hidden]'))
  .map((m) => [m.dataset.role, m.querySelector('[data-testid="message-text"]').textContent])"""

# What Chromium logs for an HTTP error answer that the page reads and handles (a 401 that
# asks for a key, a 404 for a new session, a 422 for a refused message): not a fault.
HANDLED_HTTP_ERROR = re.compile(
    r"^Failed to load resource: the server responded with a status of (4\d\d|503)\b"
)


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHATLANE_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium installed (apt-get install chromium; or set CHATLANE_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def stub() -> Iterator[StreamingModelServer]:
    with StreamingModelServer(tokens=TOKENS, interval_s=0.05) as server:  # 1.5 s a reply
        yield server


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def tolerated_errors() -> list[re.Pattern[str]]:
    """What else the page may log as an error in this test (a test that breaks the
    connection on purpose adds the network errors it expects)."""
    return [HANDLED_HTTP_ERROR]


@pytest.fixture
def page(
    browser: Browser, cluster: Cluster, tolerated_errors: list[re.Pattern[str]]
) -> Iterator[Page]:
    """A page in a new browser context (its own storage) on the module's cluster. The test
    fails if the page throws, or logs an error other than those tolerated (by default the
    HTTP answers it handles): a failed connection, a content security policy violation, a
    console.error …"""
    context = browser.new_context(base_url=cluster.base_url)
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    crashes: list[str] = []
    errors: list[str] = []
    opened.on("pageerror", lambda exc: crashes.append(str(exc)))
    opened.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield opened
    context.close()
    assert crashes == [], f"the page threw: {crashes}"
    unexpected = [text for text in errors if not any(p.match(text) for p in tolerated_errors)]
    assert unexpected == [], f"the page logged errors: {unexpected}"


def new_conversation(page: Page, *, load: bool = True) -> str:
    if load:
        page.goto("/")
    page.get_by_test_id("new-session").click()
    session = page.get_by_test_id("current-session").inner_text()
    assert session.startswith("chat-")
    assert page.evaluate("location.hash") == f"#{session}"
    return session


def say(page: Page, text: str, *, refused: bool = False) -> None:
    box = page.get_by_test_id("message-input")
    box.fill(text)
    assert page.get_by_test_id("send-button").is_enabled()
    box.press("Enter")  # the form submits on Enter
    if not refused:
        assert box.input_value() == ""
        assert page.get_by_test_id("send-button").is_disabled()


def wait_for_turn(page: Page, n: int, status: str = "completed") -> None:
    """Wait until the page shows at least ``n`` turns and the ``n``th has ``status``."""
    page.wait_for_function(
        """([n, status]) => {
             const turns = document.querySelectorAll('#messages [data-testid="turn"]');
             return turns.length >= n && turns[n - 1].dataset.status === status;
           }""",
        arg=[n, status],
    )


def wait_until_live(page: Page) -> None:
    page.get_by_test_id("connection").and_(page.locator('[data-state="live"]')).wait_for()


def watch_reply(page: Page, n: int, deadline_s: float = 20.0) -> list[str]:
    """The ``n``th turn's reply text as it changed, polled until the turn completed."""
    turn = page.locator('#messages [data-testid="turn"]').nth(n - 1)
    reply = turn.locator('[data-role="assistant"] [data-testid="message-text"]')
    seen: list[str] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if turn.count() and turn.get_attribute("data-status") == "completed":
            break
        text = reply.text_content() if turn.count() else None
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        time.sleep(0.02)
    else:
        pytest.fail(f"turn {n} did not complete; its reply went {seen}")
    return seen


def assert_grew_token_by_token(partial: list[str]) -> None:
    growing = [text for text in partial if REPLY.startswith(text) and text != REPLY]
    assert len(growing) >= 3, f"the reply did not grow token by token: {partial}"
    assert growing == sorted(growing, key=len)  # only ever growing


@contextmanager
def page_cluster(
    redis_url: str, stub: StreamingModelServer, logs: Path, **overrides: Any
) -> Iterator[Cluster]:
    """An API and one worker streaming from ``stub``, for a test module's pages."""
    with isolated_settings(redis_url) as build:
        settings = build(
            model="openai:loopback",
            openai_base_url=stub.base_url,
            openai_api_key="k",
            keepalive_s=0.5,
            **overrides,
        )
        with Cluster(settings, logs, workers=1) as running:
            yield running
