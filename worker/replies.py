"""Sending replies to messaging channels: each worker process runs a sender on its engine.

The sender claims sessions whose reply lane has a reply due, and sends each lane's head
through its platform's API (``shared.channels``), to the address checked for it (the
API base is a tenant's setting: private addresses only with
``CHATLANE_CHANNEL_ALLOW_PRIVATE``). One reply per chat is in flight at a time, so a chat
gets its replies in order, at most one per the platform's ``chat_interval_s``; each bot
sends at most its ``per_second`` (counted in Redis, across every worker). A ``429``
pauses the bot for the ``retry_after`` the platform asked, without counting an attempt;
a network error, a timeout or a ``5xx`` is tried again after an exponential backoff with
jitter; an answer that retrying cannot change (a revoked token, a chat that is gone), or
``CHATLANE_CHANNEL_MAX_ATTEMPTS`` failures, makes the reply a dead letter and the chat's
next reply goes on. A worker that dies mid-send leaves its claim to run out: the reply
is sent again (at least once). Each send runs as a task of its own, up to ``IN_FLIGHT``
at once: a platform that is slow to answer holds up its own chats, never the sender's
next pass (every other bot's replies).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
from limits import RateLimitItemPerSecond
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from shared.addresses import Target, TargetRefused, TargetUnresolved, resolve
from shared.channels.endpoints import Directory
from shared.channels.lane import Lane, Reply
from shared.channels.platform import REPLY_ID_HEADER, Call, Result
from shared.keys import SessionKeys
from shared.settings import Settings
from shared.store.records import now_ms
from worker.metrics import WorkerMetrics
from worker.outgoing import InFlight, backoff_s, client_session, keep_passing

MAX_RESPONSE_BYTES = 64 * 1024
BATCH = 100
IN_FLIGHT = 64
POLL_S = 0.25


class ReplySender:
    """Sends the replies every chat is owed; ``wake`` when some were queued."""

    def __init__(
        self,
        lane: Lane,
        directory: Directory,
        settings: Settings,
        storage: Any,
        *,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._lane = lane
        self._metrics = metrics or WorkerMetrics()
        self._directory = directory
        self._settings = settings
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._wake = asyncio.Event()
        self._serving = InFlight(IN_FLIGHT, self._wake, "sending a reply")
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Send until cancelled."""
        self._session = client_session(
            self._settings.channel_timeout_s, IN_FLIGHT, "chatlane-channels"
        )
        try:
            await keep_passing(self._pass, self._wake, POLL_S, "sending replies")
        finally:
            await self._serving.close()
            await self._session.close()

    async def _pass(self) -> bool:
        await self.once()
        return False

    async def once(self) -> int:
        """Start sending the head of as many due lanes as there are free places for;
        returns how many lanes (their sends finish in the background)."""
        room = self._serving.room(BATCH)
        if room <= 0:
            return 0
        lease_ms = int((self._settings.channel_timeout_s * 2 + 30) * 1000)
        claimed = await self._lane.claim(room, lease_ms)
        self._serving.start([self._serve(keys, claim) for keys, claim in claimed], room)
        return len(claimed)

    async def _serve(self, keys: SessionKeys, claimed: str) -> None:
        reply = await self._lane.head(keys)
        if reply is None:
            await self._lane.release(keys, claimed)
            return
        endpoint = await self._directory.find(reply.endpoint_id)
        if endpoint is None:
            await self._bury(keys, reply, "the channel endpoint was deleted")
            return
        now = now_ms()
        paused = await self._lane.paused_until(endpoint.id)
        if paused > now:
            await self._lane.later(keys, reply, paused)
            return
        rate = RateLimitItemPerSecond(endpoint.per_second or endpoint.platform.per_second)
        if not await self._limiter.hit(rate, "channel", endpoint.id):
            await self._lane.later(keys, reply, now + random.randint(100, 1000))
            return
        call = endpoint.platform.call(endpoint, reply.route, reply.text)
        headers: dict[str, str] = {}
        try:
            target = await resolve(call.url, allow_private=self._settings.channel_allow_private)
        except TargetUnresolved as unresolved:  # perhaps DNS only for now: tried again
            status, body, error = 0, b"", str(unresolved)
        except TargetRefused as refused:
            await self._bury(keys, reply, f"refused: {refused}")
            return
        else:
            status, headers, body, error = await self._post(call, target, reply.id)
        result = endpoint.platform.result(status, headers, body) if status else None
        await self._settle(keys, claimed, reply, endpoint.id,
                           endpoint.platform.chat_interval_s, result, error)  # fmt: skip

    async def _settle(
        self,
        keys: SessionKeys,
        claimed: str,
        reply: Reply,
        endpoint_id: str,
        interval_s: float,
        result: Result | None,
        error: str,
    ) -> None:
        if result is not None and result.ok:
            self.sent += 1
            self._metrics.delivered("reply", "sent")
            await self._lane.sent(keys, claimed, reply, int(interval_s * 1000))
            return
        reply.last_error = (result.error if result is not None else error) or "failed"
        if result is not None and result.permanent:
            await self._bury(keys, reply, reply.last_error)
            return
        if result is not None and result.retry_after_s is not None:
            self._metrics.delivered("reply", "retried")  # not an attempt, but a retry
            await self._lane.pause(endpoint_id, result.retry_after_s)
            await self._lane.later(keys, reply, now_ms() + int(result.retry_after_s * 1000))
            return
        reply.attempts += 1
        if reply.attempts >= self._settings.channel_max_attempts:
            await self._bury(keys, reply, reply.last_error)
            return
        self._metrics.delivered("reply", "retried")
        settings = self._settings
        pause = backoff_s(
            reply.attempts, settings.channel_backoff_s, settings.channel_max_backoff_s
        )
        await self._lane.later(keys, reply, now_ms() + int(pause * 1000))

    async def _post(
        self, call: Call, target: Target, reply_id: str
    ) -> tuple[int, dict[str, str], bytes, str]:
        """POST ``call`` to the address checked for its URL, naming the reply it delivers
        (the same on every attempt): (status, lower-case headers, body, error); status 0
        when no answer came."""
        assert self._session is not None
        try:
            async with self._session.post(
                target.pinned_url,
                json=call.json,
                data=call.form,
                headers={**call.headers, "host": target.host_header, REPLY_ID_HEADER: reply_id},
                allow_redirects=False,
                server_hostname=target.server_hostname,
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BYTES)
                headers = {k.lower(): v for k, v in response.headers.items()}
                return response.status, headers, body, ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, {}, b"", f"{type(exc).__name__}: {exc}"[:300]

    async def _bury(self, keys: SessionKeys, reply: Reply, why: str) -> None:
        self._metrics.delivered("reply", "dead_lettered")
        await self._lane.bury(keys, reply, why)
