"""The chat page against an API that requires keys (one was made for tenant ``acme``): it
asks for a key, says why a wrong one is refused, keeps the right one for the tab only and
sends it with every request, the event stream's too (resumed with ``Last-Event-ID``)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Request, Route

from cli.supervise import api_command, spawn, stop_all, wait_for_ready
from tests.api.conftest import make_key
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
from tests.support.cluster import ROOT, Cluster, settings_env
from tests.support.streaming_server import StreamingModelServer

pytestmark = pytest.mark.timeout(60)

KEY_STORE = "chatlane.apiKey"  # the sessionStorage item chat.js keeps the key in
WRONG_KEY = "clk_000000000000_" + "A" * 43  # well formed, never made


@pytest.fixture(scope="module")
def cluster(
    chromium: str,
    redis_url: str,
    stub: StreamingModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    with page_cluster(redis_url, stub, tmp_path_factory.mktemp("browser-keys")) as running:
        yield running


def new_key(cluster: Cluster, tenant: str) -> str:
    """A new key for ``tenant``, made off this thread (where Playwright's loop runs)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(make_key, cluster.settings, tenant).result()


@pytest.fixture(scope="module")
def acme_key(cluster: Cluster) -> str:
    """A key for tenant ``acme``: from now on this API serves no one without a key."""
    return new_key(cluster, "acme")


def api_requests(page: Page) -> list[Request]:
    """Every request the page makes to the API from now on (the page itself excluded)."""
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if "/v1/" in r.url else None)
    return seen


def stored_key(page: Page) -> str | None:
    key: str | None = page.evaluate(f"sessionStorage.getItem({KEY_STORE!r})")
    return key


def test_the_page_asks_for_a_key_and_talks_as_its_tenant(
    page: Page, cluster: Cluster, acme_key: str
) -> None:
    sent = api_requests(page)
    page.goto("/")
    form = page.get_by_test_id("key-form")
    form.wait_for()  # at once, before anything was opened
    reason = page.get_by_test_id("key-reason")
    assert reason.inner_text() == "An API key is required."
    key_input = page.get_by_test_id("key-input")
    assert key_input.evaluate("(el) => el === document.activeElement")
    assert key_input.get_attribute("type") == "password"
    assert page.get_by_label("API key", exact=True).count() == 1  # labelled
    assert page.get_by_test_id("connection").inner_text() == "API key needed"
    assert page.get_by_test_id("key-status").is_hidden()

    # A wrong key: refused, and said so; not kept.
    key_input.fill(WRONG_KEY)
    page.get_by_test_id("key-submit").click()
    page.wait_for_function(
        "() => document.getElementById('key-reason').textContent.includes('not valid')"
    )
    assert form.is_visible()
    assert key_input.get_attribute("aria-invalid") == "true"
    assert stored_key(page) is None
    assert [r.headers.get("authorization") for r in sent] == [None, f"Bearer {WRONG_KEY}"]

    # The right key: kept for this tab only (sessionStorage, never localStorage).
    key_input.fill(acme_key)
    key_input.press("Enter")
    form.wait_for(state="hidden")
    assert stored_key(page) == acme_key
    assert acme_key not in page.evaluate("JSON.stringify(Object.entries(localStorage))")
    assert page.get_by_test_id("key-status").is_visible()

    session = new_conversation(page, load=False)
    say(page, "hello acme")
    assert_grew_token_by_token(watch_reply(page, 1))
    wait_until_live(page)
    assert page.evaluate(SHOWN) == [["user", "hello acme"], ["assistant", REPLY]]

    # Every request since carried the key in its header, none in its address.
    keyed = sent[2:]
    assert {r.headers.get("authorization") for r in keyed} == {f"Bearer {acme_key}"}
    assert all(urlsplit(r.url).query.find("key") < 0 for r in sent)
    streams = [r for r in keyed if urlsplit(r.url).path == f"/v1/sessions/{session}/events"]
    assert streams and streams[0].headers.get("accept") == "text/event-stream"
    assert all(urlsplit(r.url).query == "" for r in streams)

    # The turn is acme's: read back with acme's key, unknown to another tenant, refused
    # without a key.
    globex_key = new_key(cluster, "globex")
    with httpx.Client(base_url=cluster.base_url, timeout=10) as http:
        url = f"/v1/sessions/{session}/messages"
        mine = http.get(url, headers={"Authorization": f"Bearer {acme_key}"})
        assert mine.status_code == 200, mine.text
        said = [(m["type"], m["data"]["content"]) for m in mine.json()["data"]]
        assert said == [("human", "hello acme"), ("ai", REPLY)]
        assert http.get(url, headers={"Authorization": f"Bearer {globex_key}"}).status_code == 404
        anonymous = http.get(url)
        assert anonymous.status_code == 401
        assert anonymous.json()["type"] == "urn:chatlane:problem:not-authenticated"

    # A reload keeps the key (same tab): no form, the conversation as it was.
    page.reload()
    wait_until_live(page)
    wait_for_turn(page, 1)
    assert form.is_hidden()
    assert page.evaluate(SHOWN) == [["user", "hello acme"], ["assistant", REPLY]]


