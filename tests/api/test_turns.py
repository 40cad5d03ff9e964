"""Accepting, reading, waiting for and listing turns through the real app, no worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from api import waiting
from api.main import create_app
from shared.keys import SessionKeys
from shared.settings import Settings
from tests.api.conftest import LOCAL, finish_next_turn


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
    assert turn["output"] is None
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


def test_a_long_poll_answers_as_soon_as_the_turn_finishes(
    api: TestClient, settings: Settings
) -> None:
    location = api.post("/v1/sessions/lp/turns", json={"content": "hi"}).headers["location"]
    threading.Timer(0.5, finish_next_turn, (settings, "lp", "finished")).start()
    started = time.monotonic()
    polled = api.get(f"{location}?wait=20")
    assert polled.json()["status"] == "completed"
    assert polled.json()["output"] == {"content": "finished"}
    assert time.monotonic() - started < 5


def test_a_turn_is_not_visible_from_another_session(api: TestClient) -> None:
    turn = api.post("/v1/sessions/alice/turns", json={"content": "secret"}).json()
    assert api.get(f"/v1/sessions/bob/turns/{turn['id']}").status_code == 404


def test_every_turn_of_an_idle_session_sends_a_wake_up(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    for text in ("a", "b", "c"):
        assert api.post("/v1/sessions/s/turns", json={"content": text}).status_code == 202
    # No worker holds the lock, so each acceptance must wake one (none may be skipped).
    assert client.llen(settings.queue) == 3


def test_no_wake_up_is_sent_while_a_worker_holds_the_session(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "busy")
    client.set(keys.lock, "a-worker", px=30_000)
    for text in ("a", "b"):
        assert api.post("/v1/sessions/busy/turns", json={"content": text}).status_code == 202
    # The holder checks the mailbox in the script that would release the lock.
    assert client.llen(settings.queue) == 0
    assert "chatlane_wakeups_sent_total 0.0" in api.get("/metrics").text


def test_turns_are_listed_in_sequence_order_in_pages(api: TestClient) -> None:
    ids = [
        api.post("/v1/sessions/ls/turns", json={"content": str(n)}).json()["id"] for n in range(5)
    ]
    page = api.get("/v1/sessions/ls/turns?limit=2").json()
    assert [t["id"] for t in page["data"]] == ids[:2]
    assert page["has_more"] is True and page["total"] == 5 and page["next_after"] == 2
    rest = api.get(f"/v1/sessions/ls/turns?limit=10&after={page['next_after']}").json()
    assert [t["id"] for t in rest["data"]] == ids[2:]
    assert rest["has_more"] is False and rest["next_after"] is None
    newest = api.get("/v1/sessions/ls/turns?limit=1&order=desc").json()
    assert [t["id"] for t in newest["data"]] == ids[-1:]
    assert api.get("/v1/sessions/nobody/turns").status_code == 404


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
    make_settings: Callable[..., Settings], client: redis.Redis
) -> None:
    from cli.redis_server import free_port

    settings = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        response = api.post("/v1/sessions/s/turns", json={"content": "kept"})
        assert response.status_code == 202, response.text
        assert "chatlane_wakeups_failed_total 1.0" in api.get("/metrics").text
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "s")
    assert client.lrange(keys.mailbox, 0, -1) == [response.json()["id"]]


@pytest.fixture
def capped_api(make_settings: Callable[..., Settings]) -> Any:
    settings = make_settings(max_waiters=0, max_wait_s=120)
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as client:
        yield client, settings


def test_an_accepted_turn_is_answered_202_when_no_waiter_may_be_added(capped_api: Any) -> None:
    api, _ = capped_api
    response = api.post("/v1/sessions/s/turns?wait=5", json={"content": "hi"})
    assert response.status_code == 202
    assert response.headers["location"].endswith(response.json()["id"])
    assert "chatlane_waits_abandoned_total 1.0" in api.get("/metrics").text


def test_a_poll_beyond_the_waiter_cap_is_a_503_problem_with_retry_after(capped_api: Any) -> None:
    api, _ = capped_api
    location = api.post("/v1/sessions/s/turns", json={"content": "hi"}).headers["location"]
    response = api.get(f"{location}?wait=5")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"].endswith("too-many-waiters")


def test_an_accepted_turn_is_answered_202_whatever_goes_wrong_while_waiting(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the event hub fell over")

    monkeypatch.setattr(waiting, "wait_for_turn", broken)
    response = api.post("/v1/sessions/s/turns?wait=5", json={"content": "hi"})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.headers["location"].endswith(response.json()["id"])


def test_the_wait_cap_can_be_raised_above_sixty_seconds(capped_api: Any) -> None:
    api, settings = capped_api
    location = api.post("/v1/sessions/cap/turns", json={"content": "hi"}).headers["location"]
    finish_next_turn(settings, "cap")
    response = api.get(f"{location}?wait=90")  # finished: answered at once
    assert response.status_code == 200 and response.json()["status"] == "completed"
    assert api.get(f"{location}?wait=121").status_code == 422
