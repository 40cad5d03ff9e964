"""Tenants never meet: another tenant's session, turn, endpoint or dead letter answers
exactly as one that does not exist, on every endpoint, and stays as it was."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.redis import async_client
from shared.settings import Settings
from shared.store import SessionStore
from shared.store.outbox import Delivery, Outbox
from shared.store.records import now_ms
from tests.api.conftest import LOCAL, finish_next_turn, make_key


class Caller:
    """A client holding one tenant's key."""

    def __init__(self, api: TestClient, key: str) -> None:
        self.api, self.auth = api, {"Authorization": f"Bearer {key}"}

    def __call__(self, method: str, url: str, **kw: Any) -> Any:
        return self.api.request(method, url, headers=self.auth, **kw)


@pytest.fixture
def tenants(make_settings: Any) -> Iterator[tuple[Caller, Caller, Settings]]:
    settings: Settings = make_settings(webhook_allow_private=True)
    a, b = make_key(settings, "acme"), make_key(settings, "globex")
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as api:
        yield Caller(api, a), Caller(api, b), settings


def _bury(settings: Settings, tenant: str, delivery_id: str) -> None:
    async def bury() -> None:
        client = async_client(settings.redis_url)
        try:
            await Outbox(SessionStore(client, settings)).bury(
                Delivery(id=delivery_id, msg_id="msg_a", type="turn.completed", tenant=tenant,
                         session="shared", turn_id="turn_a", url="http://127.0.0.1:9/",
                         payload="{}", attempts=8, created_at=now_ms(), last_error="500")
            )  # fmt: skip
        finally:
            await client.aclose()

    asyncio.run(bury())


def _requests(sid: str, tid: str, ep: str, dead: str) -> list[tuple[str, str]]:
    """Every endpoint that names a tenant's own thing, read-only ones first."""
    return [
        ("GET", f"/v1/sessions/{sid}"),
        ("GET", f"/v1/sessions/{sid}/messages"),
        ("GET", f"/v1/sessions/{sid}/turns"),
        ("GET", f"/v1/sessions/{sid}/turns/{tid}"),
        ("GET", f"/v1/sessions/{sid}/turns/{tid}?wait=0.2"),
        ("GET", f"/v1/sessions/{sid}/turns/{tid}/events"),
        ("GET", f"/v1/webhooks/endpoints/{ep}"),
        ("GET", "/v1/webhooks/endpoints"),
        ("GET", "/v1/webhooks/dead-letters"),
        ("POST", f"/v1/webhooks/endpoints/{ep}/rotate-secret"),
        ("POST", f"/v1/webhooks/endpoints/{ep}/enable"),
        ("POST", f"/v1/webhooks/dead-letters/{dead}/replay"),
        ("POST", f"/v1/sessions/{sid}/turns/{tid}/cancel"),
        ("DELETE", f"/v1/webhooks/endpoints/{ep}"),
        ("DELETE", f"/v1/sessions/{sid}"),
    ]


def _snapshot(caller: Caller, sid: str, tid: str, ep: str) -> list[Any]:
    reads = [
        f"/v1/sessions/{sid}",
        f"/v1/sessions/{sid}/messages",
        f"/v1/sessions/{sid}/turns",
        f"/v1/sessions/{sid}/turns/{tid}",
        f"/v1/webhooks/endpoints/{ep}",
        "/v1/webhooks/dead-letters",
    ]
    return [(caller("GET", url).status_code, caller("GET", url).json()) for url in reads]


def test_another_tenants_ids_answer_as_missing_ones_on_every_endpoint_and_change_nothing(
    tenants: tuple[Caller, Caller, Settings],
) -> None:
    a, b, settings = tenants
    made = a("POST", "/v1/sessions/shared/turns", json={"content": "order #1234"})
    assert made.status_code == 202, made.text
    tid = made.json()["id"]
    assert finish_next_turn(settings, "shared", reply="your order #1234", tenant="acme") == tid
    ep = a("POST", "/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/h"}).json()["id"]
    dead = "msg_a:ep"
    _bury(settings, "acme", dead)
    before = _snapshot(a, "shared", tid, ep)
    assert before[0][0] == before[1][0] == before[3][0] == before[4][0] == 200

    missing = ("nobody-" + secrets.token_hex(4), "turn_" + secrets.token_hex(12),
               "ep_" + secrets.token_hex(8), "msg_zz:ep")  # fmt: skip
    theirs = _requests("shared", tid, ep, dead)
    absent = _requests(*missing)
    for (method, url), (_, url_absent) in zip(theirs, absent, strict=True):
        got, expected = b(method, url), b(method, url_absent)
        assert got.status_code == expected.status_code, (url, got.text)
        assert got.status_code in {200, 404}, (url, got.text)
        text = got.text
        for mine, other in zip(("shared", tid, ep, dead), missing, strict=True):
            text = text.replace(mine, other)
        assert text == expected.text, url
        assert "1234" not in got.text

    assert _snapshot(a, "shared", tid, ep) == before


def test_one_session_id_in_two_tenants_is_two_conversations(
    tenants: tuple[Caller, Caller, Settings],
) -> None:
    a, b, settings = tenants
    assert a("POST", "/v1/sessions/same/turns", json={"content": "from acme"}).json()["seq"] == 1
    assert b("POST", "/v1/sessions/same/turns", json={"content": "from globex"}).json()["seq"] == 1
    finish_next_turn(settings, "same", reply="to acme", tenant="acme")
    finish_next_turn(settings, "same", reply="to globex", tenant="globex")
    seen_a = [m["data"]["content"] for m in a("GET", "/v1/sessions/same/messages").json()["data"]]
    seen_b = [m["data"]["content"] for m in b("GET", "/v1/sessions/same/messages").json()["data"]]
    assert seen_a == ["from acme", "to acme"]
    assert seen_b == ["from globex", "to globex"]


def test_another_tenant_can_neither_cancel_a_turn_nor_change_a_sessions_defaults(
    tenants: tuple[Caller, Caller, Settings],
) -> None:
    a, b, _ = tenants
    queued = a("POST", "/v1/sessions/shared/turns", json={"content": "wait for me"}).json()
    assert b("POST", f"/v1/sessions/shared/turns/{queued['id']}/cancel").status_code == 404
    assert a("GET", f"/v1/sessions/shared/turns/{queued['id']}").json()["status"] == "queued"
    made = b("PUT", "/v1/sessions/shared/defaults", json={"strategy": "reject"})
    assert made.status_code == 200  # its own session of that name
    assert a("GET", "/v1/sessions/shared").json()["strategy"] is None
    assert b("PUT", "/v1/defaults", json={"strategy": "rollback"}).status_code == 200
    assert a("GET", "/v1/defaults").json()["strategy"] is None
    second = a("POST", "/v1/sessions/shared/turns", json={"content": "and me"})
    assert second.status_code == 202 and second.json()["strategy"] == "enqueue"
