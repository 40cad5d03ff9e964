from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.redis import async_client
from shared.settings import Settings
from shared.store import Outcome, SessionStore


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The real app (real Redis, real lifespan); no worker runs, so turns stay queued."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def finish_next_turn(settings: Settings, session: str, reply: str = "done") -> str:
    """Do a worker's job for the session's next turn (begin + commit); its id."""

    async def work() -> str:
        client = async_client(settings.redis_url)
        try:
            store = SessionStore(client, settings)
            keys = store.keys(settings.default_tenant, session)
            head = await store.begin(keys, "test-worker")
            assert head is not None
            output = {"content": reply} if head.turn.kind == "message" else None
            outcome = Outcome(status="completed", output=output)
            await store.commit(keys, "test-worker", head.turn, outcome)
            return head.turn.id
        finally:
            await client.aclose()

    return asyncio.run(work())
