"""Per-tenant budgets and per-session limits: a tenant over its budget gets 429 problems
with Retry-After, and only that tenant does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from fastapi.testclient import TestClient

from api.main import create_app
from shared.settings import Settings
from tests.api.conftest import LOCAL, finish_next_turn, make_key


def _limited(response: Any) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    body: dict[str, Any] = response.json()
    assert body["type"] == "urn:chatlane:problem:rate-limited"
    return body


def test_a_burst_over_the_request_limit_is_refused_for_that_tenant_only(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(rate_requests_per_minute=5)
    noisy = {"X-API-Key": make_key(settings, "noisy")}
    quiet = {"X-API-Key": make_key(settings, "quiet")}
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        answers = [api.get("/v1/sessions/s", headers=noisy).status_code for _ in range(8)]
        assert answers == [404] * 5 + [429] * 3
        body = _limited(api.get("/v1/sessions/s", headers=noisy))
        assert "requests" in body["detail"]
        assert [api.get("/v1/sessions/s", headers=quiet).status_code for _ in range(5)] == [404] * 5


def test_turns_over_the_token_budget_are_refused_and_not_queued(
    make_settings: Callable[..., Settings], client: redis.Redis
) -> None:
    settings = make_settings(rate_tokens_per_minute=1000, reply_token_estimate=400)
    noisy = {"X-API-Key": make_key(settings, "noisy")}
    quiet = {"X-API-Key": make_key(settings, "quiet")}
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        for _ in range(2):  # about 401 tokens reserved each
            assert (
                api.post("/v1/sessions/s/turns", json={"content": "hi"}, headers=noisy).status_code
                == 202
            )
        body = _limited(api.post("/v1/sessions/s/turns", json={"content": "hi"}, headers=noisy))
        assert "model tokens" in body["detail"]
        assert client.llen(f"{settings.key_prefix}:{{noisy:s}}:mailbox") == 2
        made = api.post("/v1/sessions/s/turns", json={"content": "hi"}, headers=quiet)
        assert made.status_code == 202


def test_a_turn_that_is_not_queued_gives_its_reserved_tokens_back(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        rate_tokens_per_minute=1000, reply_token_estimate=400, max_pending_turns=1
    )
    key = {"X-API-Key": make_key(settings, "acme")}
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        assert (
            api.post("/v1/sessions/s/turns", json={"content": "a"}, headers=key).status_code == 202
        )
        for _ in range(5):  # mailbox full: refused, and each refusal refunds its reservation
            full = api.post("/v1/sessions/s/turns", json={"content": "b"}, headers=key)
            assert full.status_code == 429 and full.json()["type"].endswith("mailbox-full")
        other = api.post("/v1/sessions/t/turns", json={"content": "c"}, headers=key)
        assert other.status_code == 202, other.text


def test_a_full_history_refuses_new_messages_but_takes_a_clear(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_history_messages=4)
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        for n in range(2):
            assert api.post("/v1/sessions/s/turns", json={"content": f"m{n}"}).status_code == 202
        full = api.post("/v1/sessions/s/turns", json={"content": "one more"})
        assert full.status_code == 409 and full.json()["type"].endswith("history-full")
        finish_next_turn(settings, "s")
        finish_next_turn(settings, "s")
        assert api.post("/v1/sessions/s/turns", json={"content": "x"}).status_code == 409
        assert api.delete("/v1/sessions/s").status_code == 202
        finish_next_turn(settings, "s")
        assert api.post("/v1/sessions/s/turns", json={"content": "again"}).status_code == 202
