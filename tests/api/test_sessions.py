"""A session through the real app: reading it, its history, clearing it."""

from __future__ import annotations

import json

import redis
from fastapi.testclient import TestClient

from shared.keys import SessionKeys
from shared.settings import Settings
from tests.api.conftest import finish_next_turn


def test_a_session_shows_its_counts_and_timestamps(api: TestClient, settings: Settings) -> None:
    for text in ("a", "b"):
        api.post("/v1/sessions/counted/turns", json={"content": text})
    finish_next_turn(settings, "counted")
    session = api.get("/v1/sessions/counted").json()
    assert session["id"] == "counted" and session["object"] == "session"
    assert (session["turn_count"], session["finished_turns"], session["pending_turns"]) == (
        2,
        1,
        1,
    )
    assert session["created_at"] <= session["updated_at"]


def test_an_unknown_session_is_a_404_problem_everywhere(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    for response in (
        api.get("/v1/sessions/never"),
        api.get("/v1/sessions/never/messages"),
        api.get("/v1/sessions/never/turns"),
        api.delete("/v1/sessions/never"),
    ):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("session-not-found")
    # Nothing of a session was written (the sweeper's index may note the name: it
    # forgets a quiet name after two sweeps).
    assert list(client.scan_iter(match=f"{settings.key_prefix}:{{*")) == []
    assert client.llen(settings.queue) == 0


def test_messages_are_paginated_oldest_first(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    api.post("/v1/sessions/paged/turns", json={"content": "first"})
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "paged")
    docs = [
        json.dumps({"type": "human", "data": {"type": "human", "content": str(i)}})
        for i in range(5)
    ]
    client.rpush(keys.history, *docs)
    page = api.get("/v1/sessions/paged/messages?offset=1&limit=2").json()
    assert [m["data"]["content"] for m in page["data"]] == ["1", "2"]
    assert page["total"] == 5
    assert page["has_more"] is True
    huge = api.get("/v1/sessions/paged/messages?offset=9223372036854775807")
    assert huge.status_code == 422  # not a 500 from an offset Redis cannot add to


def test_delete_clears_the_history_after_the_turns_before_it(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    first = api.post("/v1/sessions/gone/turns", json={"content": "before"}).json()
    cleared = api.delete("/v1/sessions/gone")
    assert cleared.status_code == 202
    clear = cleared.json()
    assert clear["kind"] == "clear" and clear["seq"] == 2 and clear["output"] is None
    assert cleared.headers["location"] == f"/v1/sessions/gone/turns/{clear['id']}"
    finish_next_turn(settings, "gone", "reply")  # the turn accepted before the clear
    assert api.get("/v1/sessions/gone/messages").json()["total"] == 2  # its exchange
    done = finish_next_turn(settings, "gone")  # the clear itself
    assert done == clear["id"]
    result = api.get(cleared.headers["location"]).json()
    assert result["status"] == "completed" and result["output"] is None
    assert api.get(f"/v1/sessions/gone/turns/{first['id']}").json()["status"] == "completed"
    assert api.get("/v1/sessions/gone").json()["message_count"] == 0
