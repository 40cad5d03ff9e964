"""Waiting through one pub/sub connection per process: announcements, reconnects, caps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from shared.errors import TooManyWaiters
from shared.keys import SessionKeys
from shared.redis import pubsub_client
from shared.settings import Settings
from shared.store import EventHub, Outcome, SessionStore, wait_for_turn
from shared.store import waiting as waiting_module
from tests.support.polling import eventually


@pytest.fixture
async def make_hub(settings: Settings) -> AsyncIterator[Callable[..., EventHub]]:
    hubs: list[tuple[EventHub, object]] = []

    def build(max_watchers: int = 10_000, name: str = "test-hub") -> EventHub:
        hub_client = pubsub_client(settings.redis_url, name=name)
        hub = EventHub(hub_client, max_watchers=max_watchers)
        hubs.append((hub, hub_client))
        return hub

    yield build
    for hub, hub_client in hubs:
        await hub.close()
        await hub_client.aclose()  # type: ignore[attr-defined]


async def _finish(store: SessionStore, keys: SessionKeys, text: str) -> None:
    head = await store.begin(keys, "tok")
    assert head is not None
    await store.commit(keys, "tok", head, Outcome(status="completed", output={"content": text}))


def _connections(client: redis.Redis, name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name") == name)


async def test_a_waiter_gets_the_finished_turn_when_it_is_committed(
    store: SessionStore, keys: SessionKeys, make_hub: Callable[..., EventHub]
) -> None:
    hub = make_hub()
    await hub.start()
    accepted = await store.accept(keys, input_doc={"content": "hi"})
    waiting = asyncio.create_task(wait_for_turn(store, hub, keys, accepted.turn_id, 10))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await _finish(store, keys, "done")
    turn = await asyncio.wait_for(waiting, 2)
    assert turn.status == "completed" and turn.output is not None
    assert turn.output.content == "done"


async def test_a_wait_that_runs_out_answers_the_turn_as_it_stands(
    store: SessionStore, keys: SessionKeys, make_hub: Callable[..., EventHub]
) -> None:
    hub = make_hub()
    await hub.start()
    accepted = await store.accept(keys, input_doc={"content": "hi"})
    turn = await wait_for_turn(store, hub, keys, accepted.turn_id, 0.3)
    assert turn.status == "queued"
    assert hub.watching == 0


async def test_a_turn_finished_before_the_wait_began_is_answered_at_once(
    store: SessionStore, keys: SessionKeys, make_hub: Callable[..., EventHub]
) -> None:
    hub = make_hub()
    await hub.start()
    accepted = await store.accept(keys, input_doc={"content": "hi"})
    await _finish(store, keys, "early")
    turn = await asyncio.wait_for(wait_for_turn(store, hub, keys, accepted.turn_id, 30), 2)
    assert turn.status == "completed"


async def test_hundreds_of_waiters_share_one_connection(
    store: SessionStore,
    settings: Settings,
    client: redis.Redis,
    make_hub: Callable[..., EventHub],
) -> None:
    hub = make_hub(name="shared-hub")
    await hub.start()
    sessions = [SessionKeys(settings.key_prefix, "acme", f"w{i}") for i in range(300)]
    turns = [(await store.accept(k, input_doc={"content": "x"})).turn_id for k in sessions]
    waits = [
        asyncio.create_task(wait_for_turn(store, hub, k, t, 20))
        for k, t in zip(sessions, turns, strict=True)
    ]
    await eventually(lambda: hub.watching == len(waits))
    assert _connections(client, "shared-hub") == 1
    assert client.pubsub_numsub(sessions[0].channel)[0][1] == 1
    for k in sessions:
        await _finish(store, k, "ok")
    done = await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert {t.status for t in done} == {"completed"}


async def test_waiters_beyond_the_cap_are_refused(
    store: SessionStore, keys: SessionKeys, make_hub: Callable[..., EventHub]
) -> None:
    hub = make_hub(max_watchers=2)
    await hub.start()
    accepted = await store.accept(keys, input_doc={"content": "hi"})
    held = [
        asyncio.create_task(wait_for_turn(store, hub, keys, accepted.turn_id, 5)) for _ in range(2)
    ]
    await eventually(lambda: hub.watching == 2)
    with pytest.raises(TooManyWaiters):
        await wait_for_turn(store, hub, keys, accepted.turn_id, 5)
    await _finish(store, keys, "ok")
    await asyncio.gather(*held)


async def test_a_lost_connection_is_renewed_and_waiters_still_get_their_turn(
    store: SessionStore,
    keys: SessionKeys,
    client: redis.Redis,
    make_hub: Callable[..., EventHub],
) -> None:
    hub = make_hub(name="flaky-hub")
    await hub.start()
    accepted = await store.accept(keys, input_doc={"content": "hi"})
    waiting = asyncio.create_task(wait_for_turn(store, hub, keys, accepted.turn_id, 20))
    await eventually(lambda: hub.watching == 1)
    [hub_id] = [c["id"] for c in client.client_list() if c.get("name") == "flaky-hub"]
    client.client_kill_filter(_id=hub_id)  # the hub's connection drops
    await _finish(store, keys, "after the drop")  # announced while nobody listens
    turn = await asyncio.wait_for(waiting, 5)
    assert turn.status == "completed" and turn.output is not None
    assert turn.output.content == "after the drop"
    # and the hub is connected again for later waiters
    await eventually(lambda: _connections(client, "flaky-hub") == 1)


async def test_a_channel_nobody_watches_is_unsubscribed_after_a_moment(
    store: SessionStore,
    keys: SessionKeys,
    client: redis.Redis,
    make_hub: Callable[..., EventHub],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waiting_module, "LINGER_S", 0.2)
    hub = make_hub()
    await hub.start()
    accepted = await store.accept(keys, input_doc={"content": "hi"})
    await wait_for_turn(store, hub, keys, accepted.turn_id, 0.1)
    assert client.pubsub_numsub(keys.channel)[0][1] == 1  # kept for a client polling again
    await asyncio.sleep(0.5)
    assert client.pubsub_numsub(keys.channel)[0][1] == 0


async def test_an_event_both_read_and_announced_is_yielded_once(
    store: SessionStore, keys: SessionKeys, make_hub: Callable[..., EventHub]
) -> None:
    from shared.store.waiting import follow_events

    hub = make_hub()
    await hub.start()
    await store.accept(keys, input_doc={"content": "x"})
    async with hub.watch(keys.channel) as watcher:
        await store.begin(keys, "tok")  # announced after the subscription, before the read
        await asyncio.sleep(0.2)  # ... and the announcement has arrived
        seen: list[str] = []
        async for event in follow_events(store, watcher, keys, "0-0", idle_s=0.3):
            if event is None:  # nothing more: the stream went idle
                break
            seen.append(event.id)
    assert len(seen) == len(set(seen)) == 2  # queued, running: each once


async def test_an_event_that_arrives_as_the_wait_runs_out_is_not_lost() -> None:
    import time

    from shared.store.waiting import Watcher

    loop = asyncio.get_running_loop()
    watcher = Watcher()
    waiting = asyncio.create_task(watcher.wait(0.05))
    await asyncio.sleep(0)  # it waits; its timer fires 50 ms from now
    # The loop stalls past the timer (as under a long collection); when it runs again
    # the timer fires first, then the event arrives, before the waiter resumes.
    loop.call_later(0.01, time.sleep, 0.08)
    loop.call_later(0.06, watcher.push, "1-1 turn_1 delta {}")
    assert await waiting is True
    events, stale = watcher.take()
    assert [e.id for e in events] == ["1-1"] and not stale


async def test_closing_the_hub_never_swallows_a_cancel_of_the_closer(
    make_hub: Callable[..., EventHub],
) -> None:
    hub = make_hub()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(1)  # a reader that takes a while to wind down
            raise

    hub._reader = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    closing = asyncio.create_task(hub.close())
    await asyncio.sleep(0.05)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
