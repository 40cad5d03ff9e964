"""The sweeper on real Redis: who it wakes, how often, and when it forgets a session."""

from __future__ import annotations

import redis

from shared.keys import GlobalKeys, SessionKeys
from shared.settings import Settings
from shared.store import SessionStore, Sweep


def _stale(client: redis.Redis, settings: Settings, keys: SessionKeys) -> None:
    """Pretend the session's last acceptance was long ago."""
    client.zadd(GlobalKeys(settings.key_prefix).active, {keys.member: 1})


async def test_a_stalled_session_is_woken_once_however_many_sweeps_pass(
    store: SessionStore, client: redis.Redis, settings: Settings
) -> None:
    sweep = Sweep(store)
    stalled = [SessionKeys(settings.key_prefix, "default", f"s{i}") for i in range(20)]
    for keys in stalled:
        await store.accept(keys, input_doc={"content": "x"})
        _stale(client, settings, keys)

    woken: list[SessionKeys] = []
    for _ in range(5):  # the workers are saturated: nobody begins a turn meanwhile
        woken += await sweep.once()

    assert sorted(k.session for k in woken) == sorted(k.session for k in stalled)


async def test_locked_and_fresh_sessions_are_left_alone(
    store: SessionStore, client: redis.Redis, settings: Settings
) -> None:
    sweep = Sweep(store)
    held = SessionKeys(settings.key_prefix, "default", "held")
    fresh = SessionKeys(settings.key_prefix, "default", "fresh")
    for keys in (held, fresh):
        await store.accept(keys, input_doc={"content": "x"})
    _stale(client, settings, held)
    client.set(held.lock, "worker", px=10_000)

    assert await sweep.once() == []


async def test_an_idle_session_is_forgotten_only_after_two_sweeps_agree(
    store: SessionStore, client: redis.Redis, settings: Settings
) -> None:
    index = GlobalKeys(settings.key_prefix).active
    sweep = Sweep(store)
    client.zadd(index, {"default:idle": 5, "default:revived": 5})

    await sweep.once()
    assert client.zcard(index) == 2  # seen idle once: kept
    client.zadd(index, {"default:revived": 6})  # a turn was accepted meanwhile
    await sweep.once()
    assert client.zrange(index, 0, -1) == ["default:revived"]


async def test_one_sweeper_is_elected_per_interval(store: SessionStore) -> None:
    first, second = Sweep(store), Sweep(store)
    assert await first.elect(10_000) is True
    assert await second.elect(10_000) is False


async def test_sessions_this_process_drains_are_not_probed(
    store: SessionStore, client: redis.Redis, settings: Settings
) -> None:
    sweep = Sweep(store)
    ours = SessionKeys(settings.key_prefix, "default", "ours")
    await store.accept(ours, input_doc={"content": "x"})
    _stale(client, settings, ours)  # pending, and (as far as Redis shows) nobody's lock

    assert await sweep.once(held=frozenset({ours.member})) == []
    assert [k.session for k in await sweep.once()] == ["ours"]
