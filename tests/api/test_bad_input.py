"""Every bad request gets an RFC 9457 problem and leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from shared.settings import Settings
from tests.api.conftest import LOCAL


def _nothing_queued(client: redis.Redis, settings: Settings) -> bool:
    """Nothing but the tenant's request counters (a refused request still counts)."""
    limits = f"{settings.key_prefix}:limits"
    keys = [k for k in client.scan_iter(match=f"{settings.key_prefix}:*") if limits not in str(k)]
    return keys == [] and client.llen(settings.queue) == 0


def _assert_problem(response: object, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    assert body["title"]
    assert "type" in body
    return body


@pytest.mark.parametrize(
    ("body", "status", "type_suffix"),
    [
        (b"{not json", 400, "malformed-json"),
        (b"", 400, "malformed-json"),
        (b'{"content": 42}', 422, "invalid-request"),
        (b'{"content": ""}', 422, "invalid-request"),
        (b'{"text": "hi"}', 422, "invalid-request"),
        (b'{"content": "hi", "unknown": 1}', 422, "invalid-request"),
        (b'["content"]', 422, "invalid-request"),
    ],
)
def test_malformed_or_mistyped_bodies_are_refused_and_nothing_is_queued(
    api: TestClient,
    client: redis.Redis,
    settings: Settings,
    body: bytes,
    status: int,
    type_suffix: str,
) -> None:
    response = api.post(
        "/v1/sessions/s1/turns", content=body, headers={"content-type": "application/json"}
    )
    problem = _assert_problem(response, status)
    assert str(problem["type"]).endswith(type_suffix)
    assert _nothing_queued(client, settings)


@pytest.mark.parametrize(
    "session_id", ["has space", "x" * 129, "semi;colon", "brace{tag}", "uni\u00e9code"]
)
def test_bad_session_ids_are_a_422_problem(
    api: TestClient, client: redis.Redis, settings: Settings, session_id: str
) -> None:
    response = api.post(f"/v1/sessions/{session_id}/turns", json={"content": "hi"})
    _assert_problem(response, 422)
    assert _nothing_queued(client, settings)


@pytest.fixture
def small_api(make_settings: object) -> Iterator[tuple[TestClient, Settings]]:
    settings: Settings = make_settings(max_body_bytes=2048, max_message_chars=100)  # type: ignore[operator]
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as client:
        yield client, settings


def test_an_oversized_body_is_a_413_problem(
    small_api: tuple[TestClient, Settings], client: redis.Redis
) -> None:
    api, settings = small_api
    response = api.post("/v1/sessions/s1/turns", json={"content": "x" * 5000})
    _assert_problem(response, 413)
    assert _nothing_queued(client, settings)


def test_an_oversized_chunked_body_is_a_413_problem(
    small_api: tuple[TestClient, Settings], client: redis.Redis
) -> None:
    api, settings = small_api

    def chunks() -> Iterator[bytes]:
        yield b'{"content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    response = api.post("/v1/sessions/s1/turns", content=chunks())
    _assert_problem(response, 413)
    assert _nothing_queued(client, settings)


def test_a_message_over_the_configured_length_is_refused(
    small_api: tuple[TestClient, Settings], client: redis.Redis
) -> None:
    api, settings = small_api
    response = api.post("/v1/sessions/s1/turns", json={"content": "y" * 101})
    body = _assert_problem(response, 422)
    assert "100" in str(body["detail"])
    assert _nothing_queued(client, settings)


def test_unknown_turns_and_routes_are_404_problems(api: TestClient) -> None:
    _assert_problem(api.get("/v1/sessions/s1/turns/turn_000000000000000000000000"), 404)
    _assert_problem(api.get("/v1/sessions/s1/turns/not-a-turn-id"), 422)
    _assert_problem(api.get("/v1/nowhere"), 404)
    _assert_problem(api.put("/v1/sessions/s1/turns", json={"content": "x"}), 405)


def test_wait_out_of_range_is_a_422_problem(api: TestClient) -> None:
    _assert_problem(api.post("/v1/sessions/s1/turns?wait=61", json={"content": "x"}), 422)
    _assert_problem(api.post("/v1/sessions/s1/turns?wait=-1", json={"content": "x"}), 422)


def test_reusing_an_idempotency_key_with_another_body_is_a_422_problem(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    first = api.post(
        "/v1/sessions/s1/turns", json={"content": "a"}, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == 202
    replay = api.post(
        "/v1/sessions/s1/turns", json={"content": "a"}, headers={"Idempotency-Key": "k1"}
    )
    assert replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    _assert_problem(
        api.post("/v1/sessions/s1/turns", json={"content": "b"}, headers={"Idempotency-Key": "k1"}),
        422,
    )
    assert client.llen(settings.queue) == 1  # one wake-up for one turn
