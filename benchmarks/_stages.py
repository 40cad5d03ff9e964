"""Where a turn's CPU goes inside chatlane's own pipeline, without Celery.

Runs the worker's steps in this process against a real Redis, exactly as
``worker.turn.drain_session`` does for a one-turn drain — ``mailbox.begin``,
``worker.turn.run_turn`` (prompt + LangChain ``stream`` of the model), ``mailbox.commit`` —
after the API's ``mailbox.accept``, and measures each step's CPU with
``time.thread_time()`` (this thread only, so the heartbeat thread is not counted). The
baseline is a bare Redis ``PING``: what one round trip costs a client here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from shared import lock, mailbox
from shared.keys import SessionKeys
from shared.redis import sync_client
from shared.scripts import Scripts
from shared.settings import Settings
from worker.echo import _TOKEN, echo_reply
from worker.model import build_model, call_model
from worker.turn import TurnDeps, build_prompt, run_turn

STAGES = ("accept", "begin", "run_turn", "commit", "call_model", "ping")


def measure_stages(url: str, *, turns: int, sessions: int, tag: str) -> dict[str, float]:
    """CPU ms per call of each stage, over ``turns`` turns spread over ``sessions`` sessions."""
    settings = Settings(redis_url=url, key_prefix=f"stages{tag}")
    client = sync_client(url)
    scripts = Scripts.register(client)
    deps = TurnDeps(
        settings=settings,
        client=client,
        scripts=scripts,
        model=build_model(settings),
        leases=lock.LeaseKeeper(client, scripts, settings.lock_ttl_ms),
    )
    spent = dict.fromkeys(STAGES, 0.0)
    not_lost = threading.Event()

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        t0 = time.thread_time()
        yield
        spent[stage] += time.thread_time() - t0

    try:
        for i in range(turns):
            keys = SessionKeys(settings.key_prefix, settings.default_tenant, f"s{i % sessions}")
            with timed("accept"):
                mailbox.accept(client, scripts, settings, keys, input_doc={"content": "hello"})
            token = lock.new_token()
            with timed("begin"):
                head = mailbox.begin(scripts, keys, token, settings)
            assert head is not None
            lease = deps.leases.hold(keys, token)
            with timed("run_turn"):
                outcome = run_turn(deps, keys, token, head, lease.lost)
            with timed("commit"):
                mailbox.commit(scripts, keys, token, head, outcome, settings)
            deps.leases.drop(lease)
            prompt = build_prompt(settings, head.history, "hello", head.turn_id)
            with timed("call_model"):
                call_model(
                    deps.model, prompt, settings=settings, deadline=time.monotonic() + 60,
                    lost=not_lost, on_delta=lambda _: None, on_attempt=lambda: None,
                )  # fmt: skip
            with timed("ping"):
                client.ping()
    finally:
        deps.leases.stop()
        client.close()
    return {stage: 1000 * spent[stage] / turns for stage in STAGES}


def measure_streaming(words: int, calls: int) -> dict[str, float]:
    """CPU ms of one ``call_model`` (LangChain ``stream`` of the echo model) whose reply has
    about ``words + 7`` tokens; best of 5 batches of ``calls``."""
    settings = Settings()
    model = build_model(settings)
    prompt = build_prompt(settings, [], " ".join(["word"] * words), "turn_0")
    lost = threading.Event()
    batches = []
    for _ in range(6):  # the first batch warms up and is dropped
        t0 = time.thread_time()
        for _ in range(calls):
            call_model(
                model, prompt, settings=settings, deadline=time.monotonic() + 60, lost=lost,
                on_delta=lambda _: None, on_attempt=lambda: None,
            )  # fmt: skip
        batches.append((time.thread_time() - t0) * 1000 / calls)
    tokens = len(_TOKEN.findall(echo_reply(prompt)))
    return {
        "tokens": float(tokens),
        "ms": min(batches[1:]),
        "us_per_token": 1000 * min(batches[1:]) / tokens,
    }
