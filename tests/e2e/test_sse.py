"""Server-Sent Events from a real API and worker: tokens as they stream, resuming without
gaps or repeats, a session's turns in order, abandoned tries announced."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from tests.conftest import isolated_settings
from tests.support.cluster import Cluster
from tests.support.streaming_server import StreamingModelServer, reply_words

TOKENS = 30
REPLY = " ".join(reply_words(TOKENS))
FINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def stub() -> Iterator[StreamingModelServer]:
    with StreamingModelServer(tokens=TOKENS, interval_s=0.05) as server:  # 1.5 s a reply
        yield server


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, stub: StreamingModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with isolated_settings(redis_url) as build:
        settings = build(
            model="openai:loopback",
            openai_base_url=stub.base_url,
            openai_api_key="k",
            keepalive_s=0.5,
        )
        with Cluster(settings, tmp_path_factory.mktemp("sse"), workers=1) as running:
            yield running


@pytest.fixture
def http(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.base_url, timeout=30) as client:
        yield client


@dataclass
class Seen:
    events: list[ServerSentEvent] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def data(self, i: int) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.events[i].data)
        return loaded

    def of(self, name: str) -> list[int]:
        return [i for i, e in enumerate(self.events) if e.event == name]

    def rendered(self, turn_id: str | None = None) -> str:
        """What a client that renders deltas and honours resets shows."""
        text = ""
        for event in self.events:
            data = json.loads(event.data)
            if turn_id is not None and data.get("turn_id", data.get("id")) != turn_id:
                continue
            if event.event == "reset":
                text = ""
            elif event.event == "delta":
                text += data["text"]
        return text


def _read(http: httpx.Client, url: str, *, stop_after: int | None = None, **kw: Any) -> Seen:
    seen = Seen()
    with connect_sse(http, "GET", url, **kw) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for event in source.iter_sse():
            seen.events.append(event)
            seen.times.append(time.monotonic())
            if stop_after is not None and len(seen.events) >= stop_after:
                break
    return seen


def test_tokens_arrive_as_they_stream_then_the_whole_turn_ends_the_stream(
    http: httpx.Client,
) -> None:
    turn = http.post("/v1/sessions/live/turns", json={"content": "hi"}).json()
    seen = _read(http, f"/v1/sessions/live/turns/{turn['id']}/events")
    names = [e.event for e in seen.events]
    assert names[0] == "status" and names[-1] == "completed"
    deltas = seen.of("delta")
    assert len(deltas) > 3
    assert seen.times[-1] - seen.times[deltas[0]] > 0.7  # the first tokens came well before
    final = seen.data(-1)
    assert final["id"] == turn["id"] and final["output"] == {"content": REPLY}
    assert seen.rendered() == REPLY
    ids = [e.id for e in seen.events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == len(
        ids
    )


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_stream_resumed_after_a_disconnect_has_no_gap_and_no_repeat(
    http: httpx.Client, how: str
) -> None:
    turn = http.post(f"/v1/sessions/resume-{how}/turns", json={"content": "hi"}).json()
    url = f"/v1/sessions/resume-{how}/turns/{turn['id']}/events"
    first = _read(http, url, stop_after=6)  # the client goes away mid-reply
    last_id = first.events[-1].id
    kw: dict[str, Any] = (
        {"headers": {"Last-Event-ID": last_id}}
        if how == "header"
        else {"params": {"last_event_id": last_id}}
    )
    rest = _read(http, url, **kw)
    ids = [e.id for e in first.events + rest.events]
    assert len(ids) == len(set(ids))
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    whole = Seen(first.events + rest.events)
    assert whole.events[-1].event == "completed"
    assert whole.rendered() == REPLY
    replay = _read(http, url)  # from the start again: the same events
    assert [e.id for e in replay.events] == ids


def test_the_session_stream_shows_every_turn_in_order(http: httpx.Client) -> None:
    turns = [
        http.post("/v1/sessions/convo/turns", json={"content": f"m{n}"}).json() for n in range(3)
    ]
    seen = Seen()
    with connect_sse(http, "GET", "/v1/sessions/convo/events") as source:
        for event in source.iter_sse():
            seen.events.append(event)
            if len([e for e in seen.events if e.event in FINAL]) == 3:
                break
    finals = [seen.data(i)["id"] for i in range(len(seen.events)) if seen.events[i].event in FINAL]
    assert finals == [t["id"] for t in turns]
    running = [
        seen.data(i)["turn_id"] for i in seen.of("status") if seen.data(i)["status"] == "running"
    ]
    assert running == [t["id"] for t in turns]
    for turn in turns:  # each turn's deltas between its start and its end
        mine = [
            i
            for i, e in enumerate(seen.events)
            if json.loads(e.data).get("turn_id", json.loads(e.data).get("id")) == turn["id"]
        ]
        deltas = [i for i in mine if seen.events[i].event == "delta"]
        assert min(deltas) > min(mine) and max(deltas) < max(mine)
        assert seen.rendered(turn["id"]) == REPLY


def test_an_abandoned_try_is_announced_and_never_becomes_the_text(
    http: httpx.Client, stub: StreamingModelServer
) -> None:
    stub.script = [("drop_after", 10)]
    turn = http.post("/v1/sessions/dropped/turns", json={"content": "hi"}).json()
    seen = _read(http, f"/v1/sessions/dropped/turns/{turn['id']}/events")
    resets = seen.of("reset")
    assert len(resets) == 1
    reset = seen.data(resets[0])
    assert (reset["attempt"], reset["try"]) == (1, 0)
    before = [seen.data(i)["try"] for i in seen.of("delta") if i < resets[0]]
    after = [seen.data(i)["try"] for i in seen.of("delta") if i > resets[0]]
    assert set(before) == {0} and set(after) == {1}
    assert seen.rendered() == REPLY == seen.data(-1)["output"]["content"]


def test_an_idle_session_stream_is_kept_alive(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.base_url, timeout=30) as http:
        http.post("/v1/sessions/quiet/turns", json={"content": "hi"})
        time.sleep(2)  # the turn is done; nothing more will happen
        comments = 0
        with http.stream("GET", "/v1/sessions/quiet/events") as response:
            started = time.monotonic()
            for line in response.iter_lines():
                if line.startswith(":"):
                    comments += 1
                if comments == 2 or time.monotonic() - started > 5:
                    break
        assert comments == 2  # every 0.5 s here (CHATLANE_KEEPALIVE_S)


def test_the_stream_of_an_unknown_turn_is_a_404_problem(http: httpx.Client) -> None:
    http.post("/v1/sessions/known/turns", json={"content": "hi"})
    response = http.get("/v1/sessions/known/turns/turn_000000000000000000000000/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    bad = http.get("/v1/sessions/known/events", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422


def test_a_new_sessions_stream_can_be_opened_before_its_first_turn(http: httpx.Client) -> None:
    seen = Seen()
    with connect_sse(http, "GET", "/v1/sessions/brand-new/events") as source:
        turn = http.post("/v1/sessions/brand-new/turns", json={"content": "hi"}).json()
        for event in source.iter_sse():
            seen.events.append(event)
            if event.event in FINAL:
                break
    assert seen.data(-1)["id"] == turn["id"] and seen.rendered() == REPLY


def test_a_session_says_where_its_stream_stands_to_follow_it_from_now(
    http: httpx.Client,
) -> None:
    done = http.post("/v1/sessions/from-now/turns?wait=10", json={"content": "old"}).json()
    session = http.get("/v1/sessions/from-now").json()
    seen = Seen()
    with connect_sse(
        http, "GET", "/v1/sessions/from-now/events",
        params={"last_event_id": session["last_event_id"]},
    ) as source:  # fmt: skip
        turn = http.post("/v1/sessions/from-now/turns", json={"content": "new"}).json()
        for event in source.iter_sse():
            seen.events.append(event)
            if event.event in FINAL:
                break
    turn_ids = {
        json.loads(e.data).get("turn_id", json.loads(e.data).get("id")) for e in seen.events
    }
    assert turn_ids == {turn["id"]} and done["id"] not in turn_ids
