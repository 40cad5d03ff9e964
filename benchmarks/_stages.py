"""Where a turn's CPU goes inside chatlane's own pipeline, without Celery.

Runs the worker's steps in this process against a real Redis, on one asyncio event loop
(uvloop, as the worker's engine runs), exactly as ``worker.turn.drain_session`` does for
a one-turn drain — ``SessionStore.begin``, ``worker.turn.run_turn`` (prompt + LangChain
``astream`` of the model), ``SessionStore.commit`` — after the API's
``SessionStore.accept`` (its accept pipeline, without the wake-up), and measures each
awaited step's CPU with ``time.thread_time()``. Nothing else runs on the loop meanwhile:
the lease heartbeat is not started (a turn here takes far less than a third of a
lease), so each figure is that step's own work, the event loop's included. The baseline
is a bare Redis ``PING`` on the same client: what one round trip costs a client here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from shared.quotas import Quotas
from shared.redis import async_client
from shared.settings import Settings
from shared.store import DeltaBatcher, Heartbeat, Lease, SessionStore
from shared.store.outbox import Outbox
from worker.echo import _TOKEN, echo_reply
from worker.engine import new_event_loop
from worker.model import ModelSource, call_model
from worker.turn import Runtime, build_prompt, run_turn

STAGES = ("accept", "begin", "run_turn", "commit", "call_model", "ping")
T = TypeVar("T")


async def _ignore_delta(text: str) -> None:
    """``on_delta`` of a bare ``call_model``: the text is dropped."""


def _no_retry() -> None:
    """``on_retry`` of a bare ``call_model`` (the echo model never fails)."""


def measure_stages(url: str, *, turns: int, sessions: int, tag: str) -> dict[str, float]:
    """CPU ms per call of each stage, over ``turns`` turns spread over ``sessions`` sessions."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_stages(url, turns=turns, sessions=sessions, tag=tag))


async def _stages(url: str, *, turns: int, sessions: int, tag: str) -> dict[str, float]:
    settings = Settings(redis_url=url, key_prefix=f"stages{tag}")
    client = async_client(url, name="chatlane-bench-stages", bounded=True)  # as the worker's
    store = SessionStore(client, settings)
    deltas = DeltaBatcher(store, flush_s=settings.stream_flush_s)  # a short reply: the tail
    rt = Runtime(
        settings,
        store,
        Heartbeat(store),
        deltas,
        ModelSource(settings),
        Outbox(store),
        Quotas(client, settings),
    )
    model = rt.models.get()
    loop = asyncio.get_running_loop()
    spent = dict.fromkeys(STAGES, 0.0)

    async def timed(stage: str, step: Awaitable[T]) -> T:
        t0 = time.thread_time()
        result = await step
        spent[stage] += time.thread_time() - t0
        return result

    try:
        await client.ping()  # connect before anything is timed
        for i in range(turns):
            keys = store.keys(settings.default_tenant, f"s{i % sessions}")
            await timed("accept", store.accept(keys, input_doc={"content": "hello"}))
            lease = Lease(store, keys)
            head = await timed("begin", store.begin(keys, lease.token))
            assert head is not None
            async with rt.heartbeat.keep(lease):
                outcome = await timed("run_turn", run_turn(rt, lease, head))
                await timed("commit", store.commit(keys, lease.token, head, outcome))
            prompt = build_prompt(settings, head.history, [("hello", head.turn.id)])
            await timed(
                "call_model",
                call_model(
                    model, prompt, settings=settings, deadline=loop.time() + 60,
                    on_delta=_ignore_delta, on_retry=_no_retry,
                ),
            )  # fmt: skip
            await timed("ping", client.ping())
    finally:
        await client.aclose()
    return {stage: 1000 * spent[stage] / turns for stage in STAGES}


def measure_streaming(words: int, calls: int) -> dict[str, float]:
    """CPU ms of one ``call_model`` (LangChain ``astream`` of the echo model) whose reply
    has about ``words + 7`` tokens; best of 5 batches of ``calls``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_streaming(words, calls))


async def _streaming(words: int, calls: int) -> dict[str, float]:
    settings = Settings()
    model = ModelSource(settings).get()
    prompt = build_prompt(settings, [], [(" ".join(["word"] * words), "turn_0")])
    loop = asyncio.get_running_loop()
    batches = []
    for _ in range(6):  # the first batch warms up and is dropped
        t0 = time.thread_time()
        for _ in range(calls):
            await call_model(
                model, prompt, settings=settings, deadline=loop.time() + 60,
                on_delta=_ignore_delta, on_retry=_no_retry,
            )  # fmt: skip
        batches.append((time.thread_time() - t0) * 1000 / calls)
    tokens = len(_TOKEN.findall(echo_reply(prompt)))
    return {
        "tokens": float(tokens),
        "ms": min(batches[1:]),
        "us_per_token": 1000 * min(batches[1:]) / tokens,
    }
