"""The session store's scripts on a real Redis: fencing, exactly-once, order, expiry."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis

from shared.errors import (
    CommitRejected,
    IdempotencyConflict,
    MailboxFull,
    SessionBusy,
    SessionNotFound,
)
from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store import Head, Outcome, SessionStore, Turn
from shared.store.history import assistant_doc, user_doc


async def _accept(store: SessionStore, keys: SessionKeys, text: str) -> str:
    return (await store.accept(keys, input_doc={"content": text})).turn_id


def _reply(head: Head) -> Outcome:
    content = head.turn.input["content"] if head.turn.input else ""
    return Outcome(
        status="completed",
        output={"content": f"re: {content}"},
        messages=(
            user_doc(content, turn_id=head.turn.id),
            assistant_doc(f"re: {content}", turn_id=head.turn.id),
        ),
    )


def _history(client: redis.Redis, keys: SessionKeys) -> list[str]:
    return [json.loads(d)["data"]["content"] for d in client.lrange(keys.history, 0, -1)]


def _turn(client: redis.Redis, keys: SessionKeys, turn_id: str) -> Turn:
    return Turn.from_json(client.hget(keys.turns, turn_id))  # type: ignore[arg-type]


def _snapshot(client: redis.Redis, keys: SessionKeys) -> tuple[object, ...]:
    return (
        client.lrange(keys.history, 0, -1),
        client.lrange(keys.mailbox, 0, -1),
        client.hgetall(keys.meta),
        client.hgetall(keys.turns),
        client.xlen(keys.events),
        client.get(keys.lock),
    )


async def test_accept_assigns_sequence_numbers_in_order_and_queues_the_turn(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    first = await store.accept(keys, input_doc={"content": "a"})
    second = await store.accept(keys, input_doc={"content": "b"})
    assert first.turn is not None and second.turn is not None
    assert (first.turn.seq, second.turn.seq) == (1, 2)
    assert client.lrange(keys.mailbox, 0, -1) == [first.turn_id, second.turn_id]
    assert _turn(client, keys, first.turn_id) == first.turn
    assert first.turn.status == "queued" and first.turn.input == {"content": "a"}
    for key in (keys.mailbox, keys.meta, keys.turns, keys.turn_index, keys.events):
        assert client.ttl(key) > 0, key


async def test_accept_says_whether_a_worker_holds_the_session(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    assert (await store.accept(keys, input_doc={"content": "a"})).lock_held is False
    client.set(keys.lock, "a-worker")
    assert (await store.accept(keys, input_doc={"content": "b"})).lock_held is True


async def test_commit_by_a_worker_that_lost_the_lock_writes_nothing(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "hello")
    head = await store.begin(keys, "token-a")
    assert head is not None
    client.set(keys.lock, "token-b")  # the lease expired and another worker took over
    before = _snapshot(client, keys)

    with pytest.raises(CommitRejected) as rejected:
        await store.commit(keys, "token-a", head, _reply(head))

    assert rejected.value.reason == "NOT_OWNER"
    assert _snapshot(client, keys) == before


async def test_commit_after_the_lease_expired_writes_nothing(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "hello")
    head = await store.begin(keys, "token-a")
    assert head is not None
    client.delete(keys.lock)  # nobody holds it any more
    before = _snapshot(client, keys)

    with pytest.raises(CommitRejected, match="NOT_OWNER"):
        await store.commit(keys, "token-a", head, _reply(head))
    assert _snapshot(client, keys) == before


async def test_replayed_commit_writes_nothing(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "one")
    await _accept(store, keys, "two")
    head = await store.begin(keys, "tok")
    assert head is not None
    await store.commit(keys, "tok", head, _reply(head))
    before = _snapshot(client, keys)

    with pytest.raises(CommitRejected) as rejected:
        await store.commit(keys, "tok", head, _reply(head))

    assert rejected.value.reason == "DUPLICATE"
    assert _snapshot(client, keys) == before
    assert _history(client, keys) == ["one", "re: one"]


async def test_commit_out_of_sequence_writes_nothing(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "one")
    second_id = await _accept(store, keys, "two")
    head = await store.begin(keys, "tok")
    assert head is not None
    # A stale worker tries to commit the second turn while the first is still the head.
    second = Head(_turn(client, keys, second_id), [])
    before = _snapshot(client, keys)

    with pytest.raises(CommitRejected) as rejected:
        await store.commit(keys, "tok", second, _reply(second))

    assert rejected.value.reason == "OUT_OF_ORDER"
    assert _snapshot(client, keys) == before
    assert client.lrange(keys.mailbox, 0, -1)[0] == head.turn.id


async def test_commit_records_the_result_and_releases_the_lock_only_when_the_mailbox_is_empty(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "one")
    await _accept(store, keys, "two")
    first = await store.begin(keys, "tok")
    assert first is not None
    assert first.turn.status == "running" and first.turn.attempt == 1
    assert await store.commit(keys, "tok", first, _reply(first)) is False
    assert client.get(keys.lock) == "tok"
    done = _turn(client, keys, first.turn.id)
    assert done.status == "completed" and done.output is not None
    assert done.output.content == "re: one"
    assert done.started_at is not None and done.finished_at is not None
    second = await store.begin(keys, "tok")
    assert second is not None
    assert [m["data"]["content"] for m in second.history] == ["one", "re: one"]
    assert await store.commit(keys, "tok", second, _reply(second)) is True
    assert client.get(keys.lock) is None
    assert _history(client, keys) == ["one", "re: one", "two", "re: two"]


async def test_a_failed_turn_writes_no_history_and_the_session_moves_on(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    failed_id = await _accept(store, keys, "one")
    await _accept(store, keys, "two")
    head = await store.begin(keys, "tok")
    assert head is not None
    error = {"code": "model_error", "message": "no"}
    outcome = Outcome(status="failed", error=error, messages=_reply(head).messages)
    await store.commit(keys, "tok", head, outcome)
    failed = _turn(client, keys, failed_id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "model_error" and failed.output is None
    assert _history(client, keys) == []
    nxt = await store.begin(keys, "tok")
    assert nxt is not None and nxt.turn.input == {"content": "two"}


async def test_release_refuses_while_the_mailbox_has_entries(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "pending")
    assert await store.begin(keys, "tok") is not None

    assert await store.release(keys, "tok") == -1
    assert client.get(keys.lock) == "tok"
    assert await store.release(keys, "someone-else", force=True) == 0
    assert await store.release(keys, "tok", force=True) == 1
    assert client.get(keys.lock) is None


async def test_begin_refuses_a_second_worker_and_releases_when_empty(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "x")
    head = await store.begin(keys, "tok-a")
    assert head is not None
    with pytest.raises(SessionBusy):
        await store.begin(keys, "tok-b")
    await store.commit(keys, "tok-a", head, _reply(head))
    assert await store.begin(keys, "tok-b") is None
    assert client.get(keys.lock) is None


async def test_begin_skips_a_head_that_already_finished(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    done_id = await _accept(store, keys, "done")
    await _accept(store, keys, "next")
    record = json.loads(client.hget(keys.turns, done_id))  # type: ignore[arg-type]
    client.hset(keys.turns, done_id, json.dumps({**record, "status": "completed"}))
    head = await store.begin(keys, "tok")
    assert head is not None and head.turn.input == {"content": "next"}
    assert client.lrange(keys.mailbox, 0, -1) == [head.turn.id]


async def test_renew_extends_only_the_holders_lease(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    other = SessionKeys(keys.prefix, keys.tenant, "s-2")
    client.set(keys.lock, "tok", px=1000)
    client.set(other.lock, "someone-else", px=1000)
    assert await store.renew([(keys, "tok", 0), (other, "tok", 0)]) == [1, 0]
    assert client.pttl(keys.lock) > 1000
    assert client.pttl(other.lock) <= 1000


async def test_idempotency_key_replays_and_refuses_a_different_body(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    first = await store.accept(keys, input_doc={"content": "a"}, idempotency_key="k")
    again = await store.accept(keys, input_doc={"content": "a"}, idempotency_key="k")
    assert again.replayed and again.turn_id == first.turn_id and again.turn is None
    with pytest.raises(IdempotencyConflict):
        await store.accept(keys, input_doc={"content": "b"}, idempotency_key="k")
    assert client.llen(keys.mailbox) == 1
    assert client.hlen(keys.turns) == 1


async def test_accept_refuses_beyond_the_pending_limit(
    make_store: Callable[..., SessionStore], client: redis.Redis, keys: SessionKeys
) -> None:
    small = make_store(max_pending_turns=2)
    await small.accept(keys, input_doc={"content": "1"})
    await small.accept(keys, input_doc={"content": "2"})
    with pytest.raises(MailboxFull):
        await small.accept(keys, input_doc={"content": "3"})
    assert client.llen(keys.mailbox) == 2
    assert client.hlen(keys.turns) == 2


async def test_a_clear_empties_history_in_order_and_has_no_output(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "before")
    clear = await store.accept(keys, kind="clear", existing_only=True)
    await _accept(store, keys, "after")
    for _ in range(3):
        head = await store.begin(keys, "tok")
        assert head is not None
        outcome = _reply(head) if head.turn.kind == "message" else Outcome(status="completed")
        await store.commit(keys, "tok", head, outcome)
    assert _history(client, keys) == ["after", "re: after"]
    cleared = _turn(client, keys, clear.turn_id)
    assert cleared.status == "completed" and cleared.output is None and cleared.input is None


async def test_clearing_a_session_that_does_not_exist_writes_nothing(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    with pytest.raises(SessionNotFound):
        await store.accept(keys, kind="clear", existing_only=True)
    assert list(client.scan_iter(match=f"{keys.prefix}:{{*")) == []


async def test_sessions_share_no_keys_and_each_session_maps_to_one_slot(settings: Settings) -> None:
    from redis.crc import key_slot

    def every_key(k: SessionKeys) -> list[str]:
        return [k.meta, k.mailbox, k.history, k.lock, k.turns, k.turn_index, k.events,
                k.woken, k.idempotency("x")]  # fmt: skip

    a = SessionKeys(settings.key_prefix, "acme", "s-1")
    b = SessionKeys(settings.key_prefix, "acme", "s-10")
    assert not set(every_key(a)) & set(every_key(b))
    assert len({key_slot(k.encode()) for k in every_key(a)}) == 1


async def test_a_delta_from_a_worker_that_lost_the_lock_is_not_written(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    turn_id = await _accept(store, keys, "hi")
    assert await store.begin(keys, "tok-a") is not None
    assert await store.append_delta(keys, "tok-a", turn_id, store.delta_data(1, 0, "mine "))
    client.set(keys.lock, "tok-b")  # paused past the lease; another worker took over
    before = client.xlen(keys.events)

    assert not await store.append_delta(keys, "tok-a", turn_id, store.delta_data(1, 0, "stale"))

    assert client.xlen(keys.events) == before


async def test_begin_refreshes_the_whole_sessions_expiry(
    make_store: Callable[..., SessionStore], client: redis.Redis, keys: SessionKeys
) -> None:
    short, long = make_store(session_ttl_s=100), make_store(session_ttl_s=10_000)
    client.rpush(keys.history, "{}")
    await short.accept(keys, input_doc={"content": "hi"})
    assert await long.begin(keys, "tok") is not None
    for key in (keys.history, keys.mailbox, keys.meta, keys.turns, keys.turn_index):
        assert client.ttl(key) > 100, key


async def test_events_are_kept_for_the_events_ttl_and_trimmed_by_age(
    make_store: Callable[..., SessionStore], client: redis.Redis, keys: SessionKeys
) -> None:
    store = make_store(events_ttl_s=50)
    client.xadd(keys.events, {"turn": "old", "type": "status", "data": "{}"}, id="1-1")
    await store.accept(keys, input_doc={"content": "hi"})
    head = await store.begin(keys, "tok")
    assert head is not None
    await store.commit(keys, "tok", head, _reply(head))
    assert 0 < client.ttl(keys.events) <= 50
    assert client.ttl(keys.history) > 50
    entries = client.xrange(keys.events)
    assert [f["type"] for _, f in entries] == ["status", "status", "final"]  # "old" trimmed
    final = Turn.from_json(entries[-1][1]["data"])
    assert final == _turn(client, keys, head.turn.id)


async def test_rewakes_back_off_until_a_worker_begins(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    async def rewake() -> int:
        args = {"base_ms": 1000, "max_ms": 60_000}
        return int(await store.scripts.rewake(store.client, [keys.woken, keys.meta], args))

    assert await rewake() == 1
    assert await rewake() == 0  # one outstanding at a time
    client.delete(keys.woken)  # the first wait ran out
    assert await rewake() == 2
    assert 1000 < client.pttl(keys.woken) <= 2000  # twice as long as the first
    await _accept(store, keys, "x")
    assert await store.begin(keys, "tok") is not None
    assert client.exists(keys.woken) == 0
    assert await rewake() == 1  # the backoff starts over


async def test_a_session_reports_its_counts_and_unknown_sessions_are_not_found(
    store: SessionStore, keys: SessionKeys
) -> None:
    with pytest.raises(SessionNotFound):
        await store.read_session(keys)
    with pytest.raises(SessionNotFound):
        await store.messages(keys, offset=0, limit=10)
    with pytest.raises(SessionNotFound):
        await store.list_turns(keys, limit=10)
    for text in ("a", "b", "c"):
        await _accept(store, keys, text)
    head = await store.begin(keys, "tok")
    assert head is not None
    await store.commit(keys, "tok", head, _reply(head))
    session = await store.read_session(keys)
    assert (session.turn_count, session.finished_turns, session.pending_turns) == (3, 1, 2)
    assert session.message_count == 2
    assert session.created_at <= session.updated_at


async def test_turns_are_listed_by_sequence_in_pages_both_ways(
    store: SessionStore, keys: SessionKeys
) -> None:
    ids = [await _accept(store, keys, str(n)) for n in range(5)]
    first = await store.list_turns(keys, limit=2)
    assert [t.id for t in first.items] == ids[:2] and first.has_more and first.total == 5
    rest = await store.list_turns(keys, limit=10, after=first.items[-1].seq)
    assert [t.id for t in rest.items] == ids[2:] and not rest.has_more
    backwards = await store.list_turns(keys, limit=2, order="desc", after=4)
    assert [t.seq for t in backwards.items] == [3, 2] and backwards.has_more


async def test_streaming_stops_with_lock_lost_once_another_worker_holds_the_session(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    from shared.errors import LockLost
    from shared.store import DeltaBatcher, Lease

    turn_id = await _accept(store, keys, "hi")
    lease = Lease(store, keys)
    assert await store.begin(keys, lease.token) is not None
    writer = DeltaBatcher(store, flush_s=0).writer(lease, turn_id, attempt=1)
    await writer.write("mine ")
    client.set(keys.lock, "tok-b")  # paused past the lease; another worker took over
    before = client.xlen(keys.events)

    with pytest.raises(LockLost):
        await writer.write("stale")

    assert client.xlen(keys.events) == before


async def test_a_holder_that_finds_nothing_runnable_left_releases_the_lock(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await _accept(store, keys, "one")
    stale_id = await _accept(store, keys, "two")
    head = await store.begin(keys, "tok")
    assert head is not None
    record = json.loads(client.hget(keys.turns, stale_id))  # type: ignore[arg-type]
    client.hset(keys.turns, stale_id, json.dumps({**record, "status": "completed"}))
    assert await store.commit(keys, "tok", head, _reply(head)) is False  # one is left
    assert await store.begin(keys, "tok") is None  # ...but it can never run
    assert client.get(keys.lock) is None
    assert client.llen(keys.mailbox) == 0


async def test_the_sweeper_forgets_a_session_only_if_untouched_since_it_was_read(
    store: SessionStore, client: redis.Redis
) -> None:
    index = store.globals.active
    client.zadd(index, {"acme:s": 5})  # what the sweeper read ...
    client.zadd(index, {"acme:s": 6})  # ... then a turn was accepted

    async def forget(score: str) -> int:
        args = {"member": "acme:s", "score": score}
        return int(await store.scripts.forget(store.client, [index], args))

    assert await forget("5") == 0
    assert client.zscore(index, "acme:s") == 6
    assert await forget("6") == 1
    assert client.zscore(index, "acme:s") is None


async def test_a_turns_first_text_is_written_at_once_and_the_rest_in_batches(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    import asyncio

    from shared.store import DeltaBatcher, Lease

    turn_id = await _accept(store, keys, "hi")
    lease = Lease(store, keys)
    assert await store.begin(keys, lease.token) is not None
    batcher = DeltaBatcher(store, flush_s=5.0)
    flusher = asyncio.create_task(batcher.run())
    try:
        writer = batcher.writer(lease, turn_id, attempt=1)

        def deltas() -> list[str]:
            return [f["data"] for _, f in client.xrange(keys.events) if f["type"] == "delta"]

        await writer.write("first ")
        await asyncio.sleep(0.3)
        assert len(deltas()) == 1  # the first text did not wait for the batch
        await writer.write("second")
        await asyncio.sleep(0.3)
        assert len(deltas()) == 1  # the rest does
        assert await writer.close() == "second"
    finally:
        flusher.cancel()


async def test_a_turns_first_text_does_not_take_the_other_turns_batches_with_it(
    store: SessionStore, client: redis.Redis, settings: Settings
) -> None:
    import asyncio

    from shared.store import DeltaBatcher, Lease

    batcher = DeltaBatcher(store, flush_s=5.0)
    flusher = asyncio.create_task(batcher.run())
    try:
        writers = []
        for name in ("s-early", "s-late"):
            keys = SessionKeys(settings.key_prefix, "acme", name)
            turn_id = await _accept(store, keys, "hi")
            lease = Lease(store, keys)
            assert await store.begin(keys, lease.token) is not None
            writers.append((keys, batcher.writer(lease, turn_id, attempt=1)))
        (early_keys, early), (late_keys, late) = writers

        def texts(keys: SessionKeys) -> list[str]:
            return [
                json.loads(f["data"])["text"]
                for _, f in client.xrange(keys.events)
                if f["type"] == "delta"
            ]

        await early.write("first ")
        await asyncio.sleep(0.2)
        await early.write("batched")  # waits for the batch, 5 s away
        await late.write("hello")  # its first text: written at once, on its own
        await asyncio.sleep(0.3)
        assert texts(late_keys) == ["hello"]
        assert texts(early_keys) == ["first "]
        assert await early.close() == "batched"
        assert await late.close() == ""
    finally:
        flusher.cancel()
