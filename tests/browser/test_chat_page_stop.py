"""The chat page's Stop button in a real headless Chromium, against a real API and worker
streaming from the model stub: it shows while a reply is being written, cancels the turn
(``POST .../cancel``), the worker closes its model call, and the conversation goes on. A
Stop that comes after the reply finished (``409 turn-finished``) is quiet."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Request, Route

from tests.browser.conftest import (
    REPLY,
    SHOWN,
    new_conversation,
    page_cluster,
    say,
    wait_for_turn,
    wait_until_live,
)
from tests.support.cluster import Cluster
from tests.support.streaming_server import StreamingModelServer, reply_words

pytestmark = pytest.mark.timeout(60)

SLOW = "tokens=200 interval=0.05"  # a 10 s reply: long enough to be stopped
SLOW_REPLY = " ".join(reply_words(200))
TURNS = '#messages [data-testid="turn"]'


@pytest.fixture(scope="module")
def cluster(
    chromium: str,
    redis_url: str,
    stub: StreamingModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    with page_cluster(redis_url, stub, tmp_path_factory.mktemp("browser-stop")) as running:
        yield running


def cancel_requests(page: Page) -> list[Request]:
    """Every cancel request the page makes from now on."""
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if r.url.endswith("/cancel") else None)
    return seen


def turn_ids(page: Page) -> list[str]:
    ids: list[str] = page.locator(TURNS).evaluate_all("(ts) => ts.map((t) => t.dataset.turnId)")
    return ids


def statuses(page: Page) -> list[str]:
    shown: list[str] = page.locator(TURNS).evaluate_all("(ts) => ts.map((t) => t.dataset.status)")
    return shown


def reply_text(page: Page, n: int) -> str:
    reply = (
        page.locator(TURNS)
        .nth(n - 1)
        .locator('[data-role="assistant"] [data-testid="message-text"]')
    )
    return reply.text_content() or ""


def wait_for_reply_to_start(page: Page, n: int) -> None:
    page.wait_for_function(
        """(n) => {
             const turn = document.querySelectorAll('#messages [data-testid="turn"]')[n - 1];
             const reply = turn?.querySelector('[data-role="assistant"]');
             const text = reply?.querySelector('[data-testid="message-text"]');
             return (text?.textContent ?? '').startsWith('w0 w1 w2');
           }""",
        arg=n,
    )


def server_turn(cluster: Cluster, session: str, turn: str) -> dict[str, Any]:
    with httpx.Client(base_url=cluster.base_url, timeout=10) as http:
        answer = http.get(f"/v1/sessions/{session}/turns/{turn}")
    assert answer.status_code == 200, answer.text
    record: dict[str, Any] = answer.json()
    return record


def wait_for_abandoned(stub: StreamingModelServer, more_than: int, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while stub.stats.abandoned <= more_than:
        if time.monotonic() > end:
            pytest.fail(f"the model call was not closed: abandoned stayed {stub.stats.abandoned}")
        time.sleep(0.05)


def wait_for_held(page: Page, held: list[Route]) -> None:
    """Wait until exactly one request is held by a route (the handler runs on the page's
    own schedule); a second one would be a request too many."""
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    page.wait_for_timeout(200)
    assert len(held) == 1, f"{len(held)} requests were held"


def test_stop_cancels_a_streaming_reply_and_the_next_message_is_answered(
    page: Page, cluster: Cluster, stub: StreamingModelServer
) -> None:
    session = new_conversation(page)
    stop = page.get_by_test_id("stop-button")
    assert stop.is_hidden()  # nothing to stop yet
    cancels = cancel_requests(page)

    say(page, f"tell me everything {SLOW}")
    stop.wait_for()  # shown while the reply is being written, beside Send
    assert page.get_by_role("button", name="Stop", exact=True).count() == 1  # a named button
    assert stop.evaluate("(b) => b.tagName === 'BUTTON' && b.type === 'button'")
    assert page.get_by_test_id("send-button").is_visible()
    wait_for_reply_to_start(page, 1)
    wait_until_live(page)
    assert stop.is_visible() and stop.is_enabled()

    abandoned = stub.stats.abandoned
    stop.click()
    wait_for_turn(page, 1, "cancelled")
    status = page.locator(TURNS).first.get_by_test_id("turn-status")
    assert status.inner_text() == "Cancelled."
    stop.wait_for(state="hidden")
    assert page.get_by_test_id("error").is_hidden()  # nothing went wrong

    # The partial reply stays as it was when stopped, and grows no more.
    partial = reply_text(page, 1)
    assert partial.startswith("w0 w1 w2") and SLOW_REPLY.startswith(partial)
    assert partial != SLOW_REPLY
    time.sleep(0.5)
    assert reply_text(page, 1) == partial

    # One cancel request, for that turn; cancelled on the server as requested; the
    # worker closed its model call.
    (turn,) = turn_ids(page)
    assert [(r.method, urlsplit(r.url).path) for r in cancels] == [
        ("POST", f"/v1/sessions/{session}/turns/{turn}/cancel")
    ]
    record = server_turn(cluster, session, turn)
    assert record["status"] == "cancelled"
    assert record["cancellation"]["reason"] == "requested"
    wait_for_abandoned(stub, abandoned)

    # The conversation goes on: the next message is answered in full.
    say(page, "and now a short one")
    stop.wait_for()
    wait_for_turn(page, 2)
    stop.wait_for(state="hidden")
    assert page.evaluate(SHOWN)[1:] == [
        ["assistant", partial],
        ["user", "and now a short one"],
        ["assistant", REPLY],
    ]
    assert statuses(page) == ["cancelled", "completed"]
    assert len(cancels) == 1

    # A reload shows the same turns, the cancelled one as cancelled, and no Stop.
    page.reload()
    wait_until_live(page)
    wait_for_turn(page, 2)
    assert statuses(page) == ["cancelled", "completed"]
    assert page.locator(TURNS).first.get_by_test_id("turn-status").inner_text() == "Cancelled."
    assert stop.is_hidden()


def test_stop_is_reached_and_pressed_from_the_keyboard(
    page: Page, cluster: Cluster, stub: StreamingModelServer
) -> None:
    """Two messages, the second queued behind the first: Tab from the message box reaches
    Stop, which ends both (the queued one first, so that it never starts), and the focus
    goes back to the message box."""
    session = new_conversation(page)
    cancels = cancel_requests(page)
    say(page, f"first {SLOW}")
    wait_for_reply_to_start(page, 1)
    say(page, f"second {SLOW}")
    wait_for_turn(page, 2, "queued")
    prompts = len(stub.stats.prompts)
    abandoned = stub.stats.abandoned

    box = page.get_by_test_id("message-input")
    box.focus()
    page.keyboard.press("Tab")  # Send is disabled (the box is empty): Stop comes next
    stop = page.get_by_test_id("stop-button")
    assert stop.evaluate("(b) => b === document.activeElement")
    page.keyboard.press("Enter")
    wait_for_turn(page, 1, "cancelled")
    wait_for_turn(page, 2, "cancelled")
    stop.wait_for(state="hidden")
    assert box.evaluate("(b) => b === document.activeElement")

    first, second = turn_ids(page)
    assert [urlsplit(r.url).path for r in cancels] == [
        f"/v1/sessions/{session}/turns/{second}/cancel",
        f"/v1/sessions/{session}/turns/{first}/cancel",
    ]
    for turn in (first, second):
        assert server_turn(cluster, session, turn)["status"] == "cancelled"
    wait_for_abandoned(stub, abandoned)
    time.sleep(0.5)
    assert len(stub.stats.prompts) == prompts  # the queued message never reached the model


def test_a_stop_that_comes_after_the_reply_finished_is_quiet(page: Page, cluster: Cluster) -> None:
    """The cancel request is held until the turn completed: the API answers 409
    turn-finished, and the page shows the reply as it finished, without an error."""
    session = new_conversation(page)
    held: list[Route] = []

    def hold(route: Route) -> None:  # let go below, once the turn has completed
        held.append(route)

    page.route("**/cancel", hold)

    say(page, "a quick one")
    wait_for_reply_to_start(page, 1)
    stop = page.get_by_test_id("stop-button")
    stop.click()
    page.wait_for_function(
        "() => document.getElementById('stop-button').textContent === 'Stopping…'"
    )
    assert stop.get_attribute("aria-disabled") == "true"
    stop.click(force=True)  # pressed again while the request is out: nothing more is sent
    wait_for_turn(page, 1, "completed")
    stop.wait_for(state="hidden")
    wait_for_held(page, held)

    with page.expect_response("**/cancel") as answer:
        held[0].continue_()
    assert answer.value.status == 409
    assert answer.value.json()["type"] == "urn:chatlane:problem:turn-finished"
    time.sleep(0.5)  # the page reads the answer, and looks the turn up
    assert page.get_by_test_id("error").is_hidden()
    assert statuses(page) == ["completed"]
    assert page.evaluate(SHOWN) == [["user", "a quick one"], ["assistant", REPLY]]
    (turn,) = turn_ids(page)
    assert server_turn(cluster, session, turn)["status"] == "completed"


def test_stop_pressed_before_the_message_was_accepted_cancels_it_once_it_is(
    page: Page, cluster: Cluster
) -> None:
    """Stop shows from the moment a message is sent; pressed before the API answered the
    POST, the turn is cancelled as soon as its id is known."""
    session = new_conversation(page)
    cancels = cancel_requests(page)
    held: list[Route] = []

    def hold(route: Route) -> None:
        if route.request.method == "POST":
            held.append(route)  # let go below
        else:
            route.continue_()

    page.route(f"**/v1/sessions/{session}/turns", hold)
    say(page, f"never mind {SLOW}")
    stop = page.get_by_test_id("stop-button")
    stop.wait_for()
    assert page.locator(TURNS).first.get_attribute("data-status") == "sending"
    stop.click()
    assert stop.inner_text() == "Stopping…"
    assert cancels == []  # no turn id yet
    wait_for_held(page, held)
    held[0].continue_()
    wait_for_turn(page, 1, "cancelled")
    stop.wait_for(state="hidden")
    (turn,) = turn_ids(page)
    assert [urlsplit(r.url).path for r in cancels] == [
        f"/v1/sessions/{session}/turns/{turn}/cancel"
    ]
    assert server_turn(cluster, session, turn)["status"] == "cancelled"
    assert page.get_by_test_id("error").is_hidden()
