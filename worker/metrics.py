"""Prometheus metrics for one worker process: what its turns, commits, wake-ups, sweeps and
deliveries did, and above all what the fences and dedupes refused.

Each process counts its own (a registry of its own, so several engines can live in one
test process) and serves them over HTTP when ``CHATLANE_WORKER_METRICS_PORT`` is set; a
killed process's counts die with it, as Prometheus expects of a restarted target.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WorkerMetrics:
    """The counters; ``expose`` reads a few more off the engine's parts at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commits = Counter(
            "chatlane_commits_total",
            "Fenced commits by answer: ok; not_owner (fenced out: the lock had passed to "
            "another worker); stopped (the attempt was made void by a cancel or a double "
            "text); duplicate (the turn was already committed: suppressed); out_of_order.",
            ["outcome"],
            registry=self.registry,
        )
        self.turns = Counter(
            "chatlane_turns_finished_total",
            "Turns this process committed, by status and, for failed turns, reason.",
            ["status", "reason"],
            registry=self.registry,
        )
        self.dead_turns = Counter(
            "chatlane_turns_dead_lettered_total",
            "Turns failed because their workers died on them every time (a poison turn).",
            registry=self.registry,
        )
        self.wake_ups = Counter(
            "chatlane_wakeups_received_total",
            "Wake-ups taken from the broker; redelivered: the broker had handed the same "
            "message out before (a worker died holding it, or the visibility timeout ran out).",
            ["redelivered"],
            registry=self.registry,
        )
        self.drains = Counter(
            "chatlane_drains_total",
            "Sessions this process was handed, by what it found: drained, empty (nothing "
            "pending: a duplicate wake-up), busy (another worker holds the session), lost_lock.",
            ["result"],
            registry=self.registry,
        )
        self.renudges = Counter(
            "chatlane_sweeper_renudges_total",
            "Wake-ups the sweeper sent to sessions with pending turns and no live worker.",
            registry=self.registry,
        )
        self.model_retries = Counter(
            "chatlane_model_retries_total",
            "Model calls tried again after a transient failure (429, 5xx, a dropped stream).",
            registry=self.registry,
        )
        self.deliveries = Counter(
            "chatlane_deliveries_total",
            "Webhook and channel-reply sends by kind (webhook, reply) and result: sent, "
            "retried (failed, tried again later), dead_lettered (given up: listed for replay).",
            ["kind", "result"],
            registry=self.registry,
        )

    def delivered(self, kind: str, result: str) -> None:
        self.deliveries.labels(kind, result).inc()

    def expose(self, fenced_deltas: Callable[[], int]) -> None:
        """Add the counts the engine's parts keep themselves (read when scraped)."""
        self.registry.register(_Fenced(fenced_deltas))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` from a daemon thread of this process."""
        start_http_server(port, addr=host, registry=self.registry)


class _Fenced(Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(
            "chatlane_deltas_fenced",
            "Token-delta batches refused because the writer's lease had passed to another "
            "worker (its text never reached a client).",
        )
        family.add_metric([], self._count())
        return [family]
