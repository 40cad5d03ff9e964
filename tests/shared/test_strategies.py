"""Double texting and cancellation in the session store's scripts, on a real Redis: each
strategy's decision is made in the accept, a void attempt can write nothing, and kept
messages land in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import redis

from shared.errors import CommitRejected, SessionActive, TurnStopped
from shared.keys import SessionKeys
from shared.store import Debounce, Head, Heartbeat, Lease, Outcome, SessionStore, Turn
from shared.store.history import assistant_doc, user_doc


def _reply(head: Head, text: str = "reply") -> Outcome:
    said = [((t.input or {}).get("content", ""), t.id) for t in head.group]
    return Outcome(
        status="completed",
        output={"content": text},
        messages=(
            *(user_doc(c, turn_id=i) for c, i in said),
            assistant_doc(text, turn_id=head.turn.id),
        ),
    )


def _history(client: redis.Redis, keys: SessionKeys) -> list[str]:
    return [json.loads(d)["data"]["content"] for d in client.lrange(keys.history, 0, -1)]


def _turn(client: redis.Redis, keys: SessionKeys, turn_id: str) -> Turn:
    return Turn.from_json(client.hget(keys.turns, turn_id))  # type: ignore[arg-type]


async def _say(store: SessionStore, keys: SessionKeys, text: str, **kw: object) -> str:
    return (await store.accept(keys, input_doc={"content": text}, **kw)).turn_id  # type: ignore[arg-type]


async def _head(store: SessionStore, keys: SessionKeys, token: str = "tok") -> Head:
    head = await store.begin(keys, token)
    assert isinstance(head, Head), head
    return head


async def test_reject_refuses_while_a_turn_is_pending_and_writes_nothing(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    first = await _say(store, keys, "a")
    before = (client.lrange(keys.mailbox, 0, -1), client.hgetall(keys.turns))
    with pytest.raises(SessionActive) as refused:
        await _say(store, keys, "b", strategy="reject")
    assert refused.value.turn_id == first
    assert (client.lrange(keys.mailbox, 0, -1), client.hgetall(keys.turns)) == before
    head = await _head(store, keys)
    await store.commit(keys, "tok", head, _reply(head))
    await _say(store, keys, "b", strategy="reject")  # nothing pending: accepted


async def test_interrupt_cancels_pending_messages_and_keeps_them_in_order_around_a_clear(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    m1 = await _say(store, keys, "m1")
    running = await _head(store, keys)
    clear = (await store.accept(keys, kind="clear")).turn_id
    m2 = await _say(store, keys, "m2")
    m3 = await _say(store, keys, "m3", strategy="interrupt")
    for turn_id in (m1, m2):
        turn = _turn(client, keys, turn_id)
        assert turn.status == "cancelled"
        assert turn.cancellation is not None
        assert (turn.cancellation.reason, turn.cancellation.by) == ("interrupted", m3)
    assert _turn(client, keys, clear).status == "queued"  # a clear is never cancelled
    with pytest.raises(CommitRejected, match="STOPPED"):  # the running attempt is void
        await store.commit(keys, "tok", running, _reply(running))
    # The worker begins again: m1's message is kept before the clear runs, m2's after it.
    head = await _head(store, keys)
    assert head.turn.id == clear and _history(client, keys) == ["m1"]
    await store.commit(keys, "tok", head, Outcome(status="completed"))
    head = await _head(store, keys)
    assert head.turn.id == m3 and _history(client, keys) == ["m2"]
    await store.commit(keys, "tok", head, _reply(head))
    assert _history(client, keys) == ["m2", "m3", "reply"]
    assert (await store.read_session(keys)).finished_turns == 4


async def test_rollback_cancels_pending_messages_and_drops_them(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    m1 = await _say(store, keys, "m1")
    await _head(store, keys)
    m2 = await _say(store, keys, "m2")
    m3 = await _say(store, keys, "m3", strategy="rollback")
    assert client.lrange(keys.mailbox, 0, -1) == [m3]
    assert {_turn(client, keys, t).status for t in (m1, m2)} == {"cancelled"}
    head = await _head(store, keys)
    assert head.turn.id == m3 and head.turn.crashes == 0
    await store.commit(keys, "tok", head, _reply(head))
    assert _history(client, keys) == ["m3", "reply"]


async def test_coalesced_messages_form_one_group_after_the_debounce(
    make_store: Callable[..., SessionStore], client: redis.Redis, keys: SessionKeys
) -> None:
    store = make_store(max_coalesced_turns=3)
    ids = [await _say(store, keys, f"m{i}", strategy="coalesce", debounce_s=0.3) for i in range(4)]
    waiting = await store.begin(keys, "tok")
    assert isinstance(waiting, Debounce) and 0 < waiting.wait_s <= 0.3
    assert client.get(keys.lock) == "tok"  # held while it waits: no wake-up is needed
    await asyncio.sleep(waiting.wait_s)
    head = await _head(store, keys)
    assert [t.id for t in head.group] == ids[:3] and head.span == 3  # at most three
    await store.commit(keys, "tok", head, _reply(head))
    for turn_id in ids[1:3]:
        turn = _turn(client, keys, turn_id)
        assert turn.status == "completed" and turn.answered_by == ids[0]
        assert turn.output is not None and turn.output.content == "reply"
    assert _history(client, keys) == ["m0", "m1", "m2", "reply"]
    rest = await _head(store, keys)
    assert [t.id for t in rest.group] == ids[3:]


async def test_a_message_joining_a_running_group_voids_its_attempt_everywhere(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    first = await _say(store, keys, "m0", strategy="coalesce")
    head = await _head(store, keys)
    pack = store.delta_packer(keys, "tok", first, generation=head.generation)
    assert await store.send_packed([pack('{"attempt":1,"try":0,"text":"a"}')]) == [1]
    await _say(store, keys, "m1", strategy="coalesce")
    # Its deltas, its lease renewal and its commit all hear that the attempt is void.
    assert await store.send_packed([pack('{"attempt":1,"try":0,"text":"b"}')]) == [2]
    assert await store.renew([(keys, "tok", head.generation)]) == [2]
    with pytest.raises(CommitRejected, match="STOPPED"):
        await store.commit(keys, "tok", head, _reply(head))
    again = await _head(store, keys)
    assert [(t.input or {})["content"] for t in again.group] == ["m0", "m1"]
    assert again.turn.attempt == 2 and again.turn.crashes == 0  # not counted as a crash
    assert await store.renew([(keys, "tok", again.generation)]) == [1]
    await store.commit(keys, "tok", again, _reply(again))
    assert _history(client, keys) == ["m0", "m1", "reply"]


async def test_cancel_of_a_queued_a_running_and_a_finished_turn(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    a = await _say(store, keys, "a")
    b = await _say(store, keys, "b")
    head = await _head(store, keys)
    queued = await store.cancel(keys, b)
    assert queued.changed and not queued.was_running and queued.turn.status == "cancelled"
    assert client.lrange(keys.mailbox, 0, -1) == [a]
    generation = int(client.hget(keys.meta, "stops") or 0)
    running = await store.cancel(keys, a)
    assert running.changed and running.was_running
    assert int(client.hget(keys.meta, "stops") or 0) == generation + 1
    with pytest.raises(CommitRejected, match="STOPPED"):
        await store.commit(keys, "tok", head, _reply(head))
    assert await store.begin(keys, "tok") is None and client.get(keys.lock) is None
    again = await store.cancel(keys, a)
    assert not again.changed and again.turn == running.turn  # the same answer
    c = await _say(store, keys, "c")
    head = await _head(store, keys)
    await store.commit(keys, "tok", head, _reply(head))
    finished = await store.cancel(keys, c)
    assert not finished.changed and finished.turn.status == "completed"
    assert _history(client, keys) == ["c", "reply"]


async def test_a_stop_notice_that_overtakes_begins_answer_still_stops_the_attempt(
    store: SessionStore, keys: SessionKeys
) -> None:
    lease = Lease(store, keys)
    lease.renewed(3)
    lease.stop(5)  # a notice of generation 5 arrives before begin answers 4
    lease.renewed(4)
    with pytest.raises(TurnStopped):
        lease.check()
    lease.renewed(5)  # begin answered 5: that notice is this attempt's own past
    lease.check()
    lease.stop(5)
    lease.check()
    lease.stop(6)
    with pytest.raises(TurnStopped):
        lease.check()


async def test_a_missed_stop_notice_is_heard_at_the_next_lease_renewal(
    store: SessionStore, keys: SessionKeys
) -> None:
    turn_id = await _say(store, keys, "a")
    heartbeat = Heartbeat(store)
    lease = Lease(store, keys)
    head = await store.begin(keys, lease.token)
    assert isinstance(head, Head)
    lease.renewed(head.generation)
    async with heartbeat.keep(lease):
        await heartbeat.beat()
        lease.check()  # renewed, still its attempt
        await store.cancel(keys, turn_id)  # its notice went nowhere: nobody listens here
        await heartbeat.beat()
        with pytest.raises(TurnStopped):
            lease.check()
        assert not lease.lost.is_set()  # stopped, not lost: the lock is still its own


async def test_interrupted_turns_are_refunded_by_their_characters(
    store: SessionStore, keys: SessionKeys
) -> None:
    first = await _say(store, keys, "é" * 4 + "🙂")
    accepted = await store.accept(keys, input_doc={"content": "b"}, strategy="interrupt")
    assert accepted.cancelled == ((first, 5),)  # as Python counts them: five characters


async def test_a_group_waiting_again_is_queued_and_a_worker_leaving_it_is_no_crash(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    first = await _say(store, keys, "a", strategy="coalesce")
    await _head(store, keys, "tok")  # a runs
    await _say(store, keys, "b", strategy="coalesce", debounce_s=5)  # stops it; b waits
    assert isinstance(await store.begin(keys, "tok"), Debounce)
    turn = _turn(client, keys, first)
    assert turn.status == "queued" and turn.crashes == 0  # nothing runs while it waits
    last = [f for _, f in client.xrange(keys.events) if f["turn"] == first][-1]
    assert (last["type"], json.loads(last["data"])["status"]) == ("status", "queued")
    assert await store.release(keys, "tok", force=True) == 1  # its worker stops and leaves
    assert isinstance(await store.begin(keys, "another"), Debounce)
    assert _turn(client, keys, first).crashes == 0  # leaving is not dying
