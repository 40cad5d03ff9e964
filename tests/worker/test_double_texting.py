"""The turn pipeline under double texting, in process on real Redis: a coalesced group
that a message joins mid-call starts again and waits out its debounce; stops that come
while a group waits never end the drain; members' own webhooks are announced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store import Outcome, SessionStore, Turn
from tests.support.polling import eventually
from tests.worker.conftest import RuntimeFactory
from worker.turn import drain_session, webhook_event


class Slow(BaseChatModel):
    """Streams ``words`` words ``interval`` apart; records each prompt's user messages
    and whether each call ran to its end."""

    words: int = 10
    interval: float = 0.05
    prompts: list[list[str]] = []
    finished: list[bool] = []

    @property
    def _llm_type(self) -> str:
        return "slow"

    def _generate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        raise NotImplementedError

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self.prompts.append([str(m.content) for m in messages if m.type == "human"])
        self.finished.append(False)
        for i in range(self.words):
            await asyncio.sleep(self.interval)
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"w{i} "))
        self.finished[-1] = True


def _turn(client: redis.Redis, keys: SessionKeys, turn_id: str) -> Turn:
    return Turn.from_json(client.hget(keys.turns, turn_id))  # type: ignore[arg-type]


async def _say(store: SessionStore, keys: SessionKeys, text: str, **kw: Any) -> str:
    return (await store.accept(keys, input_doc={"content": text}, **kw)).turn_id


async def test_a_message_joining_a_running_group_restarts_it_after_the_debounce(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(lock_ttl_s=0.6)  # renewals every 0.2 s, during the waits too
    model = Slow(prompts=[], finished=[])
    rt = make_runtime(settings, model)
    keys = rt.store.keys("default", "joined")
    first = await _say(rt.store, keys, "a", strategy="coalesce", debounce_s=0.3)
    draining = asyncio.create_task(drain_session(rt, "default", "joined"))
    await eventually(lambda: len(model.prompts) == 1)  # the debounce passed; it streams
    second = await _say(rt.store, keys, "b", strategy="coalesce", debounce_s=0.3)

    report = await asyncio.wait_for(draining, 10)

    assert (report.committed, report.stopped, report.lost_lock) == (2, 1, False)
    assert model.prompts == [["a"], ["a", "b"]] and model.finished == [False, True]
    a, b = _turn(client, keys, first), _turn(client, keys, second)
    assert (a.status, b.status, b.answered_by, a.crashes) == ("completed", "completed", a.id, 0)
    assert client.get(keys.lock) is None


async def test_stops_heard_while_a_group_waits_out_its_debounce_do_not_end_the_drain(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(lock_ttl_s=0.6)
    model = Slow(words=2, prompts=[], finished=[])
    rt = make_runtime(settings, model)
    keys = rt.store.keys("default", "waiting")
    earlier = await _say(rt.store, keys, "old")
    await rt.store.cancel(keys, earlier)
    client.hincrby(keys.meta, "stops", 5)  # the session's generation is well past 0
    turn_id = await _say(rt.store, keys, "x", strategy="coalesce", debounce_s=1.0)

    report = await asyncio.wait_for(drain_session(rt, "default", "waiting"), 10)

    assert (report.committed, report.stopped, report.lost_lock) == (1, 0, False)
    assert _turn(client, keys, turn_id).status == "completed" and model.prompts == [["x"]]


async def test_a_coalesced_turn_with_its_own_webhook_is_announced(
    make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    rt = make_runtime(make_settings())
    keys = rt.store.keys("default", "hooked")
    await _say(rt.store, keys, "a", strategy="coalesce")
    await _say(rt.store, keys, "b", strategy="coalesce", webhook="https://example.com/hook")
    head = await rt.store.begin(keys, "tok")
    assert head is not None and not isinstance(head, float)
    group: tuple[Turn, ...] = head.group  # type: ignore[union-attr]
    assert [t.webhook for t in group] == [None, "https://example.com/hook"]
    done = Outcome(status="completed", output={"content": "ok"})
    assert await webhook_event(rt, "default", group, done) == "turn.completed"


async def test_a_cancel_while_a_restarted_group_waits_takes_its_turn_out_of_the_group(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    settings = make_settings(lock_ttl_s=0.6)  # a renewal lands inside the wait
    model = Slow(prompts=[], finished=[])
    rt = make_runtime(settings, model)
    keys = rt.store.keys("default", "cancelled-while-waiting")
    first = await _say(rt.store, keys, "a", strategy="coalesce", debounce_s=0.1)
    draining = asyncio.create_task(drain_session(rt, "default", "cancelled-while-waiting"))
    await eventually(lambda: len(model.prompts) == 1)
    second = await _say(rt.store, keys, "b", strategy="coalesce", debounce_s=0.6)
    await asyncio.sleep(0.1)  # the group [a, b] now waits out b's debounce
    assert _turn(client, keys, first).status == "queued"  # nothing runs while it waits
    cancelled = await rt.store.cancel(keys, first)
    assert cancelled.changed and not cancelled.was_running

    report = await asyncio.wait_for(draining, 10)

    assert (report.committed, report.lost_lock) == (1, False)
    assert model.prompts == [["a"], ["b"]]
    assert [_turn(client, keys, t).status for t in (first, second)] == ["cancelled", "completed"]


async def test_a_stopping_worker_leaves_a_waiting_group_to_another_at_once(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    rt = make_runtime(make_settings())
    keys = rt.store.keys("default", "leaving")
    turn_id = await _say(rt.store, keys, "x", strategy="coalesce", debounce_s=30)
    draining = asyncio.create_task(drain_session(rt, "default", "leaving"))
    await eventually(lambda: client.get(keys.lock) is not None)  # waiting out the debounce
    rt.stopping.set()

    report = await asyncio.wait_for(draining, 2)  # not after the 30 s debounce

    assert (report.committed, report.lost_lock) == (0, False)
    assert client.get(keys.lock) is None  # free for the worker the sweeper wakes
    assert _turn(client, keys, turn_id).status == "queued"
    assert client.lrange(keys.mailbox, 0, -1) == [turn_id]


async def test_a_stopping_worker_starts_no_further_turn(
    client: redis.Redis, make_settings: Callable[..., Settings], make_runtime: RuntimeFactory
) -> None:
    model = Slow(words=5, prompts=[], finished=[])
    rt = make_runtime(make_settings(), model)
    keys = rt.store.keys("default", "backlog")
    ids = [await _say(rt.store, keys, f"m{i}") for i in range(3)]
    draining = asyncio.create_task(drain_session(rt, "default", "backlog"))
    await eventually(lambda: len(model.prompts) == 1)
    rt.stopping.set()

    report = await asyncio.wait_for(draining, 5)

    assert report.committed == 1 and model.finished == [True]  # m0 finished, no more began
    turns = [_turn(client, keys, t) for t in ids]
    assert [(t.status, t.crashes) for t in turns] == [
        ("completed", 0),
        ("queued", 0),
        ("queued", 0),
    ]
    assert client.get(keys.lock) is None
