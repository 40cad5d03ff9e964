"""Reply lanes on a real Redis: queueing from the outbox once, claiming a chat for one
sender, settling only the reply a sender holds, the schedule, dead letters and replays."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
import redis

from shared.channels import lane as lane_module
from shared.channels.lane import Lane, Reply
from shared.keys import SessionKeys
from shared.store import SessionStore
from shared.store.records import now_ms

ENDPOINT_ID = "ch_0123456789abcdef"
HOUR_MS = 3_600_000


@pytest.fixture
def lane(store: SessionStore) -> Lane:
    return Lane(store)


def make_reply(reply_id: str, keys: SessionKeys, text: str | None = None) -> Reply:
    return Reply(
        id=reply_id,
        tenant=keys.tenant,
        session=keys.session,
        endpoint_id=ENDPOINT_ID,
        chat="42",
        thread="7",
        text=text or f"text of {reply_id}",
        created_at=now_ms(),
    )


def replies_for(msg: str, keys: SessionKeys, count: int = 1) -> tuple[str, list[Reply]]:
    return msg, [make_reply(f"{msg}:{i}", keys) for i in range(1, count + 1)]


def fill_outbox(client: redis.Redis, keys: SessionKeys, *msgs: str) -> None:
    for msg in msgs:
        entry = {"msg": msg, "type": "turn.completed", "turn_id": "turn_" + msg, "at": 0}
        client.rpush(keys.outbox, json.dumps(entry))


def lane_ids(client: redis.Redis, keys: SessionKeys) -> list[str]:
    return [json.loads(raw)["id"] for raw in client.lrange(keys.replies, 0, -1)]


def outbox_msgs(client: redis.Redis, keys: SessionKeys) -> list[str]:
    return [json.loads(raw)["msg"] for raw in client.lrange(keys.outbox, 0, -1)]


def due_at(client: redis.Redis, store: SessionStore, keys: SessionKeys) -> float | None:
    return client.zscore(store.globals.replies_due, keys.member)


# -- route ------------------------------------------------------------------------------------


async def test_route_drops_the_handled_outbox_messages_and_queues_their_replies_in_order(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1", "m2", "m3", "m4")
    before = now_ms()
    await lane.route(
        keys,
        [replies_for("m1", keys, 2), replies_for("m2", keys, 0), replies_for("m3", keys, 3)],
    )
    assert lane_ids(client, keys) == ["m1:1", "m1:2", "m3:1", "m3:2", "m3:3"]
    assert outbox_msgs(client, keys) == ["m4"]
    assert 0 < client.pttl(keys.replies) <= store.settings.session_ttl_ms
    score = due_at(client, store, keys)
    assert score is not None and before <= score <= now_ms()
    head = await lane.head(keys)
    assert head is not None and head.id == "m1:1" and head.route.thread == "7"


async def test_route_run_twice_with_the_same_messages_queues_each_reply_once(
    lane: Lane, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1", "m2")
    handled = [replies_for("m1", keys, 2), replies_for("m2", keys)]
    await lane.route(keys, handled)
    await lane.route(keys, handled)
    assert lane_ids(client, keys) == ["m1:1", "m1:2", "m2:1"]
    assert outbox_msgs(client, keys) == []


async def test_two_routers_at_once_with_the_same_messages_queue_each_reply_once(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, *[f"m{i}" for i in range(10)])
    handled = [replies_for(f"m{i}", keys) for i in range(10)]
    await asyncio.gather(lane.route(keys, handled), Lane(store).route(keys, handled))
    assert lane_ids(client, keys) == [f"m{i}:1" for i in range(10)]


async def test_routers_with_overlapping_messages_queue_each_reply_once(
    lane: Lane, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1", "m2", "m3", "m4")
    await lane.route(keys, [replies_for("m1", keys), replies_for("m2", keys)])
    await lane.route(keys, [replies_for("m2", keys), replies_for("m3", keys)])
    await lane.route(
        keys, [replies_for("m1", keys), replies_for("m3", keys), replies_for("m4", keys)]
    )
    assert lane_ids(client, keys) == ["m1:1", "m2:1", "m3:1", "m4:1"]
    assert outbox_msgs(client, keys) == []


async def test_route_skips_a_message_that_is_not_the_outbox_head(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1", "m2")
    await lane.route(keys, [replies_for("m2", keys)])
    assert lane_ids(client, keys) == []
    assert outbox_msgs(client, keys) == ["m1", "m2"]


async def test_route_without_replies_leaves_the_session_off_the_schedule(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1")
    await lane.route(keys, [replies_for("m1", keys, 0)])
    assert outbox_msgs(client, keys) == []
    assert not client.exists(keys.replies)
    assert due_at(client, store, keys) is None


# -- reply_once -------------------------------------------------------------------------------


async def test_reply_once_queues_one_reply_per_platform_message(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    assert await lane.reply_once(keys, "upd-1", make_reply("telegram:upd-1:1", keys)) is True
    assert await lane.reply_once(keys, "upd-1", make_reply("telegram:upd-1:1", keys)) is False
    again = await asyncio.gather(
        *(lane.reply_once(keys, "upd-2", make_reply("telegram:upd-2:1", keys)) for _ in range(5))
    )
    assert sorted(again) == [False] * 4 + [True]
    assert lane_ids(client, keys) == ["telegram:upd-1:1", "telegram:upd-2:1"]
    assert 0 < client.pttl(keys.seen("upd-1")) <= store.settings.session_ttl_ms
    assert due_at(client, store, keys) is not None


# -- claim ------------------------------------------------------------------------------------


async def test_claim_gives_a_due_session_to_one_claimer_at_a_time(
    lane: Lane, store: SessionStore, keys: SessionKeys
) -> None:
    await lane.reply_once(keys, "u1", make_reply("r1", keys))
    claims = await asyncio.gather(*(Lane(store).claim(10, 60_000) for _ in range(8)))
    won = [c for c in claims if c]
    assert len(won) == 1
    ((claimed_keys, score),) = won[0]
    assert claimed_keys == keys
    assert int(score) > now_ms() + 50_000
    assert await lane.claim(10, 60_000) == []


async def test_a_claim_that_runs_out_lets_another_sender_claim(
    lane: Lane, keys: SessionKeys
) -> None:
    await lane.reply_once(keys, "u1", make_reply("r1", keys))
    assert len(await lane.claim(10, 30)) == 1
    assert await lane.claim(10, 30) == []
    await asyncio.sleep(0.06)
    assert [k for k, _ in await lane.claim(10, 30)] == [keys]


async def test_claim_takes_at_most_limit_due_sessions_and_none_due_later(
    lane: Lane, store: SessionStore, client: redis.Redis
) -> None:
    sessions = [store.keys("acme", f"s-{i}") for i in range(5)]
    for keys in sessions[:3]:
        await lane.reply_once(keys, "u", make_reply("r", keys))
    client.zadd(store.globals.replies_due, {sessions[3].member: now_ms() + HOUR_MS})
    first = await lane.claim(2, 60_000)
    second = await lane.claim(2, 60_000)
    assert len(first) == 2 and len(second) == 1
    assert {k for k, _ in first + second} == set(sessions[:3])


async def test_release_drops_an_empty_lane_from_the_schedule(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await lane.reply_once(keys, "u1", make_reply("r1", keys))
    ((_, claimed),) = await lane.claim(1, 60_000)
    head = await lane.head(keys)
    assert head is not None
    await lane.sent(keys, claimed, head, 0)  # the last one: the session leaves at once
    assert due_at(client, store, keys) is None
    client.zadd(store.globals.replies_due, {keys.member: now_ms()})
    ((_, claimed),) = await lane.claim(1, 60_000)
    await lane.release(keys, claimed)
    assert due_at(client, store, keys) is None


async def test_a_reply_queued_within_the_chats_pace_waits_for_it(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await lane.reply_once(keys, "u1", make_reply("r1", keys))
    ((_, claimed),) = await lane.claim(1, 60_000)
    head = await lane.head(keys)
    assert head is not None
    await lane.sent(keys, claimed, head, 5_000)
    assert due_at(client, store, keys) is None
    before = now_ms()
    await lane.reply_once(keys, "u2", make_reply("r2", keys))
    due = due_at(client, store, keys)
    assert due is not None and before + 4_000 <= due <= now_ms() + 5_000
    assert await lane.claim(1, 60_000) == []


async def test_release_keeps_a_session_a_reply_joined_since_the_claim(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    client.zadd(store.globals.replies_due, {keys.member: now_ms()})
    ((_, claimed),) = await lane.claim(1, 60_000)
    assert await lane.head(keys) is None
    await lane.reply_once(keys, "u1", make_reply("r1", keys))  # between head and release
    await lane.release(keys, claimed)
    assert due_at(client, store, keys) is not None
    assert [k for k, _ in await lane.claim(1, 60_000)] == [keys]


# -- queued never shortens a claim ------------------------------------------------------------


async def test_a_reply_queued_while_claimed_keeps_the_claim(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await lane.reply_once(keys, "u1", make_reply("r1", keys))
    ((_, claimed),) = await lane.claim(1, 60_000)
    await lane.reply_once(keys, "u2", make_reply("r2", keys))
    fill_outbox(client, keys, "m1")
    await lane.route(keys, [replies_for("m1", keys)])
    assert due_at(client, store, keys) == float(claimed)
    assert await lane.claim(10, 60_000) == []


async def test_a_reply_queued_during_a_backoff_keeps_the_backoff(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await lane.reply_once(keys, "u1", make_reply("r1", keys))
    await lane.claim(1, 60_000)
    head = await lane.head(keys)
    assert head is not None
    later = now_ms() + HOUR_MS
    await lane.later(keys, head, later)
    await lane.reply_once(keys, "u2", make_reply("r2", keys))
    assert due_at(client, store, keys) == later


# -- settle: sent, later, bury ----------------------------------------------------------------


async def test_sent_drops_the_head_and_schedules_the_next_send(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1")
    await lane.route(keys, [replies_for("m1", keys, 2)])
    head = await lane.head(keys)
    assert head is not None and head.id == "m1:1"
    ((_, claimed),) = await lane.claim(1, 60_000)
    before = now_ms()
    await lane.sent(keys, claimed, head, 1000)
    assert lane_ids(client, keys) == ["m1:2"]
    due = due_at(client, store, keys)
    assert due is not None and before + 1000 <= due <= now_ms() + 1000


async def test_settling_a_reply_that_is_no_longer_the_head_changes_nothing(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1")
    await lane.route(keys, [replies_for("m1", keys, 2)])
    ((_, claimed),) = await lane.claim(1, 60_000)
    stale = make_reply("m1:2", keys)  # another sender's, or one already settled
    gone = make_reply("m0:1", keys)
    lane_before = client.lrange(keys.replies, 0, -1)
    for reply in (stale, gone):
        await lane.sent(keys, claimed, reply, 1000)
        reply.attempts = 3
        await lane.later(keys, reply, now_ms())
        await lane.bury(keys, reply, "gave up")
    assert client.lrange(keys.replies, 0, -1) == lane_before
    assert due_at(client, store, keys) == float(claimed)
    assert await lane.dead_letters("acme", limit=10) == ([], False)


async def test_settling_an_empty_lane_changes_nothing(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    reply = make_reply("m1:1", keys)
    await lane.sent(keys, "0", reply, 1000)
    await lane.later(keys, reply, now_ms())
    await lane.bury(keys, reply, "gave up")
    assert not client.exists(keys.replies)
    assert due_at(client, store, keys) is None
    assert await lane.dead_letters("acme", limit=10) == ([], False)


async def test_later_keeps_the_reply_at_the_head_as_it_now_stands(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1")
    await lane.route(keys, [replies_for("m1", keys, 2)])
    head = await lane.head(keys)
    assert head is not None
    head.attempts, head.last_error = 2, "answered 503"
    at = now_ms() + 5000
    await lane.later(keys, head, at)
    again = await lane.head(keys)
    assert again is not None
    assert (again.id, again.attempts, again.last_error) == ("m1:1", 2, "answered 503")
    assert lane_ids(client, keys) == ["m1:1", "m1:2"]
    assert due_at(client, store, keys) == at


async def test_bury_makes_the_head_a_dead_letter_and_the_next_reply_due(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1")
    await lane.route(keys, [replies_for("m1", keys, 2)])
    await lane.claim(1, 60_000)
    head = await lane.head(keys)
    assert head is not None
    head.attempts = 4
    before = now_ms()
    await lane.bury(keys, head, "answered 403: bot was blocked")
    assert lane_ids(client, keys) == ["m1:2"]
    score = due_at(client, store, keys)
    assert score is not None and before <= score <= now_ms()  # the claim ended: next goes on
    (dead,), more = await lane.dead_letters("acme", limit=10)
    assert not more
    assert (dead.id, dead.attempts, dead.last_error) == ("m1:1", 4, "answered 403: bot was blocked")
    assert dead.dead_at is not None and before <= dead.dead_at <= now_ms()
    assert dead.text == head.text and dead.chat == "42"


# -- dead letters -----------------------------------------------------------------------------


@pytest.fixture
def ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane's clock advances one second at every reading."""
    ticks = itertools.count(now_ms(), 1000)
    monkeypatch.setattr(lane_module, "now_ms", lambda: next(ticks))


