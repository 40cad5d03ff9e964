"""The sweeper on real Redis: who it nudges, how often, and when it forgets a session."""

from __future__ import annotations

import redis

from shared import mailbox
from shared.keys import GlobalKeys, SessionKeys
from shared.scripts import Scripts
from shared.settings import Settings
from worker.sweeper import Sweep


def _stale(client: redis.Redis, settings: Settings, keys: SessionKeys) -> None:
    """Pretend the session's last acceptance was long ago."""
    client.zadd(GlobalKeys(settings.key_prefix).active, {keys.member: 1})


def test_a_stalled_session_is_nudged_once_however_many_sweeps_pass(
    client: redis.Redis, scripts: Scripts, settings: Settings
) -> None:
    sent: list[tuple[str, str]] = []
    sweep = Sweep(client, scripts, settings, lambda t, s: sent.append((t, s)))
    stalled = [SessionKeys(settings.key_prefix, "default", f"s{i}") for i in range(20)]
    for keys in stalled:
        mailbox.accept(client, scripts, settings, keys, input_doc={"content": "x"})
        _stale(client, settings, keys)

    for _ in range(5):  # the workers are saturated: nobody begins a turn meanwhile
        sweep.once()

    assert sorted(sent) == sorted(("default", k.session) for k in stalled)


def test_locked_and_fresh_sessions_are_left_alone(
    client: redis.Redis, scripts: Scripts, settings: Settings
) -> None:
    sent: list[tuple[str, str]] = []
    sweep = Sweep(client, scripts, settings, lambda t, s: sent.append((t, s)))
    held = SessionKeys(settings.key_prefix, "default", "held")
    fresh = SessionKeys(settings.key_prefix, "default", "fresh")
    for keys in (held, fresh):
        mailbox.accept(client, scripts, settings, keys, input_doc={"content": "x"})
    _stale(client, settings, held)
    client.set(held.lock, "worker", px=10_000)

    assert sweep.once() == 0
    assert sent == []


def test_an_idle_session_is_forgotten_only_after_two_sweeps_agree(
    client: redis.Redis, scripts: Scripts, settings: Settings
) -> None:
    index = GlobalKeys(settings.key_prefix).active
    sweep = Sweep(client, scripts, settings, lambda t, s: None)
    client.zadd(index, {"default:idle": 5, "default:revived": 5})

    sweep.once()
    assert client.zcard(index) == 2  # seen idle once: kept
    client.zadd(index, {"default:revived": 6})  # a turn was accepted meanwhile
    sweep.once()
    assert client.zrange(index, 0, -1) == ["default:revived"]
