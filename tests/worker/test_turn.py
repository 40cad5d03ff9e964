"""The turn pipeline in process, on real Redis, with the echo model and fake models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from shared.errors import CommitRejected
from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store import SessionStore, Turn
from shared.store.dead_turns import DeadTurns
from tests.support.polling import eventually
from tests.worker.conftest import RuntimeFactory
from worker.turn import drain_session


def _turn(client: redis.Redis, keys: SessionKeys, turn_id: str) -> Turn:
    return Turn.from_json(client.hget(keys.turns, turn_id))  # type: ignore[arg-type]


def _events(client: redis.Redis, keys: SessionKeys, turn_id: str) -> list[tuple[str, Any]]:
    return [
        (f["type"], json.loads(f["data"]))
        for _, f in client.xrange(keys.events)
        if f["turn"] == turn_id
    ]


class Recording(BaseChatModel):
    """Streams a fixed reply and records every prompt it was given."""

    reply: str = "ok"
    prompts: list[list[BaseMessage]] = []

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        raise NotImplementedError

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self.prompts.append(list(messages))
        for word in self.reply.split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


async def _accept(store: SessionStore, keys: SessionKeys, *texts: str) -> list[str]:
    return [(await store.accept(keys, input_doc={"content": t})).turn_id for t in texts]


async def test_the_echo_model_names_the_message_and_the_context_it_saw(
    client: redis.Redis, settings: Settings, make_runtime: RuntimeFactory
) -> None:
    rt = make_runtime(settings)
    keys = rt.store.keys("default", "echo")
    ids = await _accept(rt.store, keys, "first", "second")

    report = await drain_session(rt, "default", "echo")

    assert report.committed == 2
    outputs = [_turn(client, keys, i).output for i in ids]
    assert [o.content for o in outputs if o] == [
        "echo: first (saw 0 earlier messages)",
        "echo: second (saw 2 earlier messages)",
    ]
    events = _events(client, keys, ids[1])
    assert [kind for kind, _ in events][:2] == ["status", "status"]
    kind, final = events[-1]
    assert kind == "final"
    assert final["status"] == "completed"
    assert (final["seq"], final["attempt"]) == (2, 1)
    assert final["output"] == {"content": "echo: second (saw 2 earlier messages)"}
    assert final["started_at"] <= final["finished_at"]
    streamed = "".join(data["text"] for kind, data in events if kind == "delta")
    assert streamed == "echo: second (saw 2 earlier messages)"
    assert client.get(keys.lock) is None


async def test_the_prompt_is_the_system_prompt_then_the_window_then_the_message(
    make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(history_window=3, system_prompt="Be brief.")
    model = Recording(prompts=[])
    rt = make_runtime(settings, model)
    keys = rt.store.keys("default", "window")
    await _accept(rt.store, keys, "m0", "m1", "m2")

    await drain_session(rt, "default", "window")

    third = model.prompts[2]
    assert [(m.type, m.content) for m in third] == [
        ("system", "Be brief."),
        # The window of 3 would start with m0's reply: the exchange is kept whole or not
        # at all, so it starts at m1.
        ("human", "m1"),
        ("ai", "ok "),
        ("human", "m2"),
    ]


async def test_the_echo_model_counts_the_window_it_was_given(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(history_window=5)
    rt = make_runtime(settings)
    keys = rt.store.keys("default", "count")
    await _accept(rt.store, keys, *(f"m{n}" for n in range(4)))
    await drain_session(rt, "default", "count")
    last = json.loads(client.lrange(keys.history, -1, -1)[0])
    assert last["data"]["content"] == "echo: m3 (saw 4 earlier messages)"


class _LockThief(BaseChatModel):
    """Streams a reply, but halfway through another worker takes the session lock."""

    client: Any
    lock_key: str

    @property
    def _llm_type(self) -> str:
        return "lock-thief"

    def _generate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        raise NotImplementedError

    async def _astream(
        self, messages: list[BaseMessage], *a: Any, **k: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="partial "))
        self.client.set(self.lock_key, "another-worker")
        yield ChatGenerationChunk(message=AIMessageChunk(content="reply"))


async def test_a_worker_that_loses_its_lock_mid_reply_writes_nothing(
    client: redis.Redis, settings: Settings, make_runtime: RuntimeFactory
) -> None:
    keys = SessionKeys(settings.key_prefix, "default", "stolen")
    rt = make_runtime(settings, _LockThief(client=client, lock_key=keys.lock))
    [turn_id] = await _accept(rt.store, keys, "hi")

    report = await drain_session(rt, "default", "stolen")

    assert report.lost_lock
    assert client.llen(keys.history) == 0
    assert _turn(client, keys, turn_id).status == "running"  # for the new holder to finish
    assert client.lrange(keys.mailbox, 0, -1) == [turn_id]


class _Hanging(BaseChatModel):
    """Sends nothing, ever (until cancelled): only the heartbeat can notice a lost lease."""

    cancelled: list[bool] = []

    @property
    def _llm_type(self) -> str:
        return "hanging"

    def _generate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        raise NotImplementedError

    async def _astream(
        self, messages: list[BaseMessage], *a: Any, **k: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.append(True)
            raise
        yield ChatGenerationChunk(message=AIMessageChunk(content="never"))


async def test_a_lost_lease_cancels_the_model_call_at_once(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(lock_ttl_s=0.6)
    model = _Hanging(cancelled=[])
    rt = make_runtime(settings, model)
    keys = rt.store.keys("default", "hung")
    [turn_id] = await _accept(rt.store, keys, "hi")
    draining = asyncio.create_task(drain_session(rt, "default", "hung"))
    await eventually(lambda: _turn(client, keys, turn_id).status == "running")
    client.set(keys.lock, "another-worker")  # the lease is gone

    await asyncio.wait({draining}, timeout=1.5)  # a heartbeat is every 0.2 s
    if not draining.done():
        draining.cancel()
        raise AssertionError("the model call went on after the lease was lost")

    assert draining.result().lost_lock and model.cancelled == [True]
    assert client.llen(keys.history) == 0


async def test_a_turn_started_too_many_times_is_failed_instead_of_retried_forever(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(max_turn_attempts=2)
    rt = make_runtime(settings)
    keys = rt.store.keys("default", "poison")
    [turn_id] = await _accept(rt.store, keys, "boom")
    for crashed in ("w1", "w2"):  # two workers took it and died without committing
        assert await rt.store.begin(keys, crashed) is not None
        client.delete(keys.lock)

    await drain_session(rt, "default", "poison")

    turn = _turn(client, keys, turn_id)
    assert turn.status == "failed"
    assert turn.error is not None and turn.error.code == "attempts_exhausted"
    dead, more = await DeadTurns(rt.store.client, settings.key_prefix).page("default", limit=5)
    assert [(d.turn_id, d.session_id, d.attempts) for d in dead] == [(turn_id, "poison", 3)]
    assert not more and rt.metrics.dead_turns._value.get() == 1


async def test_a_model_that_cannot_be_built_fails_each_turn_with_the_reason(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(model="openai:gpt-4o-mini")  # and no OPENAI_API_KEY
    rt = make_runtime(settings)
    keys = rt.store.keys("default", "unbuildable")
    ids = await _accept(rt.store, keys, "one", "two")

    report = await drain_session(rt, "default", "unbuildable")

    assert report.committed == 2
    for turn_id in ids:
        turn = _turn(client, keys, turn_id)
        assert turn.status == "failed" and turn.error is not None
        assert turn.error.code == "model_unavailable"
        assert "OPENAI_API_KEY" in turn.error.message
    assert client.get(keys.lock) is None


class _Broken(Recording):
    async def _astream(self, *a: Any, **k: Any) -> AsyncIterator[ChatGenerationChunk]:
        raise RuntimeError("a bug in the model wrapper")
        yield  # pragma: no cover - makes this an async generator


async def test_an_unexpected_error_in_the_model_fails_the_turn_and_the_session_moves_on(
    client: redis.Redis, settings: Settings, make_runtime: RuntimeFactory
) -> None:
    rt = make_runtime(settings, _Broken(prompts=[]))
    keys = rt.store.keys("default", "broken")
    ids = await _accept(rt.store, keys, "one", "two")
    report = await drain_session(rt, "default", "broken")
    assert report.committed == 2
    failed = _turn(client, keys, ids[0])
    assert failed.error is not None and failed.error.code == "model_error"
    assert "a bug in the model wrapper" in failed.error.message


async def test_a_busy_session_is_left_to_its_holder(
    client: redis.Redis, settings: Settings, make_runtime: RuntimeFactory
) -> None:
    rt = make_runtime(settings)
    keys = rt.store.keys("default", "held")
    await _accept(rt.store, keys, "x")
    client.set(keys.lock, "someone-else", px=5000)

    report = await drain_session(rt, "default", "held")

    assert report.busy and report.committed == 0
    assert client.llen(keys.mailbox) == 1


async def test_the_heartbeat_keeps_the_lock_through_a_model_call_longer_than_the_lease(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(lock_ttl_s=0.6, echo_delay_s=1.5)
    rt = make_runtime(settings)
    keys = rt.store.keys("default", "slow")
    [turn_id] = await _accept(rt.store, keys, "hi")

    report = await drain_session(rt, "default", "slow")

    assert report.committed == 1 and not report.lost_lock
    turn = _turn(client, keys, turn_id)
    assert turn.status == "completed" and turn.attempt == 1


class _Refusing(SessionStore):
    """The real store, except that every commit is refused as out of order."""

    async def commit(self, *args: Any, **kwargs: Any) -> bool:
        raise CommitRejected("OUT_OF_ORDER")


async def test_a_head_refused_twice_is_left_to_the_sweeper_instead_of_spinning(
    client: redis.Redis, settings: Settings, make_runtime: RuntimeFactory
) -> None:
    rt = make_runtime(settings, store_class=_Refusing)
    keys = rt.store.keys("default", "refused")
    await _accept(rt.store, keys, "x")

    report = await drain_session(rt, "default", "refused")

    assert report.committed == 0
    assert client.get(keys.lock) is None  # released for a fresh worker
    assert client.llen(keys.mailbox) == 1


async def test_cancelling_a_drain_whose_lease_was_lost_still_cancels_it(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(lock_ttl_s=0.6)
    rt = make_runtime(settings, _Hanging(cancelled=[]))
    keys = rt.store.keys("default", "shutdown")
    [turn_id] = await _accept(rt.store, keys, "hi")
    draining = asyncio.create_task(drain_session(rt, "default", "shutdown"))
    await eventually(lambda: _turn(client, keys, turn_id).status == "running")
    lease = next(iter(rt.heartbeat._leases))
    lease.mark_lost()
    draining.cancel()  # e.g. the worker shutting down at the same moment
    with pytest.raises(asyncio.CancelledError):
        await draining


class _Endless(BaseChatModel):
    """Streams a token every 20 ms for as long as it is read."""

    @property
    def _llm_type(self) -> str:
        return "endless"

    def _generate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        raise NotImplementedError

    async def _astream(
        self, messages: list[BaseMessage], *a: Any, **k: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        while True:
            yield ChatGenerationChunk(message=AIMessageChunk(content="more "))
            await asyncio.sleep(0.02)


async def test_a_lock_lost_mid_stream_is_noticed_at_the_next_delta_flush(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(lock_ttl_s=60.0, stream_flush_s=0.05)  # heartbeat every 20 s
    rt = make_runtime(settings, _Endless())
    keys = rt.store.keys("default", "endless")
    [turn_id] = await _accept(rt.store, keys, "go")
    draining = asyncio.create_task(drain_session(rt, "default", "endless"))
    await eventually(lambda: client.xlen(keys.events) > 3)  # deltas are flowing
    client.set(keys.lock, "another-worker")

    await asyncio.wait({draining}, timeout=1.0)
    if not draining.done():
        draining.cancel()
        raise AssertionError("the stream went on after its deltas were refused")
    assert draining.result().lost_lock
    assert _turn(client, keys, turn_id).status == "running"  # left for the new holder


async def test_a_committed_turn_settles_its_tenants_token_budget_once(
    make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(rate_tokens_per_minute=10_000, reply_token_estimate=5_000)
    rt = make_runtime(settings)
    keys = rt.store.keys("acme", "budget")
    quotas = rt.quotas
    estimate = quotas.turn_estimate("x" * 400)
    await quotas.reserve_tokens("acme", estimate)  # as the API does when it accepts
    await _accept(rt.store, keys, "x" * 400)

    assert (await drain_session(rt, "acme", "budget")).committed == 1
    stats = await quotas.limiter.get_window_stats(quotas.tokens, "acme")
    spent = 10_000 - stats.remaining
    # 100 tokens read and about 108 written (the echo repeats the message): far below the
    # 5,100 reserved, the rest of which came back.
    assert 200 <= spent <= 230
    assert (await drain_session(rt, "acme", "budget")).committed == 0
    stats = await quotas.limiter.get_window_stats(quotas.tokens, "acme")
    assert 10_000 - stats.remaining == spent