async def bury_all(lane: Lane, client: redis.Redis, keys: SessionKeys, count: int) -> list[str]:
    """Queue ``count`` replies and bury each in turn; their ids, first buried first."""
    fill_outbox(client, keys, "m")
    await lane.route(keys, [replies_for("m", keys, count)])
    buried = []
    for _ in range(count):
        head = await lane.head(keys)
        assert head is not None
        await lane.bury(keys, head, f"failed {head.id}")
        buried.append(head.id)
    return buried


@pytest.mark.usefixtures("ticking_clock")
async def test_dead_letters_are_listed_newest_first_a_page_at_a_time(
    lane: Lane, client: redis.Redis, keys: SessionKeys
) -> None:
    buried = await bury_all(lane, client, keys, 5)
    page, more = await lane.dead_letters("acme", limit=2)
    assert [r.id for r in page] == buried[:-3:-1] and more
    assert page[-1].dead_at is not None
    page, more = await lane.dead_letters("acme", limit=2, before=page[-1].cursor)
    assert [r.id for r in page] == [buried[2], buried[1]] and more
    assert page[-1].dead_at is not None
    page, more = await lane.dead_letters("acme", limit=2, before=page[-1].cursor)
    assert [r.id for r in page] == [buried[0]] and not more
    everything, more = await lane.dead_letters("acme", limit=5)
    assert [r.id for r in everything] == buried[::-1] and not more
    assert [r.last_error for r in everything] == [f"failed {i}" for i in buried[::-1]]


