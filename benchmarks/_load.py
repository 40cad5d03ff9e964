"""Batch load for the throughput-style benchmarks: enqueue N items, time until all are done.

chatlane turns are enqueued exactly as ``api.enqueue.accept`` does it (``ZADD`` to the
active index + ``accept.lua`` via ``AcceptCall``, then the ``LPUSH`` wake-up from
``shared.nudge.drain_message`` unless a worker holds the session lock), pipelined in
batches. Raw Celery tasks are ``LPUSH``ed the same way, in the same envelope. A round
ends when the queue and kombu's unacked hash are empty — with ``acks_late`` every task
then returned — and, for chatlane, every turn record says ``completed``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from benchmarks._support import CpuMeter, broker_idle, wait_until
from benchmarks.celery_baseline import task_message
from shared.keys import GlobalKeys, SessionKeys
from shared.mailbox import AcceptCall
from shared.nudge import drain_message
from shared.schemas import now_ms
from shared.scripts import Scripts
from shared.settings import Settings

Turn = tuple[SessionKeys, str]


def enqueue_turns(
    client: redis.Redis,
    settings: Settings,
    sessions: Sequence[str],
    per_session: int,
    batch: int,
) -> tuple[list[Turn], int]:
    """Accept ``per_session`` turns in each session (the k-th turn of every session before
    any (k+1)-th). Returns every (session keys, turn id) and how many wake-ups were sent."""
    script = Scripts.register(client).accept
    client.script_load(script.script)
    active = GlobalKeys(settings.key_prefix).active
    order = [s for _ in range(per_session) for s in sessions]
    turns: list[Turn] = []
    nudges = 0
    for i in range(0, len(order), batch):
        calls = []
        pipe = client.pipeline(transaction=False)
        for session in order[i : i + batch]:
            keys = SessionKeys(settings.key_prefix, settings.default_tenant, session)
            call = AcceptCall.build(
                settings, keys, kind="message", input_doc={"content": "hello"}, idempotency_key=None
            )
            pipe.zadd(active, {keys.member: now_ms()})
            pipe.evalsha(script.sha, len(call.keys), *call.keys, *call.args)
            calls.append((keys, call))
        replies = pipe.execute()[1::2]
        wake = client.pipeline(transaction=False)
        for (keys, call), reply in zip(calls, replies, strict=True):
            accepted = call.parse([_text(x) for x in reply])
            turns.append((keys, accepted.turn_id))
            if accepted.needs_nudge:
                wake.lpush(settings.queue, drain_message(settings.queue, keys.tenant, keys.session))
                nudges += 1
        wake.execute()
    return turns, nudges


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def completed(client: redis.Redis, turns: Sequence[Turn]) -> tuple[int, int]:
    """How many of ``turns`` are ``completed``, and the latest ``finished_at`` (ms)."""
    done, last = 0, 0
    for i in range(0, len(turns), 1000):
        pipe = client.pipeline(transaction=False)
        for keys, turn_id in turns[i : i + 1000]:
            pipe.hmget(keys.turn(turn_id), "status", "finished_at")
        for status, finished in pipe.execute():
            if status == b"completed":
                done += 1
                last = max(last, int(finished))
    return done, last


class InFlight:
    """Samples kombu's unacked hash (tasks a worker holds: running or about to) every 50 ms."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._stop = threading.Event()
        self.samples: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(int(self._client.hlen("unacked")))

    def __enter__(self) -> InFlight:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        busy = [s for s in self.samples if s > 0] or [0]
        return {
            "in_flight_median": float(statistics.median(busy)),
            "in_flight_max": float(max(busy)),
        }


def chatlane_batch(
    client: redis.Redis,
    settings: Settings,
    *,
    turns: int,
    per_session: int,
    batch: int,
    tag: str,
    pids: dict[str, int],
    timeout_s: float = 300,
) -> dict[str, float]:
    """One round: ``turns`` turns over ``turns // per_session`` fresh sessions."""
    sessions = [f"{tag}-s{i}" for i in range(turns // per_session)]
    meters = {role: CpuMeter([pid]).start() for role, pid in pids.items()}
    with InFlight(client) as flight:
        start = time.time()
        accepted, nudges = enqueue_turns(client, settings, sessions, per_session, batch)
        idle_at = wait_until(
            broker_idle(client, settings.queue), timeout_s=timeout_s, what="chatlane drains"
        )
    done, last_ms = completed(client, accepted)
    if done != len(accepted):
        raise RuntimeError(f"only {done} of {len(accepted)} turns completed")
    return _row(
        len(accepted),
        max(idle_at, last_ms / 1000) - start,
        meters,
        tasks=nudges,
        extra=flight.summary(),
    )


def celery_batch(
    client: redis.Redis,
    queue: str,
    *,
    task: str,
    args: Callable[[int], list[Any]],
    count: int,
    batch: int,
    pids: dict[str, int],
    timeout_s: float = 300,
) -> dict[str, float]:
    """One round: ``count`` raw Celery tasks ``task(*args(n))``."""
    meters = {role: CpuMeter([pid]).start() for role, pid in pids.items()}
    with InFlight(client) as flight:
        start = time.time()
        for i in range(0, count, batch):
            pipe = client.pipeline(transaction=False)
            for n in range(i, min(i + batch, count)):
                pipe.lpush(queue, task_message(queue, task, args(n)))
            pipe.execute()
        end = wait_until(broker_idle(client, queue), timeout_s=timeout_s, what="Celery tasks")
    return _row(count, end - start, meters, tasks=count, extra=flight.summary())


def _row(
    n: int, elapsed: float, meters: dict[str, CpuMeter], *, tasks: int, extra: dict[str, float]
) -> dict[str, float]:
    out = {
        "n": float(n),
        "seconds": elapsed,
        "per_s": n / elapsed,
        "tasks_per_item": tasks / n,
        **extra,
    }
    workers = user = 0.0
    for role, meter in meters.items():
        meter.stop()
        out[f"cpu_ms_{role}"] = meter.cpu_s * 1000 / n
        if role.startswith("worker"):
            workers += meter.cpu_s * 1000 / n
            user += meter.user_s * 1000 / n
    out["cpu_ms_workers"] = workers
    out["cpu_user_ms_workers"] = user
    out["cpu_sys_ms_workers"] = workers - user
    out["cpu_util_workers"] = workers * n / 1000 / elapsed
    return out
