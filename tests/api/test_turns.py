"""Accepting and reading turns through the real app, with no worker running."""

from __future__ import annotations

from typing import Any

import redis
from fastapi.testclient import TestClient

from shared.keys import SessionKeys
from shared.settings import Settings


def test_accepting_a_turn_answers_202_with_the_queued_turn_and_its_location(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    response = api.post("/v1/sessions/user-1/turns", json={"content": "hello"})
    assert response.status_code == 202
    turn = response.json()
    assert turn["status"] == "queued"
    assert turn["seq"] == 1
    assert turn["session_id"] == "user-1"
    assert turn["input"] == {"content": "hello"}
    assert response.headers["location"] == f"/v1/sessions/user-1/turns/{turn['id']}"
    assert api.get(response.headers["location"]).json() == turn
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "user-1")
    assert client.lrange(keys.mailbox, 0, -1) == [turn["id"]]


def test_a_wait_that_times_out_answers_202_with_the_turn_still_queued(api: TestClient) -> None:
    response = api.post("/v1/sessions/user-2/turns?wait=0.3", json={"content": "hello"})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    polled = api.get(f"{response.headers['location']}?wait=0.2")
    assert polled.status_code == 200
    assert polled.json()["status"] == "queued"


def test_a_turn_is_not_visible_from_another_session(api: TestClient) -> None:
    turn = api.post("/v1/sessions/alice/turns", json={"content": "secret"}).json()
    assert api.get(f"/v1/sessions/bob/turns/{turn['id']}").status_code == 404


def test_only_the_first_turn_of_an_idle_session_sends_a_wake_up_per_acceptance(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    for text in ("a", "b", "c"):
        assert api.post("/v1/sessions/s/turns", json={"content": text}).status_code == 202
    # No worker holds the lock, so each acceptance must wake one (none may be skipped).
    assert client.llen(settings.queue) == 3


def test_messages_are_paginated_oldest_first(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "paged")
    import json

    docs = [
        json.dumps({"type": "human", "data": {"type": "human", "content": str(i)}})
        for i in range(5)
    ]
    client.rpush(keys.history, *docs)
    page = api.get("/v1/sessions/paged/messages?offset=1&limit=2").json()
    assert [m["data"]["content"] for m in page["data"]] == ["1", "2"]
    assert page["total"] == 5
    assert page["has_more"] is True
    empty = api.get("/v1/sessions/nobody/messages").json()
    assert empty["data"] == [] and empty["total"] == 0


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["redis"] == "ok" and ready.json()["broker"] == "ok"


def test_metrics_count_accepted_turns_and_time_requests_by_route(api: TestClient) -> None:
    api.post("/v1/sessions/m/turns", json={"content": "a"})
    api.post("/v1/sessions/m/turns", json={"content": "b"}, headers={"Idempotency-Key": "x"})
    api.post("/v1/sessions/m/turns", json={"content": "b"}, headers={"Idempotency-Key": "x"})
    api.post("/v1/sessions/bad id/turns", json={"content": "a"})
    text = api.get("/metrics").text
    assert 'chatlane_turns_accepted_total{kind="message"} 2.0' in text
    assert "chatlane_turns_replayed_total 1.0" in text
    route = 'route="/v1/sessions/{session_id}/turns"'
    assert (
        f'chatlane_http_request_duration_seconds_count{{method="POST",{route},status="202"}} 3.0'
        in text
    )
    assert (
        f'chatlane_http_request_duration_seconds_count{{method="POST",{route},status="422"}} 1.0'
        in text
    )


def test_a_turn_is_accepted_even_when_the_wake_up_cannot_be_sent(
    make_settings: Any, client: redis.Redis
) -> None:
    from api.main import create_app
    from shared.redis_server import free_port

    settings: Settings = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        response = api.post("/v1/sessions/s/turns", json={"content": "kept"})
        assert response.status_code == 202, response.text
        assert "chatlane_wakeups_failed_total 1.0" in api.get("/metrics").text
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "s")
    assert client.lrange(keys.mailbox, 0, -1) == [response.json()["id"]]
