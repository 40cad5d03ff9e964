"""Waiting for sessions' events without a Redis connection or a thread per waiter.

Every script that appends to a session's event stream also announces the entry on the
session's channel. One ``EventHub`` per process holds one pub/sub connection, subscribes
to a session's channel while anyone in the process watches it, and hands each
announcement to that session's watchers: a waiting client costs a small queue, not a
pooled connection, so unrelated requests are never starved by waiters.

Pub/sub delivers at most once. So a watcher reads the state it waits on only after its
subscription is confirmed (nothing announced after that can be missed), is told to read
again whenever the subscription had to be renewed (a reconnect), and rechecks on its own
every ``RECHECK_S`` as a last resort.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import TooManyWaiters
from shared.keys import SessionKeys
from shared.store.records import Event, Turn, stream_position
from shared.store.store import EVENTS_PAGE, SessionStore

log = logging.getLogger(__name__)

RECHECK_S = 10.0
SUBSCRIBE_TIMEOUT_S = 5.0
PING_S = 5.0
LINGER_S = 2.0
MAX_QUEUED = 1024


class Watcher:
    """What one waiting client sees of a session: its events in order, or a note that
    some may have been missed and the state must be read again."""

    __slots__ = ("_payloads", "_stale", "_waiter")

    def __init__(self) -> None:
        self._payloads: deque[str] = deque()
        self._stale = False
        self._waiter: asyncio.Future[bool] | None = None

    @property
    def _ready(self) -> bool:
        return self._stale or bool(self._payloads)

    def push(self, payload: str) -> None:
        if len(self._payloads) >= MAX_QUEUED:  # a slow reader: it re-reads instead
            self._payloads.clear()
            self._stale = True
        else:
            self._payloads.append(payload)
        self._wake()

    def mark_stale(self) -> None:
        self._stale = True
        self._wake()

    def reset(self) -> None:
        self._payloads.clear()
        self._stale = False

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def wait(self, timeout_s: float) -> bool:
        """True once something arrived (or the state must be re-read); False on timeout.

        A future and a timer, not ``asyncio.timeout``: no timer here ever cancels the
        caller, so a cancel of the caller always propagates (see ``shared.aio``)."""
        if self._ready:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(max(timeout_s, 0.0), _settle, waiter, False)
        self._waiter = waiter
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._ready  # what arrived as the timer fired counts too

    def take_notices(self) -> tuple[list[str], bool]:
        """The raw messages that arrived since the last call, and whether to re-read."""
        payloads = list(self._payloads)
        stale = self._stale
        self.reset()
        return payloads, stale

    def take(self) -> tuple[list[Event], bool]:
        """The events that arrived since the last call, and whether to re-read the state."""
        events = [Event.from_notice(p) for p in self._payloads]
        stale = self._stale
        self.reset()
        return events, stale


def _settle(waiter: asyncio.Future[bool], result: bool) -> None:
    if not waiter.done():
        waiter.set_result(result)


class EventHub:
    """One pub/sub connection fanning sessions' events out to this process's watchers."""

    def __init__(self, client: Any, *, max_watchers: int) -> None:
        """``client``: from ``shared.redis.pubsub_client`` (no retries of its own: the
        hub's reader task alone connects and reconnects; other tasks only send)."""
        self._pubsub = client.pubsub()
        self._connected = asyncio.Event()
        self._max = max_watchers
        self._count = 0
        self._watchers: dict[str, set[Watcher]] = {}
        self._live: set[str] = set()
        self._pending: dict[str, list[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._linger: dict[str, asyncio.TimerHandle] = {}

    @property
    def watching(self) -> int:
        return self._count

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="chatlane-event-hub")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait((self._reader,), timeout=2)  # a cancel of ours propagates
        for handle in self._linger.values():
            handle.cancel()
        await self._pubsub.aclose()

    @asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Watcher]:
        """A watcher of ``channel``, once the subscription is confirmed.

        Raises ``TooManyWaiters`` at the cap, ``redis.TimeoutError`` when Redis does not
        confirm the subscription in time.
        """
        if self._count >= self._max:
            raise TooManyWaiters(f"{self._count} clients are already waiting here")
        self._count += 1
        watcher = Watcher()
        self._watchers.setdefault(channel, set()).add(watcher)
        handle = self._linger.pop(channel, None)
        if handle is not None:
            handle.cancel()
        try:
            await self._subscribed(channel)
            watcher.reset()  # it reads the state next: nothing before this counts
            yield watcher
        finally:
            self._count -= 1
            watchers = self._watchers.get(channel)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[channel]
                    loop = asyncio.get_running_loop()
                    self._linger[channel] = loop.call_later(LINGER_S, self._unsubscribe, channel)

    async def _subscribed(self, channel: str) -> None:
        if channel in self._live:
            return
        pending = self._pending.get(channel)
        if pending:
            future = pending[-1]
        else:
            future = asyncio.get_running_loop().create_future()
            self._pending.setdefault(channel, []).append(future)
            try:
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                    await self._connected.wait()
                await self._pubsub.subscribe(channel)
            except TimeoutError:
                self._forget_pending(channel, future)
                raise RedisTimeoutError("the event hub is not connected to Redis") from None
            except BaseException:
                self._forget_pending(channel, future)
                raise
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await asyncio.shield(future)
        except TimeoutError:
            self._forget_pending(channel, future)
            raise RedisTimeoutError(f"subscription to {channel} was not confirmed") from None

    def _forget_pending(self, channel: str, future: asyncio.Future[None]) -> None:
        pending = self._pending.get(channel, [])
        if future in pending:
            pending.remove(future)
        if not pending:
            self._pending.pop(channel, None)

    def _unsubscribe(self, channel: str) -> None:
        self._linger.pop(channel, None)
        if channel in self._watchers or channel not in self._live or not self._connected.is_set():
            return
        self._live.discard(channel)
        task = asyncio.get_running_loop().create_task(self._pubsub.unsubscribe(channel))
        task.add_done_callback(_log_failure)

    async def _read(self) -> None:
        idle = 0
        backoff = 0.1
        while True:
            try:
                if not self._connected.is_set():
                    await self._pubsub.connect()  # re-subscribes to every channel it had
                    self._connected.set()
                    backoff = 0.1
                message = await self._pubsub.get_message(timeout=PING_S)
                if message is None:
                    idle += 1
                    if idle == 3:  # no answer to two pings: the connection is dead
                        raise RedisConnectionError("no answer on the pub/sub connection")
                    await self._pubsub.ping()
                    continue
                idle = 0
                self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event hub connection failed (%s); reconnecting", exc)
                # Subscriptions are renewed on reconnecting; their confirmations tell
                # the watchers to read again (``_dispatch``).
                self._connected.clear()
                idle = 0
                self._live.clear()
                with suppress(Exception):
                    if self._pubsub.connection is not None:
                        await self._pubsub.connection.disconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            for watcher in self._watchers.get(message["channel"], ()):
                watcher.push(message["data"])
        elif kind == "subscribe":
            channel = message["channel"]
            self._live.add(channel)
            pending = self._pending.get(channel)
            if pending:
                future = pending.pop(0)
                if not pending:
                    del self._pending[channel]
                if not future.done():
                    future.set_result(None)
            watchers = self._watchers.get(channel)
            if not watchers:  # everyone gave up waiting for this confirmation
                if channel not in self._linger:
                    loop = asyncio.get_running_loop()
                    self._linger[channel] = loop.call_later(LINGER_S, self._unsubscribe, channel)
                return
            # A renewed subscription (after a reconnect) may have missed announcements.
            for watcher in watchers:
                watcher.mark_stale()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("unsubscribe failed: %s", task.exception())


async def wait_for_turn(
    store: SessionStore,
    hub: EventHub,
    keys: SessionKeys,
    turn_id: str,
    timeout_s: float,
    *,
    known: Turn | None = None,
) -> Turn:
    """The turn once it is terminal, or as it stands when ``timeout_s`` runs out.

    ``known``: the turn as the caller last read it (saves a read when it is already
    terminal). A finished turn is answered without taking a waiter's place. Raises
    ``TurnNotFound``, ``TooManyWaiters`` and Redis errors.
    """
    turn = known if known is not None else await store.read_turn(keys, turn_id)
    if turn.is_terminal or timeout_s <= 0:
        return turn
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with hub.watch(keys.channel) as watcher:
        turn = await store.read_turn(keys, turn_id)  # subscribed: nothing after can be missed
        while not turn.is_terminal:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            woke = await watcher.wait(min(remaining, RECHECK_S))
            events, stale = watcher.take()
            for event in events:
                if event.type == "final" and event.turn_id == turn_id:
                    return Turn.from_json(event.data)
            if stale or (not woke and loop.time() < deadline):
                turn = await store.read_turn(keys, turn_id)
    return turn


async def follow_events(
    store: SessionStore,
    watcher: Watcher,
    keys: SessionKeys,
    after: str,
    *,
    turn: Turn | None = None,
    idle_s: float = 15.0,
) -> AsyncIterator[Event | None]:
    """The session's events after entry ``after``, each once and in order, as they come;
    ``None`` after every ``idle_s`` without one (for keep-alives).

    ``watcher`` must watch the session's channel already (subscribed before the stream is
    read: nothing can fall between). With ``turn``, only that turn's events, from its
    first one unless ``after`` says otherwise, ending with its final event; a turn that
    finished so long ago that its events expired gets its final event rebuilt from the
    record.
    """
    last = after
    inclusive = False
    if turn is not None and after == "0-0" and turn.events_from:
        last, inclusive = turn.events_from, True

    def wanted(event: Event) -> bool:
        return turn is None or event.turn_id == turn.id

    def ends(event: Event) -> bool:
        return turn is not None and event.type == "final" and event.turn_id == turn.id

    first_pass = True
    while True:
        while True:  # catch up from the stream
            batch = await store.events_after(keys, last, inclusive=inclusive)
            inclusive = False
            for event in batch:
                last = event.id
                if wanted(event):
                    yield event
                    if ends(event):
                        return
            if len(batch) < EVENTS_PAGE:
                break
        if turn is not None and first_pass:
            first_pass = False
            record = await store.read_turn(keys, turn.id)
            if record.is_terminal:  # its final event is gone from the stream
                yield Event(last, turn.id, "final", record.model_dump_json(exclude={"object"}))
                return
        position = stream_position(last)
        while True:  # live, from the hub
            woke = await watcher.wait(idle_s)
            events, stale = watcher.take()
            if stale:
                break  # something may be missing: read the stream again
            if not woke and not events:
                yield None  # idle: time for a keep-alive
                continue
            for event in events:
                if event.position <= position:
                    continue  # already read from the stream
                last, position = event.id, event.position
                if wanted(event):
                    yield event
                    if ends(event):
                        return
