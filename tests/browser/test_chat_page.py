"""The chat page at ``/`` in a real headless Chromium, against a real API and worker: a
reply grows token by token, a reload shows every message once, errors are shown. No API
key exists here: the page is served as the anonymous tenant (a loopback client)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import (
    REPLY,
    SHOWN,
    assert_grew_token_by_token,
    new_conversation,
    page_cluster,
    say,
    wait_for_turn,
    wait_until_live,
    watch_reply,
)
from tests.support.cluster import Cluster
from tests.support.streaming_server import StreamingModelServer

pytestmark = pytest.mark.timeout(60)

MAX_CHARS = 200


@pytest.fixture(scope="module")
def cluster(
    chromium: str,
    redis_url: str,
    stub: StreamingModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("browser")
    with page_cluster(redis_url, stub, logs, max_message_chars=MAX_CHARS) as running:
        yield running


def test_a_reply_streams_in_and_a_reload_shows_every_message_once(page: Page) -> None:
    session = new_conversation(page)
    assert page.get_by_test_id("send-button").is_disabled()  # nothing to send yet

    say(page, "hello there")
    assert_grew_token_by_token(watch_reply(page, 1))
    assert page.evaluate(SHOWN) == [["user", "hello there"], ["assistant", REPLY]]
    wait_until_live(page)

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
    wait_until_live(page)
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
    wait_until_live(other)
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
    wait_until_live(page)
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
    wait_until_live(page)
    time.sleep(1.0)
    assert page.evaluate(SHOWN) == []
