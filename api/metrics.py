"""Prometheus metrics for one API process: requests by route and status, turns accepted."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.intake import Submitted

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ApiMetrics:
    """Metrics in a registry of their own, so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "chatlane_http_request_duration_seconds",
            "HTTP requests by route template, method and status.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
        )
        self.accepted = Counter(
            "chatlane_turns_accepted_total",
            "Turns queued on a session mailbox, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.replayed = Counter(
            "chatlane_turns_replayed_total",
            "Accepts answered from an earlier request with the same Idempotency-Key.",
            registry=self.registry,
        )
        self.wake_ups = Counter(
            "chatlane_wakeups_sent_total",
            "Wake-ups sent to the broker (none while a worker holds the session).",
            registry=self.registry,
        )
        self.wake_ups_failed = Counter(
            "chatlane_wakeups_failed_total",
            "Wake-ups the broker did not take (the sweeper sends another).",
            registry=self.registry,
        )
        self.waits_abandoned = Counter(
            "chatlane_waits_abandoned_total",
            "Accepting requests that answered 202 because waiting failed (cap, Redis).",
            registry=self.registry,
        )
        self.cancelled = Counter(
            "chatlane_turns_cancelled_total",
            "Turns cancelled through this process, by reason (requested, disconnected, "
            "interrupted, rolled_back).",
            ["reason"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "chatlane_turns_rejected_total",
            "Messages refused because their strategy is reject and a turn was pending.",
            registry=self.registry,
        )
        self.channel_messages = Counter(
            "chatlane_channel_messages_total",
            "Messages from messaging platforms, by channel and outcome: accepted (a turn), "
            "redelivered (the platform sent it again: no second turn), unanswerable (no text: "
            "media, a sticker), ignored (requests that carry no message: statuses, edits, "
            "the bot's own), stale (sent longer ago than message ids are remembered: maybe a "
            "replay), rejected (strategy reject, the chat busy), refused (a bad "
            "signature or secret, a body that is not the platform's).",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.waiters = Gauge(
            "chatlane_waiters",
            "Clients of this process waiting for a session's events.",
            registry=self.registry,
        )

    def count_submitted(self, submitted: Submitted) -> None:
        accepted = submitted.accepted
        if accepted.replayed:
            self.replayed.inc()
        elif accepted.turn is not None:
            self.accepted.labels(accepted.turn.kind).inc()
            if accepted.cancelled:
                reason = "interrupted" if accepted.turn.strategy == "interrupt" else "rolled_back"
                self.cancelled.labels(reason).inc(len(accepted.cancelled))
        if submitted.woke is True:
            self.wake_ups.inc()
        elif submitted.woke is False:
            self.wake_ups_failed.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every HTTP request under its route template (``/v1/sessions/{session_id}/…``)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
