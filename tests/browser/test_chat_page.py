"""The chat page at ``/`` in a real headless Chromium, against a real API and worker: a
reply grows token by token, a reload shows every message once, errors are shown."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import isolated_settings
from tests.support.cluster import Cluster
from tests.support.streaming_server import StreamingModelServer, reply_words

pytestmark = pytest.mark.timeout(60)

TOKENS = 30
REPLY = " ".join(reply_words(TOKENS))
MAX_CHARS = 200
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


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHATLANE_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
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
def cluster(
    chromium: str,
    redis_url: str,
    stub: StreamingModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    with isolated_settings(redis_url) as build:
        settings = build(
            model="openai:loopback",
            openai_base_url=stub.base_url,
            openai_api_key="k",
            keepalive_s=0.5,
            max_message_chars=MAX_CHARS,
        )
        with Cluster(settings, tmp_path_factory.mktemp("browser"), workers=1) as running:
            yield running


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, cluster: Cluster) -> Iterator[Page]:
    context = browser.new_context(base_url=cluster.base_url)
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    crashes: list[str] = []
    opened.on("pageerror", lambda exc: crashes.append(str(exc)))
    yield opened
    context.close()
    assert crashes == [], f"the page threw: {crashes}"


def new_conversation(page: Page) -> str:
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


def test_a_reply_streams_in_and_a_reload_shows_every_message_once(page: Page) -> None:
    session = new_conversation(page)
    assert page.get_by_test_id("send-button").is_disabled()  # nothing to send yet

    say(page, "hello there")
    partial = watch_reply(page, 1)
    growing = [text for text in partial if REPLY.startswith(text) and text != REPLY]
    assert len(growing) >= 3, f"the reply did not grow token by token: {partial}"
    assert growing == sorted(growing, key=len)  # only ever growing
    assert page.evaluate(SHOWN) == [["user", "hello there"], ["assistant", REPLY]]
    page.get_by_test_id("connection").and_(page.locator('[data-state="live"]')).wait_for()

    say(page, "and again")
    wait_for_turn(page, 2)
    expected = [
        ["user", "hello there"],
        ["assistant", REPLY],
        ["user", "and again"],
        ["assistant", REPLY],
    ]
    assert page.evaluate(SHOWN) == expected
    # The newest message is in view.
    last = page.locator('#messages [data-testid="turn"]').nth(1).locator('[data-role="assistant"]')
    assert last.is_visible() and last.evaluate(
        """(el) => {
             const box = el.getBoundingClientRect();
             const view = document.getElementById('messages').getBoundingClientRect();
             return box.bottom <= view.bottom + 1 && box.top >= view.top - 1;
           }"""
    )
    # The session is remembered, and listed.
    listed = page.get_by_test_id("session-item")
    assert [listed.nth(i).get_attribute("data-session-id") for i in range(listed.count())] == [
        session
    ]

    page.reload()
    assert page.get_by_test_id("current-session").inner_text() == session
    page.get_by_test_id("connection").and_(page.locator('[data-state="live"]')).wait_for()
    wait_for_turn(page, 2)
    time.sleep(1.0)  # the stream replays the session's events: none may add a message
    assert page.evaluate(SHOWN) == expected
    statuses = page.locator('#messages [data-testid="turn"]').evaluate_all(
        "(turns) => turns.map((t) => t.dataset.status)"
    )
    assert statuses == ["completed", "completed"]

    # The same conversation in another tab: opened from the address alone.
    other = page.context.new_page()
    other.goto(f"/#{session}")
    other.get_by_test_id("connection").and_(other.locator('[data-state="live"]')).wait_for()
    wait_for_turn(other, 2)
    assert other.evaluate(SHOWN) == expected
    other.close()


def test_a_reload_mid_reply_picks_the_reply_up_once(page: Page) -> None:
    session = new_conversation(page)
    say(page, "keep going")
    reply = '[data-role="assistant"] [data-testid="message-text"]'
    page.wait_for_function(
        "(sel) => (document.querySelector(sel)?.textContent ?? '').startsWith('w0 w1 w2')",
        arg=reply,
    )
    assert page.locator(reply).inner_text() != REPLY  # mid-reply
    page.reload()  # the turn is still running: listed as such, then followed on the stream
    assert page.get_by_test_id("current-session").inner_text() == session
    wait_for_turn(page, 1)
    time.sleep(1.0)
    assert page.evaluate(SHOWN) == [["user", "keep going"], ["assistant", REPLY]]


def test_errors_are_shown_and_the_page_goes_on(page: Page, stub: StreamingModelServer) -> None:
    new_conversation(page)

    too_long = "x" * (MAX_CHARS + 1)
    say(page, too_long, refused=True)  # refused by the API: a 422 problem
    error = page.get_by_test_id("error")
    error.wait_for()
    assert "Message too long" in error.inner_text()
    page.locator('#messages [data-testid="turn"][data-status="unsent"]').wait_for()
    assert page.get_by_test_id("message-input").input_value() == too_long  # not lost
    page.get_by_test_id("message-input").fill("")

    stub.script = [("status", 400, None)]  # the model refuses: the turn fails
    say(page, "this one fails")
    page.locator('#messages [data-testid="turn"][data-status="failed"]').wait_for()
    failed = page.locator('[data-testid="turn"][data-status="failed"] [data-testid="turn-status"]')
    assert "model_error" in failed.inner_text()

    stub.script = [("drop_after", 8)]  # the stream breaks: a reset, then the reply again
    say(page, "this one is retried")
    wait_for_turn(page, 3)
    retried = page.locator('#messages [data-testid="turn"]').nth(2)
    assert retried.locator('[data-role="assistant"] [data-testid="message-text"]').inner_text() == (
        REPLY
    )

    page.reload()
    page.get_by_test_id("connection").and_(page.locator('[data-state="live"]')).wait_for()
    wait_for_turn(page, 2)
    time.sleep(1.0)
    shown = page.evaluate(SHOWN)
    assert shown[0] == ["user", "this one fails"]
    assert shown[2:] == [["user", "this one is retried"], ["assistant", REPLY]]
    assert page.locator('[data-testid="turn"][data-status="failed"]').count() == 1

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("clear-button").click()
    page.get_by_test_id("notice").wait_for()
    assert page.evaluate(SHOWN) == []
    page.reload()
    page.get_by_test_id("connection").and_(page.locator('[data-state="live"]')).wait_for()
    time.sleep(1.0)
    assert page.evaluate(SHOWN) == []