def restart_api(cluster: Cluster) -> None:
    """End the cluster's API process (every open stream drops) and start a new one on the
    same port. Killed soon: a graceful stop would wait for the open streams."""
    assert cluster.api is not None
    stop_all([cluster.api], grace_s=0.5)
    env = {**os.environ, **settings_env(cluster.settings), "PYTHONUNBUFFERED": "1"}
    command = api_command("127.0.0.1", cluster.port, "--log-level", "warning")
    cluster.api = spawn(command, env, log=cluster.logs / "api-restarted.log", cwd=ROOT)
    wait_for_ready(cluster.base_url, [cluster.api])


def final_event_id(cluster: Cluster, key: str, session: str, turn: str) -> str:
    """The id of the turn's last event (its ``completed`` one), read from the API."""
    url = f"/v1/sessions/{session}/turns/{turn}/events"
    ids: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("GET", cluster.base_url + url, headers=headers, timeout=10) as events:
        for line in events.iter_lines():
            if line.startswith("id: "):
                ids.append(line[4:])
    return ids[-1]


def test_a_dropped_stream_resumes_with_the_key_and_the_last_event_id(
    page: Page, cluster: Cluster, acme_key: str, tolerated_errors: list[re.Pattern[str]]
) -> None:
    tolerated_errors.append(re.compile(r"^Failed to load resource: net::ERR_"))  # the restart
    page.goto("/")
    page.evaluate(f"sessionStorage.setItem({KEY_STORE!r}, {acme_key!r})")  # given earlier
    session = new_conversation(page)  # loaded again: with the key
    assert page.get_by_test_id("key-form").is_hidden()
    say(page, "first")
    wait_for_turn(page, 1)
    wait_until_live(page)
    first = page.locator('#messages [data-testid="turn"]').first.get_attribute("data-turn-id")
    assert first is not None

    sent = api_requests(page)
    restart_api(cluster)  # the stream drops; the page retries until the API is back
    wait_until_live(page)
    say(page, "second")
    wait_for_turn(page, 2)
    assert page.evaluate(SHOWN) == [
        ["user", "first"],
        ["assistant", REPLY],
        ["user", "second"],
        ["assistant", REPLY],
    ]
    path = f"/v1/sessions/{session}/events"
    resumed = [r.headers for r in sent if urlsplit(r.url).path == path]
    assert resumed, "the stream was not opened again"
    assert {h.get("authorization") for h in resumed} == {f"Bearer {acme_key}"}
    assert {h.get("last-event-id") for h in resumed} == {
        final_event_id(cluster, acme_key, session, first)
    }


def test_forgetting_the_key_hides_the_conversation_and_asks_again(
    page: Page, acme_key: str
) -> None:
    page.goto("/")
    page.evaluate(f"sessionStorage.setItem({KEY_STORE!r}, {acme_key!r})")
    new_conversation(page)
    say(page, "to forget")
    wait_for_turn(page, 1)

    page.get_by_test_id("forget-key").click()
    page.get_by_test_id("key-form").wait_for()
    assert stored_key(page) is None
    assert page.evaluate(SHOWN) == []
    assert page.get_by_test_id("key-reason").inner_text() == "An API key is required."
    assert page.get_by_test_id("key-status").is_hidden()

    page.get_by_test_id("key-input").fill(acme_key)
    page.get_by_test_id("key-submit").click()
    wait_for_turn(page, 1)  # loaded again with the key
    assert page.evaluate(SHOWN) == [["user", "to forget"], ["assistant", REPLY]]


