"""Batch load for the throughput-style benchmarks: enqueue N items, time until all are done.

chatlane turns are enqueued exactly as the API does it: ``shared.intake.submit`` (the
accept pipeline, ``ZADD`` to the active index + ``accept.lua``, then the ``LPUSH``
wake-up unless a worker holds the session lock) on an asyncio client, ``--batch``
submissions at a time on as many connections, so the load generator is not the
bottleneck. Raw Celery tasks are ``LPUSH``ed in batched pipelines, in the same envelope.
A round ends when the queue and kombu's unacked hash are empty — with ``acks_late``
every task then returned — and, for chatlane, every turn record says ``completed``.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import redis
import uvloop

from benchmarks._support import CpuMeter, broker_idle, wait_until
from benchmarks.celery_baseline import task_message
from shared.intake import submit
from shared.keys import SessionKeys
from shared.redis import async_client
from shared.settings import Settings
from shared.store import SessionStore, Turn
from shared.wakeup import WakeUps, open_wake_ups

Accepted = tuple[SessionKeys, str]


class Enqueuer:
    """What the API holds to accept turns — an asyncio client (``connections`` of them
    open before any timing starts), a ``SessionStore`` and ``WakeUps`` — on an event
    loop of its own (uvloop, as uvicorn runs the API). Use as a context manager."""

    def __init__(self, settings: Settings, connections: int) -> None:
        self.settings = settings
        self.connections = connections
        self._runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        self._stack = AsyncExitStack()
        self._store: SessionStore | None = None
        self._wake_ups: WakeUps | None = None

    def __enter__(self) -> Enqueuer:
        try:
            self._runner.run(self._open())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._runner.run(self._stack.aclose())
        finally:
            self._runner.close()

    async def _open(self) -> None:
        client = async_client(
            self.settings.redis_url, max_connections=self.connections, name="chatlane-bench-load"
        )
        self._stack.push_async_callback(client.aclose)
        # Open every connection now (PINGs in parallel), not inside the timed enqueue.
        await asyncio.gather(*(client.ping() for _ in range(self.connections)))
        self._store = SessionStore(client, self.settings)
        self._wake_ups = await self._stack.enter_async_context(open_wake_ups(self.settings, client))

    def enqueue_turns(
        self,
        sessions: Sequence[str],
        per_session: int,
        batch: int,
        content_of: Callable[[str], str] = lambda _session: "hello",
    ) -> tuple[list[Accepted], int]:
        """Accept ``per_session`` turns in each session (the k-th turn of every session
        before any (k+1)-th), ``batch`` submissions at a time. Returns every (session keys,
        turn id) and how many wake-ups were sent."""
        return self._runner.run(self._enqueue(sessions, per_session, batch, content_of))

    async def _enqueue(
        self,
        sessions: Sequence[str],
        per_session: int,
        batch: int,
        content_of: Callable[[str], str],
    ) -> tuple[list[Accepted], int]:
        store, wake_ups = self._store, self._wake_ups
        assert store is not None and wake_ups is not None
        tenant = self.settings.default_tenant
        order = [store.keys(tenant, s) for _ in range(per_session) for s in sessions]
        accepted: list[Accepted] = []
        woken = 0
        for i in range(0, len(order), batch):
            chunk = order[i : i + batch]
            done = await asyncio.gather(
                *(
                    submit(store, wake_ups, k, input_doc={"content": content_of(k.session)})
                    for k in chunk
                )
            )
            for keys, submitted in zip(chunk, done, strict=True):
                if submitted.woke is False:
                    raise RuntimeError(f"the wake-up for {keys.member} could not be sent")
                woken += submitted.woke is True
                accepted.append((keys, submitted.accepted.turn_id))
        return accepted, woken


def completed(client: redis.Redis, turns: Sequence[Accepted]) -> tuple[int, int]:
    """How many of ``turns`` are ``completed``, and the latest ``finished_at`` (ms)."""
    done, last = 0, 0
    for i in range(0, len(turns), 1000):
        pipe = client.pipeline(transaction=False)
        for keys, turn_id in turns[i : i + 1000]:
            pipe.hget(keys.turns, turn_id)
        for raw in pipe.execute():
            if raw is None:
                continue
            turn = Turn.from_json(raw)
            if turn.status == "completed" and turn.finished_at is not None:
                done += 1
                last = max(last, round(turn.finished_at.timestamp() * 1000))
    return done, last


class InFlight:
    """Samples every 50 ms how much work a worker holds: for raw Celery, kombu's unacked
    hash (tasks running or about to); for chatlane, the session locks held among the
    round's sessions (drains in progress: the engine holds them after Celery's ack)."""

    def __init__(self, client: redis.Redis, locks: Sequence[str] = ()) -> None:
        self._client = client
        self._locks = list(locks)
        self._stop = threading.Event()
        self.samples: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if self._locks:
                self.samples.append(int(self._client.exists(*self._locks)))
            else:
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
    locks = [SessionKeys(settings.key_prefix, settings.default_tenant, s).lock for s in sessions]
    with Enqueuer(settings, connections=batch) as enqueuer:
        meters = {role: CpuMeter([pid]).start() for role, pid in pids.items()}
        with InFlight(client, locks) as flight:
            start = time.time()
            accepted, woken = enqueuer.enqueue_turns(sessions, per_session, batch)
            # Celery acks a wake-up once the engine has the session: an idle broker means
            # every session was handed over; the round ends when every turn is completed.
            idle_at = wait_until(
                broker_idle(client, settings.queue), timeout_s=timeout_s, what="the hand-overs"
            )
            wait_until(
                lambda: completed(client, accepted)[0] == len(accepted),
                timeout_s=timeout_s,
                interval_s=0.02,
                what="chatlane drains",
            )
    done, last_ms = completed(client, accepted)
    if done != len(accepted):
        raise RuntimeError(f"only {done} of {len(accepted)} turns completed")
    return _row(
        len(accepted),
        max(idle_at, last_ms / 1000) - start,
        meters,
        tasks=woken,
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