async def test_dead_letters_belong_to_their_tenant(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await bury_all(lane, client, keys, 1)
    other = store.keys("globex", "s-1")
    await bury_all(lane, client, other, 2)
    assert len((await lane.dead_letters("acme", limit=10))[0]) == 1
    assert len((await lane.dead_letters("globex", limit=10))[0]) == 2
    assert await lane.dead_letters("initech", limit=10) == ([], False)


async def test_paging_lists_replies_buried_in_the_same_millisecond(
    lane: Lane, client: redis.Redis, keys: SessionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = now_ms()
    monkeypatch.setattr(lane_module, "now_ms", lambda: same)
    buried = await bury_all(lane, client, keys, 3)
    seen: list[str] = []
    before: str | None = None
    for _ in range(3):
        page, more = await lane.dead_letters("acme", limit=2, before=before)
        seen += [r.id for r in page]
        if not more:
            break
        before = page[-1].cursor
    assert sorted(seen) == sorted(buried)


# -- replay -----------------------------------------------------------------------------------


async def test_replay_puts_a_dead_reply_back_at_the_end_of_its_lane_from_its_first_attempt(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    fill_outbox(client, keys, "m1")
    await lane.route(keys, [replies_for("m1", keys, 2)])
    head = await lane.head(keys)
    assert head is not None
    head.attempts = 5
    await lane.bury(keys, head, "answered 500")
    fill_outbox(client, keys, "m2")
    await lane.route(keys, [replies_for("m2", keys)])
    client.zrem(store.globals.replies_due, keys.member)

    replayed = await lane.replay("acme", "m1:1")

    assert replayed is not None
    assert (replayed.attempts, replayed.dead_at, replayed.last_error) == (0, None, None)
    assert lane_ids(client, keys) == ["m1:2", "m2:1", "m1:1"]
    last = Reply.model_validate_json(client.lindex(keys.replies, -1))  # type: ignore[arg-type]
    assert last == replayed and last.text == head.text
    assert await lane.dead_letters("acme", limit=10) == ([], False)
    assert due_at(client, store, keys) is not None
    assert 0 < client.pttl(keys.replies) <= store.settings.session_ttl_ms
    assert await lane.replay("acme", "m1:1") is None


async def test_replay_finds_only_the_tenants_own_dead_replies(
    lane: Lane, client: redis.Redis, keys: SessionKeys
) -> None:
    (buried,) = await bury_all(lane, client, keys, 1)
    assert await lane.replay("globex", buried) is None
    assert await lane.replay("acme", "no-such-reply") is None
    assert [r.id for r in (await lane.dead_letters("acme", limit=10))[0]] == [buried]


async def test_replay_keeps_a_claim_on_the_session(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    (buried,) = await bury_all(lane, client, keys, 1)
    fill_outbox(client, keys, "n")
    await lane.route(keys, [replies_for("n", keys)])
    ((_, claimed),) = await lane.claim(1, 60_000)
    await lane.replay("acme", buried)
    assert due_at(client, store, keys) == float(claimed)


class SlowReads:
    """A client whose ``HGET`` answers a moment late: the time between reading a dead
    letter and deleting it, as two API replicas asked at once may both spend it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def hget(self, *args: Any) -> Any:
        found = await self._inner.hget(*args)
        await asyncio.sleep(0.05)
        return found


async def test_two_replays_at_once_queue_the_reply_once(
    lane: Lane, store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    (buried,) = await bury_all(lane, client, keys, 1)
    slow = [Lane(SessionStore(SlowReads(store.client), store.settings)) for _ in range(2)]
    results = await asyncio.gather(*(one.replay("acme", buried) for one in slow))
    assert lane_ids(client, keys) == [buried]
    assert sum(r is not None for r in results) == 1


# -- pause ------------------------------------------------------------------------------------


async def test_pause_holds_a_bot_until_the_time_asked(
    lane: Lane, store: SessionStore, client: redis.Redis
) -> None:
    assert await lane.paused_until(ENDPOINT_ID) == 0
    before = now_ms()
    await lane.pause(ENDPOINT_ID, 30)
    until = await lane.paused_until(ENDPOINT_ID)
    assert before + 30_000 <= until <= now_ms() + 30_000
    assert 29_000 < client.pttl(store.globals.channel_paused(ENDPOINT_ID)) <= 30_000
    assert await lane.paused_until("ch_ffffffffffffffff") == 0


async def test_a_pause_ends_by_itself(lane: Lane) -> None:
    await lane.pause(ENDPOINT_ID, 0.03)
    assert await lane.paused_until(ENDPOINT_ID) > 0
    await asyncio.sleep(0.08)
    assert await lane.paused_until(ENDPOINT_ID) == 0


async def test_a_zero_pause_is_still_a_valid_expiry(lane: Lane) -> None:
    await lane.pause(ENDPOINT_ID, 0)
    await asyncio.sleep(0.01)
    assert await lane.paused_until(ENDPOINT_ID) == 0
