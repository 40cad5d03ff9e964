"""The engine's promises with many turns at once: a stalled stream delays nobody else, and
a Redis slow to answer slows the streams down instead of growing memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult

from shared.quotas import Quotas
from shared.redis import async_client
from shared.settings import Settings
from shared.store import DeltaBatcher, Heartbeat, SessionStore, Turn
from shared.store.outbox import Outbox
from tests.support.polling import eventually
from tests.support.proxy import FaultProxy
from tests.support.streaming_server import StreamingModelServer
from tests.worker.conftest import RuntimeFactory
from worker.model import ModelSource
from worker.turn import Runtime, drain_session


async def test_a_stalled_stream_is_cut_off_without_delaying_the_others(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    with StreamingModelServer(tokens=20, interval_s=0.05) as stub:  # a reply takes ~1 s
        stub.script = [("stall_after", 3)]  # whichever request comes first stalls
        settings = make_settings(
            model="openai:loopback", openai_base_url=stub.base_url, openai_api_key="k",
            model_timeout_s=2.0, turn_deadline_s=30, stream_flush_s=0.05,
        )  # fmt: skip
        rt = make_runtime(settings)
        sessions = [f"s{i}" for i in range(40)]
        for session in sessions:
            await rt.store.accept(rt.store.keys("default", session), input_doc={"content": "x"})
        started = time.monotonic()
        finished: dict[str, float] = {}

        async def drain(session: str) -> None:
            await drain_session(rt, "default", session)
            finished[session] = time.monotonic() - started

        await asyncio.gather(*(drain(s) for s in sessions))

    turns = [
        Turn.from_json(raw)  # type: ignore[arg-type]
        for raw in (client.hvals(rt.store.keys("default", s).turns)[0] for s in sessions)
    ]
    assert {t.status for t in turns} == {"completed"}
    assert {t.output.content for t in turns if t.output} == {" ".join(f"w{i}" for i in range(20))}
    times = sorted(finished.values())
    assert times[-2] < 1.9  # every other turn finished in about a reply's time ...
    assert times[-1] > 2.0  # ... while the stalled one waited out its read timeout, then retried
    assert stub.stats.max_open_streams >= 39


class Firehose(BaseChatModel):
    """Streams ``chunks`` pieces of ``size`` characters as fast as they are taken."""

    chunks: int = 400
    size: int = 1024
    produced: int = 0

    @property
    def _llm_type(self) -> str:
        return "firehose"

    def _generate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        raise NotImplementedError

    async def stream_text(self, messages: Sequence[BaseMessage]) -> AsyncIterator[str]:
        for _ in range(self.chunks):
            self.produced += 1
            yield "x" * self.size
            await asyncio.sleep(0)


async def test_a_redis_slow_to_answer_slows_the_stream_instead_of_growing_memory(
    client: redis.Redis, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(stream_flush_s=0.01)
    url = urlsplit(settings.redis_url)
    with FaultProxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        proxied = settings.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}{url.path}"}
        )
        aclient = async_client(proxied.redis_url)
        store = SessionStore(aclient, proxied)
        cap = 32 * 1024
        deltas = DeltaBatcher(store, flush_s=0.01, max_pending_bytes=cap)
        model = Firehose()
        rt = Runtime(
            proxied,
            store,
            Heartbeat(store),
            deltas,
            ModelSource(proxied, model),
            Outbox(store),
            Quotas(aclient, proxied),
        )
        flusher = asyncio.create_task(deltas.run())
        keys = store.keys("default", "firehose")
        accepted = await store.accept(keys, input_doc={"content": "go"})
        draining = asyncio.create_task(drain_session(rt, "default", "firehose"))
        await eventually(lambda: model.produced >= 50)
        proxy.blackhole()  # Redis stops answering
        await asyncio.sleep(0.3)
        produced_before = model.produced
        await asyncio.sleep(1.0)
        produced_during_hold = model.produced - produced_before
        proxy.restore()
        await asyncio.wait_for(draining, 30)
        flusher.cancel()
        await aclient.aclose()
    assert produced_during_hold == 0  # the stream waited for Redis
    assert deltas.max_pending_seen <= cap + model.size
    turn = Turn.from_json(client.hget(keys.turns, accepted.turn_id))  # type: ignore[arg-type]
    assert turn.status == "completed" and turn.output is not None
    assert len(turn.output.content) == model.chunks * model.size
