from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.apikeys import with_ring
from shared.redis import async_client
from shared.settings import Settings
from shared.store import Outcome, SessionStore
from shared.store import history as docs

LOCAL = ("127.0.0.1", 50000)
"""A loopback peer: without API keys, the API serves such clients only."""


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The real app (real Redis, real lifespan); no worker runs, so turns stay queued."""
    with TestClient(create_app(settings), raise_server_exceptions=False, client=LOCAL) as client:
        yield client


def finish_next_turn(
    settings: Settings, session: str, reply: str = "done", tenant: str | None = None
) -> str:
    """Do a worker's job for the session's next turn (begin + commit); its id."""

    async def work() -> str:
        client = async_client(settings.redis_url)
        try:
            store = SessionStore(client, settings)
            keys = store.keys(tenant or settings.default_tenant, session)
            head = await store.begin(keys, "test-worker")
            assert head is not None
            turn = head.turn
            if turn.kind == "message":
                asked = str((turn.input or {}).get("content", ""))
                said = (
                    docs.user_doc(asked, turn_id=turn.id),
                    docs.assistant_doc(reply, turn_id=turn.id),
                )
                outcome = Outcome(status="completed", output={"content": reply}, messages=said)
            else:
                outcome = Outcome(status="completed")
            await store.commit(keys, "test-worker", head, outcome)
            return head.turn.id
        finally:
            await client.aclose()

    return asyncio.run(work())


def make_key(settings: Settings, tenant: str) -> str:
    """A new API key for ``tenant`` (made as ``chatlane keys create`` makes one)."""
    _, plain = with_ring(settings.redis_url, settings.key_prefix, lambda r: r.create(tenant))
    return plain


def revoke_key(settings: Settings, plain: str) -> None:
    revoked = with_ring(settings.redis_url, settings.key_prefix, lambda r: r.revoke(plain))
    assert revoked is not None