# A stream as the SSE format allows it to be written (the page's reader is checked on it):
# a byte order mark, comments, CRLF, CR and LF line ends, "data:" without its space, an
# event's data over two lines, an unknown field, an event of an unknown type (ignored, but
# its id counts), and an event cut off by the end of the stream (dropped).
MOCK_STREAM = (
    "\ufeff: opened\r\n"
    "retry: 200\r\n"
    "\r\n"
    "id: 7-1\r"
    "event: delta\r"
    'data: {"turn_id":"t1","attempt":1,"try":1,"text":"one"}\r'
    "\r"
    "id: 7-2\n"
    "event: delta\n"
    'data:{"turn_id":"t1","attempt":1,"try":1,"text":" two"}\n'
    "\n"
    ": a comment inside an event\r\n"
    "event: delta\r\n"
    'data: {"turn_id":"t1",\r\n'
    'data:  "attempt":1,"try":1,"text":" three"}\r\n'
    "unknown: ignored\r\n"
    "id: 7-3\r\n"
    "\r\n"
    "id: 7-4\n"
    "data: of no type the page knows\n"
    "\n"
    "event: delta\n"
    'data: {"turn_id":"t1","attempt":1,"try":1,"text":" cut off"}\n'
)
MOCK_TURN = {
    "id": "t1",
    "seq": 1,
    "kind": "message",
    "attempt": 1,
    "input": {"content": "hi"},
}
NOT_AUTHENTICATED = {
    "type": "urn:chatlane:problem:not-authenticated",
    "title": "Not authenticated",
    "status": 401,
    "detail": "An API key is required.",
}


def test_the_event_stream_is_read_as_the_sse_format_says(page: Page) -> None:
    """The API is played by the test here: the turn list and history answer, the stream
    is refused for want of a key, then sent with the key, resumed from its last id."""
    session = "/v1/sessions/mocked"
    streams: list[dict[str, str]] = []

    def answer(route: Route, status: int, body: object, kind: str = "application/json") -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        route.fulfill(status=status, content_type=kind, body=text)

    def events(route: Route) -> None:
        streams.append(route.request.headers)
        if len(streams) == 1:
            answer(route, 401, NOT_AUTHENTICATED, "application/problem+json")
        elif len(streams) == 2:
            answer(route, 200, MOCK_STREAM, "text/event-stream")
        elif len(streams) == 4:
            done = {**MOCK_TURN, "status": "completed", "output": {"content": "one two three."}}
            answer(route, 200, f"id: 7-5\nevent: completed\ndata: {json.dumps(done)}\n\n",
                   "text/event-stream")  # fmt: skip
        else:  # refused: the page backs off
            answer(route, 503, {"title": "Unavailable", "status": 503}, "application/problem+json")

    listed = {"data": [{**MOCK_TURN, "status": "running"}], "has_more": False}
    page.route(re.compile(rf"{session}/turns\?"), lambda r: answer(r, 200, listed))
    page.route(re.compile(rf"{session}/messages\?"), lambda r: answer(r, 404, {"status": 404}))
    page.route(re.compile(rf"{session}/events$"), events)

    page.goto("/#mocked")
    page.get_by_test_id("key-form").wait_for()  # the stream's own 401
    assert page.get_by_test_id("key-reason").inner_text() == "An API key is required."
    page.get_by_test_id("key-input").fill("clk_mocked")
    page.get_by_test_id("key-submit").click()

    reply = page.locator('[data-role="assistant"] [data-testid="message-text"]')
    page.get_by_text("Disconnected: retrying…").wait_for()  # the 3rd connection was refused
    assert page.evaluate(SHOWN) == [["user", "hi"], ["assistant", "one two three"]]
    page.locator('[data-testid="turn"][data-status="completed"]').wait_for()  # the 4th
    assert reply.inner_text() == "one two three."

    assert "authorization" not in streams[0]
    assert all(h.get("authorization") == "Bearer clk_mocked" for h in streams[1:])
    assert all(h.get("accept") == "text/event-stream" for h in streams)
    # Resumed after the last id the stream gave, the one of an ignored event included.
    assert [h.get("last-event-id") for h in streams[:4]] == [None, None, "7-4", "7-4"]
