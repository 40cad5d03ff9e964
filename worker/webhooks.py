"""Sending webhooks: each worker process runs a sender on its engine.

A sender claims sessions whose outbox has messages and turns them into deliveries, then
claims due deliveries and POSTs each, signed per the Standard Webhooks spec, to the
address that was checked for it (no SSRF), with connect and read timeouts and a cap on
the response it reads. Redirects are failures and never followed. A delivery that fails
is tried again after an exponential backoff with jitter (or the receiver's
``Retry-After``, if longer); after ``CHATLANE_WEBHOOK_MAX_ATTEMPTS`` it becomes a dead
letter, which can be listed and replayed over the API. A ``410`` disables the endpoint.
Each send runs as a task of its own, up to ``IN_FLIGHT`` at once: a receiver that is slow
to answer holds up its own delivery, never the sender's next pass (every other tenant's
deliveries, and the outboxes that become chat replies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from shared.addresses import Target, TargetRefused, resolve
from shared.retry_after import retry_after_s
from shared.settings import Settings
from shared.signing import signed_headers
from shared.store.outbox import Delivery, Outbox, live_values
from shared.store.records import now_ms
from worker.metrics import WorkerMetrics
from worker.outgoing import InFlight, backoff_s, client_session, keep_passing

MAX_RESPONSE_BYTES = 64 * 1024
SESSION_LEASE_MS = 30_000
BATCH = 100
IN_FLIGHT = 64
POLL_S = 0.5


class WebhookSender:
    """Delivers this deployment's webhooks (at least once); ``wake`` after a commit."""

    def __init__(
        self,
        outbox: Outbox,
        settings: Settings,
        replies_due: Callable[[], None] = lambda: None,
        *,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._outbox = outbox
        self._metrics = metrics or WorkerMetrics()
        self._settings = settings
        self._replies_due = replies_due
        self._wake = asyncio.Event()
        self._expanding = asyncio.Semaphore(IN_FLIGHT)
        self._sending = InFlight(IN_FLIGHT, self._wake, "sending a webhook")
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Send until cancelled."""
        self._session = client_session(
            self._settings.webhook_timeout_s, IN_FLIGHT, "chatlane-webhooks", reuse=False
        )
        try:
            await keep_passing(self._pass, self._wake, POLL_S, "webhook sending")
        finally:
            await self._sending.close()
            await self._session.close()

    async def _pass(self) -> bool:
        await self.once()
        return False

    async def once(self) -> int:
        """Expand due outboxes, then start sending as many due deliveries as there are
        free places for; returns how many were started (they finish in the background)."""
        outbox = self._outbox
        claimed = await outbox.claim_sessions(BATCH, SESSION_LEASE_MS)
        await asyncio.gather(*(self._expand(member, score) for member, score in claimed))
        room = self._sending.room(BATCH)
        if room <= 0:
            return 0
        lease_ms = int((self._settings.webhook_timeout_s * 2 + 30) * 1000)
        deliveries = await outbox.claim_deliveries(room, lease_ms)
        self._sending.start([self._send(d) for d in deliveries], room)
        return len(deliveries)

    async def _expand(self, member: str, claimed: str) -> None:
        """One session's outbox into deliveries and chat replies (sessions are expanded
        side by side: each is a few round trips, and a reply waits for its own only)."""
        async with self._expanding:
            if await self._outbox.expand(member, claimed):
                self._replies_due()  # those messages may have queued chat replies

    async def _secrets(self, delivery: Delivery) -> list[str] | None:
        """The secrets to sign with; None when the endpoint is gone (nothing to send)."""
        now = now_ms()
        if delivery.endpoint_id is None:
            secrets_ = await self._outbox.signing_secrets(delivery.tenant, create=True)
            return live_values(secrets_, now)
        endpoint = await self._outbox.endpoint(delivery.tenant, delivery.endpoint_id)
        if endpoint is None:
            return None
        if endpoint.disabled:
            return []
        return endpoint.live_secrets(now)

    async def _send(self, delivery: Delivery) -> None:
        secrets_ = await self._secrets(delivery)
        if secrets_ is None:  # the endpoint was deleted
            await self._outbox.delivered(delivery)
            return
        if not secrets_:
            delivery.last_error = "the endpoint is disabled"
            await self._bury(delivery)
            return
        try:
            target = await resolve(delivery.url, allow_private=self._settings.webhook_allow_private)
        except TargetRefused as refused:
            delivery.last_error = f"refused: {refused}"
            await self._bury(delivery)
            return
        await self._attempt(delivery, target, secrets_)

    async def _attempt(self, delivery: Delivery, target: Target, secrets_: list[str]) -> None:
        body = delivery.payload.encode()
        headers = {
            **signed_headers(delivery.msg_id, body, secrets_),
            "content-type": "application/json",
            "host": target.host_header,
        }
        delivery.attempts += 1
        assert self._session is not None
        status, wait = 0, None
        try:
            async with self._session.post(
                target.pinned_url,
                data=body,
                headers=headers,
                allow_redirects=False,
                server_hostname=target.server_hostname,
            ) as response:
                status = response.status
                await response.content.read(MAX_RESPONSE_BYTES)
                wait = retry_after_s(response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            delivery.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= status < 300:
            self.sent += 1
            self._metrics.delivered("webhook", "sent")
            await self._outbox.delivered(delivery)
            return
        if status:
            delivery.last_error = f"answered {status}"
        if status == 410:
            await self._disable(delivery)
            return
        if delivery.attempts >= self._settings.webhook_max_attempts:
            await self._bury(delivery)
            return
        settings = self._settings
        pause = backoff_s(
            delivery.attempts, settings.webhook_backoff_s, settings.webhook_max_backoff_s
        )
        if wait is not None and status in (429, 503):
            pause = max(pause, wait)
        self._metrics.delivered("webhook", "retried")
        await self._outbox.retry_at(delivery, now_ms() + int(pause * 1000))

    async def _bury(self, delivery: Delivery) -> None:
        self._metrics.delivered("webhook", "dead_lettered")
        await self._outbox.bury(delivery)

    async def _disable(self, delivery: Delivery) -> None:
        """``410 Gone``: the receiver wants no more; its endpoint is switched off."""
        if delivery.endpoint_id is not None:
            endpoint = await self._outbox.endpoint(delivery.tenant, delivery.endpoint_id)
            if endpoint is not None:
                endpoint.disabled, endpoint.disabled_reason = True, "the receiver answered 410"
                await self._outbox.save_endpoint(delivery.tenant, endpoint)
        await self._bury(delivery)
