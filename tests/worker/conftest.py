from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from langchain_core.language_models import BaseChatModel

from shared.quotas import Quotas
from shared.redis import async_client
from shared.settings import Settings
from shared.store import DeltaBatcher, Heartbeat, SessionStore
from shared.store.outbox import Outbox
from worker.model import ModelSource
from worker.turn import Runtime

RuntimeFactory = Callable[..., Runtime]


@pytest.fixture
async def make_runtime() -> AsyncIterator[RuntimeFactory]:
    """The pipeline's dependencies on the real Redis, with a model of the test's choosing
    (and a running heartbeat, as in a worker)."""
    clients = []
    beats: list[asyncio.Task[None]] = []
    runtimes: list[Runtime] = []

    def build(
        settings: Settings,
        model: BaseChatModel | None = None,
        store_class: type[SessionStore] = SessionStore,
    ) -> Runtime:
        client = async_client(settings.redis_url)
        clients.append(client)
        store = store_class(client, settings)
        heartbeat = Heartbeat(store)
        deltas = DeltaBatcher(store, flush_s=settings.stream_flush_s)
        beats.append(asyncio.create_task(heartbeat.run()))
        beats.append(asyncio.create_task(deltas.run()))
        runtime = Runtime(
            settings,
            store,
            heartbeat,
            deltas,
            ModelSource(settings, model),
            Outbox(store),
            Quotas(client, settings),
        )
        runtimes.append(runtime)
        return runtime

    yield build
    for beat in beats:
        beat.cancel()
    await asyncio.gather(*beats, return_exceptions=True)
    for runtime in runtimes:
        await runtime.models.aclose()
    for client in clients:
        await client.aclose()
