"""The Lua scripts as files: every key through KEYS, named arguments, reload after a
server lost its script cache."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis

from shared.keys import SessionKeys
from shared.store import Outcome, SessionStore
from shared.store import history as docs
from shared.store.scripts import NAMES, source

# Commands whose first argument is a key (every one the scripts use).
KEY_COMMANDS = {
    "DEL", "EXISTS", "GET", "HDEL", "HGET", "HINCRBY", "HMGET", "HSET", "HSETNX", "LINDEX",
    "LLEN", "LPOP", "LRANGE", "LREM", "LSET", "LTRIM", "PEXPIRE", "RPUSH", "SET", "XADD", "XTRIM",
    "ZADD", "ZREM", "ZSCORE", "ZRANGEBYSCORE",
}  # fmt: skip
CALL = re.compile(r'redis\.call\("([A-Z]+)",\s*([^,)]+)')
# Names the prelude binds to a key only ever taken from KEYS at every call site.
KEY_PARAMETERS = {"stream", "outbox", "turns", "events", "meta"}
# Prelude functions, and which of their arguments are keys.
KEY_ARGUMENTS = {"emit": (0,), "announce": (0,), "cancel_turn": (0, 1, 2), "stop_attempt": (0,)}


@pytest.mark.parametrize("name", NAMES)
def test_every_key_a_script_touches_comes_from_keys(name: str) -> None:
    text = source(name)
    calls = CALL.findall(text)
    assert calls, name
    for command, first in calls:
        if command == "PUBLISH":  # a channel, not a key
            continue
        assert command in KEY_COMMANDS, f"{name}: {command} is not known to take a key first"
        first = first.strip()
        assert first.startswith("KEYS[") or first in KEY_PARAMETERS, f"{name}: {command} {first}"
    for function, positions in KEY_ARGUMENTS.items():
        for call in re.findall(rf"\b{function}\(([^)]*)\)", text):
            arguments = [a.strip() for a in call.split(",")]
            if set(arguments) & KEY_PARAMETERS:  # the definition itself
                continue
            for i in positions:
                assert arguments[i].startswith("KEYS["), f"{name}: {function}({call})"


@pytest.mark.parametrize("name", NAMES)
def test_every_script_takes_one_named_document(name: str) -> None:
    own = (resources.files("shared.store.scripts") / f"{name}.lua").read_text()
    assert "ARGV" not in own, f"{name}.lua reads ARGV itself instead of the named arguments"
    assert set(re.findall(r"ARGV\[(\d+)\]", source(name))) == {"1"}, name
    header = own.split("\n\n", 1)[0]
    assert "-- KEYS[1]" in header and "-- A:" in header and "-- Returns" in own, name


async def test_scripts_load_again_after_the_server_forgot_them(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    await store.accept(keys, input_doc={"content": "before"})
    client.script_flush()  # as after a restart or a failover
    accepted = await store.accept(keys, input_doc={"content": "after"})  # a pipeline
    assert accepted.turn is not None and accepted.turn.seq == 2
    client.script_flush()
    head = await store.begin(keys, "tok")  # a single call
    assert head is not None and head.turn.seq == 1


async def test_a_packed_batch_loads_the_scripts_again_and_answers_each_call(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    turn_id = (await store.accept(keys, input_doc={"content": "x"})).turn_id
    assert await store.begin(keys, "tok") is not None
    client.script_flush()
    data = store.delta_data(1, 0, "a")
    ours, theirs = store.delta_packer(keys, "tok", turn_id), store.delta_packer(keys, "no", turn_id)
    replies = await store.send_packed([ours(data), theirs(data)])
    assert replies == [1, 0]  # appended for the holder, refused for anyone else
    assert [f["type"] for _, f in client.xrange(keys.events)][-1] == "delta"


async def test_a_packed_batch_reads_its_replies_with_the_clients_own_parser_too(
    store: SessionStore, client: redis.Redis, keys: SessionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    turn_id = (await store.accept(keys, input_doc={"content": "x"})).turn_id
    assert await store.begin(keys, "tok") is not None
    pool = store.client.connection_pool
    get = pool.get_connection

    class Plain:  # a connection that offers only redis-py's public methods
        def __init__(self, real: object) -> None:
            self.real = real

        def __getattr__(self, name: str) -> object:
            if name == "_reader":
                raise AttributeError(name)
            return getattr(self.real, name)

    async def plain(*args: object, **kwargs: object) -> Plain:
        return Plain(await get(*args, **kwargs))

    async def release(connection: Plain) -> None:
        await type(pool).release(pool, connection.real)  # type: ignore[arg-type]

    monkeypatch.setattr(pool, "get_connection", plain)
    monkeypatch.setattr(pool, "release", release)
    data = store.delta_data(1, 0, "a")
    ours, theirs = store.delta_packer(keys, "tok", turn_id), store.delta_packer(keys, "no", turn_id)
    assert await store.send_packed([ours(data), theirs(data), ours(data)]) == [1, 0, 1]


def test_a_packer_packs_exactly_what_pack_does() -> None:
    from shared.store.scripts import Scripts

    script = Scripts.load().delta
    fixed = {"token": "t", "turn_id": "turn_1", "channel": "c"}
    pack = script.packer(["k1", "k2"], fixed, "data")
    for value in ("", "plain", 'quo"te \\ and é and \n'):
        assert pack(value) == script.pack(["k1", "k2"], {**fixed, "data": value})


async def test_a_delta_of_a_turn_already_committed_is_refused_though_the_lock_is_still_held(
    store: SessionStore, client: redis.Redis, keys: SessionKeys
) -> None:
    first = (await store.accept(keys, input_doc={"content": "one"})).turn_id
    await store.accept(keys, input_doc={"content": "two"})  # the lock stays with the worker
    head = await store.begin(keys, "tok")
    assert head is not None and head.turn.id == first
    late = store.delta_packer(keys, "tok", first, generation=head.generation)
    assert await store.send_packed([late(store.delta_data(1, 0, "on time"))]) == [1]
    said = (docs.user_doc("one", turn_id=first), docs.assistant_doc("ok", turn_id=first))
    await store.commit(keys, "tok", head, Outcome(status="completed", output={"content": "ok"},
                                                  messages=said))  # fmt: skip
    # A batch that failed during a network fault, sent again after the commit:
    assert await store.send_packed([late(store.delta_data(1, 0, "too late"))]) == [3]
    types = [f["type"] for _, f in client.xrange(keys.events) if f["turn"] == first]
    assert types[-1] == "final"
