"""The webhook API: endpoints, secrets, dead letters; bad URLs refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.redis import async_client
from shared.settings import Settings
from shared.signing import is_secret
from shared.store import SessionStore
from shared.store.outbox import Delivery, Outbox
from shared.store.records import now_ms
from tests.api.conftest import LOCAL


@pytest.fixture
def loopback_api(make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(webhook_allow_private=True)
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as client:
        yield client, settings


def test_an_endpoint_is_made_with_a_secret_shown_once_then_listed_rotated_and_deleted(
    loopback_api: tuple[TestClient, Settings],
) -> None:
    api, _ = loopback_api
    made = api.post("/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/hook"})
    assert made.status_code == 201, made.text
    endpoint = made.json()
    assert is_secret(endpoint["secret"]) and endpoint["events"] == [
        "turn.cancelled",
        "turn.completed",
        "turn.failed",
    ]
    listed = api.get("/v1/webhooks/endpoints").json()
    assert [e["id"] for e in listed] == [endpoint["id"]] and listed[0]["secret"] is None
    rotated = api.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate-secret").json()
    assert is_secret(rotated["secret"]) and rotated["secret"] != endpoint["secret"]
    assert api.delete(f"/v1/webhooks/endpoints/{endpoint['id']}").status_code == 204
    assert api.get(f"/v1/webhooks/endpoints/{endpoint['id']}").status_code == 404


def test_private_urls_are_refused_unless_the_deployment_allows_them(api: TestClient) -> None:
    for url in ("http://127.0.0.1/hook", "http://169.254.169.254/", "ftp://example.com/"):
        refused = api.post("/v1/webhooks/endpoints", json={"url": url})
        assert refused.status_code == 422, url
        assert refused.json()["type"].endswith("webhook-url-refused")
    bad_turn = api.post("/v1/sessions/s/turns", json={"content": "hi", "webhook": "gopher://x"})
    assert bad_turn.status_code == 422


def test_the_signing_secret_exists_once_a_turn_names_a_webhook_and_rotates(
    loopback_api: tuple[TestClient, Settings],
) -> None:
    api, _ = loopback_api
    turn = api.post(
        "/v1/sessions/s/turns", json={"content": "hi", "webhook": "http://127.0.0.1:9/h"}
    )
    assert turn.status_code == 202 and turn.json()["webhook"] == "http://127.0.0.1:9/h"
    [first] = api.get("/v1/webhooks/signing-secret").json()["secrets"]
    rotated = api.post("/v1/webhooks/signing-secret/rotate").json()["secrets"]
    assert rotated[1]["value"] == first["value"] and rotated[1]["expires_at"] is not None
    assert rotated[0]["expires_at"] is None


def test_dead_letters_are_listed_and_replayed(loopback_api: tuple[TestClient, Settings]) -> None:
    api, settings = loopback_api

    async def bury() -> None:
        client = async_client(settings.redis_url)
        try:
            outbox = Outbox(SessionStore(client, settings))
            await outbox.bury(
                Delivery(id="msg_x:turn", msg_id="msg_x", type="turn.failed", tenant="default",
                         session="s", turn_id="turn_x", url="http://127.0.0.1:9/", payload="{}",
                         attempts=8, created_at=now_ms(), last_error="answered 500")
            )  # fmt: skip
        finally:
            await client.aclose()

    asyncio.run(bury())
    page = api.get("/v1/webhooks/dead-letters").json()
    assert [d["id"] for d in page["data"]] == ["msg_x:turn"] and page["has_more"] is False
    replayed = api.post("/v1/webhooks/dead-letters/msg_x:turn/replay")
    assert replayed.status_code == 202 and replayed.json()["attempts"] == 0
    assert api.get("/v1/webhooks/dead-letters").json()["data"] == []
    assert api.post("/v1/webhooks/dead-letters/msg_x:turn/replay").status_code == 404
