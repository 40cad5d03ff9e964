"""The Lua scripts, called directly on a real Redis: fencing, exactly-once and order."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from shared import lock, mailbox
from shared.errors import CommitRejected, IdempotencyConflict, MailboxFull, SessionBusy
from shared.history import assistant_doc, user_doc
from shared.keys import SessionKeys
from shared.mailbox import Head, Outcome
from shared.scripts import Scripts
from shared.settings import Settings


@pytest.fixture
def keys(settings: Settings) -> SessionKeys:
    return SessionKeys(settings.key_prefix, "acme", "s-1")


def _accept(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys, text: str
) -> str:
    return mailbox.accept(client, scripts, settings, keys, input_doc={"content": text}).turn_id


def _reply(head: Head) -> Outcome:
    content = head.input["content"] if head.input else ""
    return Outcome(
        status="completed",
        output={"content": f"re: {content}"},
        messages=(
            user_doc(content, turn_id=head.turn_id),
            assistant_doc(f"re: {content}", turn_id=head.turn_id),
        ),
    )


def _history(client: redis.Redis, keys: SessionKeys) -> list[str]:
    return [json.loads(d)["data"]["content"] for d in client.lrange(keys.history, 0, -1)]


def _snapshot(client: redis.Redis, keys: SessionKeys, turn_id: str) -> tuple[object, ...]:
    return (
        client.lrange(keys.history, 0, -1),
        client.lrange(keys.mailbox, 0, -1),
        client.hgetall(keys.meta),
        client.hgetall(keys.turn(turn_id)),
        client.xlen(keys.events(turn_id)),
    )


def test_accept_assigns_sequence_numbers_in_order_and_queues_the_turn(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    first = mailbox.accept(client, scripts, settings, keys, input_doc={"content": "a"})
    second = mailbox.accept(client, scripts, settings, keys, input_doc={"content": "b"})
    assert (first.seq, second.seq) == (1, 2)
    assert client.lrange(keys.mailbox, 0, -1) == [first.turn_id, second.turn_id]
    assert client.hget(keys.turn(first.turn_id), "status") == "queued"
    assert client.ttl(keys.mailbox) > 0


def test_commit_by_a_worker_that_lost_the_lock_writes_nothing(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    _accept(client, scripts, settings, keys, "hello")
    head = mailbox.begin(scripts, keys, "token-a", settings)
    assert head is not None
    client.set(keys.lock, "token-b")  # the lease expired and another worker took over
    before = _snapshot(client, keys, head.turn_id)

    with pytest.raises(CommitRejected) as rejected:
        mailbox.commit(scripts, keys, "token-a", head, _reply(head), settings)

    assert rejected.value.reason == "NOT_OWNER"
    assert _snapshot(client, keys, head.turn_id) == before


def test_commit_after_the_lease_expired_writes_nothing(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    _accept(client, scripts, settings, keys, "hello")
    head = mailbox.begin(scripts, keys, "token-a", settings)
    assert head is not None
    client.delete(keys.lock)  # nobody holds it any more

    with pytest.raises(CommitRejected, match="NOT_OWNER"):
        mailbox.commit(scripts, keys, "token-a", head, _reply(head), settings)
    assert client.llen(keys.history) == 0


def test_replayed_commit_writes_nothing(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    _accept(client, scripts, settings, keys, "one")
    _accept(client, scripts, settings, keys, "two")
    head = mailbox.begin(scripts, keys, "tok", settings)
    assert head is not None
    mailbox.commit(scripts, keys, "tok", head, _reply(head), settings)
    before = _snapshot(client, keys, head.turn_id)

    with pytest.raises(CommitRejected) as rejected:
        mailbox.commit(scripts, keys, "tok", head, _reply(head), settings)

    assert rejected.value.reason == "DUPLICATE"
    assert _snapshot(client, keys, head.turn_id) == before
    assert _history(client, keys) == ["one", "re: one"]


def test_commit_out_of_sequence_writes_nothing(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    _accept(client, scripts, settings, keys, "one")
    second_id = _accept(client, scripts, settings, keys, "two")
    head = mailbox.begin(scripts, keys, "tok", settings)
    assert head is not None
    # A stale worker tries to commit the second turn while the first is still the head.
    second = Head(second_id, "message", 2, {"content": "two"}, 1, 0, [])
    before = _snapshot(client, keys, second_id)

    with pytest.raises(CommitRejected) as rejected:
        mailbox.commit(scripts, keys, "tok", second, _reply(second), settings)

    assert rejected.value.reason == "OUT_OF_ORDER"
    assert _snapshot(client, keys, second_id) == before
    assert client.lrange(keys.mailbox, 0, -1)[0] == head.turn_id


def test_commit_releases_the_lock_only_when_the_mailbox_is_empty(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    _accept(client, scripts, settings, keys, "one")
    _accept(client, scripts, settings, keys, "two")
    first = mailbox.begin(scripts, keys, "tok", settings)
    assert first is not None
    assert mailbox.commit(scripts, keys, "tok", first, _reply(first), settings) is False
    assert client.get(keys.lock) == "tok"
    second = mailbox.begin(scripts, keys, "tok", settings)
    assert second is not None
    assert second.history[0]["data"]["content"] == "one"
    assert mailbox.commit(scripts, keys, "tok", second, _reply(second), settings) is True
    assert client.get(keys.lock) is None
    assert _history(client, keys) == ["one", "re: one", "two", "re: two"]


def test_release_refuses_while_the_mailbox_has_entries(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    _accept(client, scripts, settings, keys, "pending")
    assert mailbox.begin(scripts, keys, "tok", settings) is not None

    assert lock.release(scripts, keys, "tok") == -1
    assert client.get(keys.lock) == "tok"
    assert lock.release(scripts, keys, "someone-else", force=True) == 0
    assert lock.release(scripts, keys, "tok", force=True) == 1
    assert client.get(keys.lock) is None


def test_begin_refuses_a_second_worker_and_releases_when_empty(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    _accept(client, scripts, settings, keys, "x")
    head = mailbox.begin(scripts, keys, "tok-a", settings)
    assert head is not None
    with pytest.raises(SessionBusy):
        mailbox.begin(scripts, keys, "tok-b", settings)
    mailbox.commit(scripts, keys, "tok-a", head, _reply(head), settings)
    assert mailbox.begin(scripts, keys, "tok-b", settings) is None
    assert client.get(keys.lock) is None


def test_extend_renews_only_the_holders_lease(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    client.set(keys.lock, "tok", px=1000)
    assert lock.extend(scripts, keys, "tok", 60_000) is True
    assert client.pttl(keys.lock) > 1000
    assert lock.extend(scripts, keys, "other", 60_000) is False


def test_idempotency_key_replays_and_refuses_a_different_body(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    first = mailbox.accept(
        client, scripts, settings, keys, input_doc={"content": "a"}, idempotency_key="k"
    )
    again = mailbox.accept(
        client, scripts, settings, keys, input_doc={"content": "a"}, idempotency_key="k"
    )
    assert again.replayed and again.turn_id == first.turn_id
    with pytest.raises(IdempotencyConflict):
        mailbox.accept(
            client, scripts, settings, keys, input_doc={"content": "b"}, idempotency_key="k"
        )
    assert client.llen(keys.mailbox) == 1


def test_accept_refuses_beyond_the_pending_limit(
    client: redis.Redis, scripts: Scripts, make_settings: object, keys: SessionKeys
) -> None:
    small = make_settings(max_pending_turns=2, key_prefix=keys.prefix)  # type: ignore[operator]
    mailbox.accept(client, scripts, small, keys, input_doc={"content": "1"})
    mailbox.accept(client, scripts, small, keys, input_doc={"content": "2"})
    with pytest.raises(MailboxFull):
        mailbox.accept(client, scripts, small, keys, input_doc={"content": "3"})
    assert client.llen(keys.mailbox) == 2


def test_a_clear_turn_empties_history_in_order(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    _accept(client, scripts, settings, keys, "before")
    mailbox.accept(client, scripts, settings, keys, kind="clear")
    _accept(client, scripts, settings, keys, "after")
    for _ in range(3):
        head = mailbox.begin(scripts, keys, "tok", settings)
        assert head is not None
        outcome = _reply(head) if head.kind == "message" else Outcome(status="completed")
        mailbox.commit(scripts, keys, "tok", head, outcome, settings)
    assert _history(client, keys) == ["after", "re: after"]


def test_sessions_share_no_keys_and_each_session_maps_to_one_slot(settings: Settings) -> None:
    from redis.crc import key_slot

    a = SessionKeys(settings.key_prefix, "acme", "s-1")
    b = SessionKeys(settings.key_prefix, "acme", "s-10")
    keys_a = [a.meta, a.mailbox, a.history, a.lock, a.turn("t"), a.events("t"), a.idempotency("k")]
    keys_b = [b.meta, b.mailbox, b.history, b.lock, b.turn("t"), b.events("t"), b.idempotency("k")]
    assert not set(keys_a) & set(keys_b)
    assert len({key_slot(k.encode()) for k in keys_a}) == 1


def test_a_delta_from_a_worker_that_lost_the_lock_is_not_written(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    from shared.errors import LockLost
    from shared.events import DeltaWriter

    turn_id = _accept(client, scripts, settings, keys, "hi")
    assert mailbox.begin(scripts, keys, "tok-a", settings) is not None
    writer = DeltaWriter(scripts, keys, "tok-a", turn_id, attempt=1, flush_s=0)
    writer.write("mine ")
    client.set(keys.lock, "tok-b")  # paused past the lease; another worker took over
    before = client.xlen(keys.events(turn_id))

    with pytest.raises(LockLost):
        writer.write("stale")

    assert client.xlen(keys.events(turn_id)) == before


def test_begin_refreshes_the_whole_sessions_expiry(
    client: redis.Redis, scripts: Scripts, make_settings: Any, keys: SessionKeys
) -> None:
    short: Settings = make_settings(session_ttl_s=100, key_prefix=keys.prefix)
    long: Settings = make_settings(session_ttl_s=10_000, key_prefix=keys.prefix)
    client.rpush(keys.history, "{}")
    turn_id = _accept(client, scripts, short, keys, "hi")
    assert mailbox.begin(scripts, keys, "tok", long) is not None
    for key in (keys.history, keys.mailbox, keys.meta, keys.turn(turn_id), keys.events(turn_id)):
        assert client.ttl(key) > 100, key


def test_renudges_back_off_until_a_worker_begins(
    client: redis.Redis, scripts: Scripts, settings: Settings, keys: SessionKeys
) -> None:
    def renudge() -> int:
        return int(scripts.renudge(keys=[keys.nudged, keys.meta], args=[1000, 60_000]))

    assert renudge() == 1
    assert renudge() == 0  # one outstanding at a time
    client.delete(keys.nudged)  # the first wait ran out
    assert renudge() == 2
    assert 1000 < client.pttl(keys.nudged) <= 2000  # twice as long as the first
    _accept(client, scripts, settings, keys, "x")
    assert mailbox.begin(scripts, keys, "tok", settings) is not None
    assert client.exists(keys.nudged) == 0
    assert renudge() == 1  # the backoff starts over
