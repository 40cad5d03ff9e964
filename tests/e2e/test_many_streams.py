"""One worker process holding hundreds of streaming turns at once: every turn completes
with its whole reply, and no conversation sees another's messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import redis

from shared.intake import submit
from shared.redis import async_client
from shared.settings import Settings
from shared.store import SessionStore, Turn
from shared.wakeup import open_wake_ups
from tests.support.checker import Observation, check, message_for
from tests.support.cluster import Cluster
from tests.support.streaming_server import StreamingModelServer, reply_words

SESSIONS = 500
TURNS = 2
TOKENS = 40


def test_one_worker_holds_five_hundred_streaming_turns_and_keeps_them_apart(
    make_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    with StreamingModelServer(tokens=TOKENS, interval_s=0.1) as stub:  # 4 s per reply
        settings = make_settings(
            model="openai:loopback",
            openai_base_url=stub.base_url,
            openai_api_key="test-key",
            history_window=10,
            lock_ttl_s=10.0,
        )
        sessions = [f"load-{i:03d}" for i in range(SESSIONS)]
        sent = {s: [message_for(s, n) for n in range(TURNS)] for s in sessions}

        async def enqueue(store: SessionStore) -> int:
            accepted = 0
            async with open_wake_ups(settings, store.client) as wake_ups:
                for n in range(TURNS):  # every session's turn n before any turn n + 1
                    done = await asyncio.gather(
                        *(
                            submit(store, wake_ups, store.keys(settings.default_tenant, s),
                                   input_doc={"content": sent[s][n]})
                            for s in sessions
                        )
                    )  # fmt: skip
                    accepted += sum(1 for d in done if d.accepted.turn is not None)
            return accepted

        with Cluster(settings, tmp_path, workers=1, concurrency=SESSIONS + 50, api=False):

            async def run() -> int:
                aclient = async_client(settings.redis_url)
                try:
                    return await enqueue(SessionStore(aclient, settings))
                finally:
                    await aclient.aclose()

            assert asyncio.run(run()) == SESSIONS * TURNS

            def all_done() -> bool:
                return sum(
                    1 for s in sessions
                    for raw in client.hvals(f"{settings.key_prefix}:{{default:{s}}}:turns")
                    if Turn.from_json(raw).is_terminal
                ) == SESSIONS * TURNS  # fmt: skip

            deadline = asyncio.run(_until(all_done, 90))
            assert deadline, "not every turn finished in time"

    expected = " ".join(reply_words(TOKENS))
    histories: dict[str, list[tuple[str, str]]] = {}
    statuses: dict[str, str] = {}
    for s in sessions:
        keys = f"{settings.key_prefix}:{{default:{s}}}"
        docs = [json.loads(d) for d in client.lrange(f"{keys}:history", 0, -1)]
        histories[s] = [(d["type"], d["data"]["content"]) for d in docs]
        for raw in client.hvals(f"{keys}:turns"):
            turn = Turn.from_json(raw)
            statuses[turn.id] = turn.status
            assert turn.output is not None and turn.output.content == expected, turn
    assert stub.stats.max_open_streams >= SESSIONS * 0.9  # held at once, not queued
    observation = Observation(
        sent=sent,
        prompts=stub.stats.prompts,
        histories={s: [(r, c) for r, c in h] for s, h in histories.items()},
        statuses=statuses,
        window=settings.history_window,
    )
    assert len(observation.prompts) == SESSIONS * TURNS  # one model call per turn
    assert check(observation) == []


async def _until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.5)
    return predicate()
