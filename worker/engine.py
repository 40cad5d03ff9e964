"""The worker process's asyncio engine: one event loop, in its own thread, runs every
turn's I/O (the session store, the model stream, the heartbeat, the sweeper) and sends
webhooks and the replies to messaging channels.

Celery still carries the wake-ups and spreads sessions across processes and hosts. Its
pool threads only hand each session to the engine (``submit``) and return at once: a
turn in flight costs a task on the loop, not a thread. Backpressure: while the engine
already drains ``CHATLANE_WORKER_CONCURRENCY`` sessions, a hand-off blocks its pool
thread, so the process stops taking wake-ups and other workers take them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from contextlib import suppress
from typing import Any, TypeVar

from shared import heap
from shared.errors import ConfigurationError
from shared.quotas import Quotas
from shared.redis import async_client, check_eviction_policy, masked, pubsub_client
from shared.settings import Settings
from shared.store import DeltaBatcher, EventHub, Heartbeat, SessionStore
from shared.store.outbox import Outbox
from shared.wakeup import open_wake_ups
from worker.metrics import WorkerMetrics
from worker.model import ModelSource
from worker.replies import ReplySender
from worker.stops import follow_stops
from worker.sweeper import run_sweeper
from worker.turn import Runtime, drain_session
from worker.webhooks import WebhookSender

log = logging.getLogger(__name__)

T = TypeVar("T")
REDIS_WAIT_S = 30.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (it is, with ``uvicorn[standard]``)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Engine:
    """Start once per process (``start``), hand it sessions (``drain``), stop it at exit.

    ``start`` refuses (``ConfigurationError``, ``ModelUnavailable``) when the model
    cannot be built or Redis evicts keys, so a misconfigured worker never takes work.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready: Future[Runtime] = Future()
        self._stop: asyncio.Event | None = None
        self._slots = threading.BoundedSemaphore(settings.worker_concurrency)
        self._draining: set[asyncio.Task[Any]] = set()
        self.metrics = WorkerMetrics()

    def start(self) -> Runtime:
        with self._guard:
            if self._thread is None:
                models = ModelSource(self.settings)
                models.get()  # raises ModelUnavailable naming the setting to fix
                self._thread = threading.Thread(
                    target=self._main, args=(models,), name="chatlane-engine", daemon=True
                )
                self._thread.start()
                if self.settings.worker_metrics_port is not None:
                    self.metrics.serve(
                        self.settings.worker_metrics_host, self.settings.worker_metrics_port
                    )
        return self._ready.result()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine's loop and wait for its result (from any thread)."""
        self.start()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, tenant: str, session: str) -> None:
        """Have the engine drain one session (``worker.turn.drain_session``); returns once
        it is handed over, blocking while the engine is at capacity."""
        runtime = self.start()
        assert self._loop is not None
        self._slots.acquire()
        try:
            self._loop.call_soon_threadsafe(self._spawn, runtime, tenant, session)
        except RuntimeError:  # the loop closed: the sweeper will wake the session again
            self._slots.release()
            raise

    def _spawn(self, runtime: Runtime, tenant: str, session: str) -> None:
        task = asyncio.get_running_loop().create_task(drain_session(runtime, tenant, session))
        self._draining.add(task)
        task.add_done_callback(self._drained)

    def _drained(self, task: asyncio.Task[Any]) -> None:
        self._draining.discard(task)
        self._slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("draining a session failed", exc_info=exc)

    def stop(self, grace_s: float | None = None) -> None:
        """Let the sessions being drained finish (up to ``grace_s``, by default the turn
        deadline), then cancel what is left (its locks are released for another worker)
        and stop the loop."""
        loop, stop = self._loop, self._stop
        if loop is None or stop is None or self._thread is None:
            return
        grace = self.settings.turn_deadline_s if grace_s is None else grace_s
        with suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(grace + 10)

    def _main(self, models: ModelSource) -> None:
        loop = new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(models))
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                log.exception("the engine stopped")
        finally:
            loop.close()

    async def _serve(self, models: ModelSource) -> None:
        settings = self.settings
        self._stop = asyncio.Event()
        client = async_client(
            settings.redis_url,
            max_connections=settings.worker_concurrency + 16,
            name="chatlane-worker",
            bounded=True,
        )
        hub_client = pubsub_client(settings.redis_url, name="chatlane-worker-stops")
        hub = EventHub(hub_client, max_watchers=4)
        try:
            await _wait_for_redis(client, settings)
            await hub.start()
            store = SessionStore(client, settings)
            heartbeat = Heartbeat(store)
            deltas = DeltaBatcher(store, flush_s=settings.stream_flush_s)
            outbox = Outbox(store)
            quotas = Quotas(client, settings)
            metrics = self.metrics
            metrics.expose(lambda: deltas.fenced)
            replies = ReplySender(
                outbox.lane, outbox.directory, settings, quotas.storage, metrics=metrics
            )
            sender = WebhookSender(outbox, settings, replies_due=replies.wake, metrics=metrics)
            async with open_wake_ups(settings, client) as wake_ups:
                tasks = [
                    asyncio.create_task(sender.run(), name="chatlane-webhooks"),
                    asyncio.create_task(replies.run(), name="chatlane-replies"),
                    asyncio.create_task(heartbeat.run(), name="chatlane-heartbeat"),
                    asyncio.create_task(
                        follow_stops(hub, store.globals.control, heartbeat),
                        name="chatlane-stops",
                    ),
                    asyncio.create_task(deltas.run(), name="chatlane-deltas"),
                    asyncio.create_task(
                        run_sweeper(store, wake_ups, heartbeat.held, metrics.renudges.inc),
                        name="chatlane-sweeper",
                    ),
                ]
                runtime = Runtime(
                    settings,
                    store,
                    heartbeat,
                    deltas,
                    models,
                    outbox,
                    quotas,
                    sender.wake,
                    metrics=metrics,
                )
                if settings.settle_heap:
                    heap.settle()
                self._ready.set_result(runtime)
                await self._stop.wait()
                runtime.stopping.set()
                if self._draining:
                    log.info("finishing %d sessions before stopping", len(self._draining))
                    await asyncio.wait(set(self._draining), timeout=settings.turn_deadline_s)
                for task in [*self._draining, *tasks]:
                    task.cancel()
                await asyncio.gather(*self._draining, *tasks, return_exceptions=True)
        finally:
            await hub.close()
            await hub_client.aclose()
            await models.aclose()
            await client.aclose()


async def _wait_for_redis(client: Any, settings: Settings) -> None:
    """Wait (up to ``REDIS_WAIT_S``) for Redis, then check that it never evicts keys."""
    deadline = time.monotonic() + REDIS_WAIT_S
    while True:
        try:
            await client.ping()
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"no Redis answers at {masked(settings.redis_url)} ({exc})"
                ) from exc
            log.warning("waiting for Redis at %s: %s", masked(settings.redis_url), exc)
            await asyncio.sleep(1)
    if not settings.allow_eviction:
        await check_eviction_policy(client, settings.redis_url)
