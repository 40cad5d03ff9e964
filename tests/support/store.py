"""The session store from synchronous test code (tests that drive real processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shared.redis import async_client
from shared.settings import Settings
from shared.store import SessionStore

T = TypeVar("T")


def with_store(settings: Settings, work: Callable[[SessionStore], Awaitable[T]]) -> T:
    """Run ``work(store)`` on a fresh client and event loop; its result."""

    async def run() -> T:
        client = async_client(settings.redis_url)
        try:
            return await work(SessionStore(client, settings))
        finally:
            await client.aclose()

    return asyncio.run(run())


def accept(settings: Settings, session: str, content: str, **kwargs: Any) -> str:
    """Queue a turn as the API would, but send no wake-up; its id."""

    async def work(store: SessionStore) -> str:
        keys = store.keys(settings.default_tenant, session)
        return (await store.accept(keys, input_doc={"content": content}, **kwargs)).turn_id

    return with_store(settings, work)
