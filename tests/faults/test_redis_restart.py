"""Redis SIGKILLed under streaming load and restarted from its append-only file: the API
answers ``503`` problems while it is down (never a ``500``), workers and waiters
reconnect, and every turn accepted more than the fsync window before the crash
completes once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from cli.redis_server import ManagedRedis
from shared.settings import Settings
from tests.support.cluster import Cluster
from tests.support.faults import metric, metrics_of, settle, verdict
from tests.support.traffic import Traffic, User

FSYNC_WINDOW_S = 2.0  # appendfsync everysec: up to about two seconds of writes may be lost


def test_redis_killed_and_restarted_from_its_log_loses_no_turn_accepted_before_the_window(
    aof_redis: ManagedRedis, fault_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fault_settings(redis_url=aof_redis.url, lock_ttl_s=2.0, sweep_interval_s=0.5)
    users = [User(settings.default_tenant, f"u{i:02d}") for i in range(16)]
    with Cluster(settings, tmp_path / "logs", workers=2, concurrency=64) as cluster:
        traffic = Traffic(cluster.base_urls, users, pause_s=0.5).start()
        http = httpx.Client(base_url=cluster.base_url, timeout=10)
        try:
            time.sleep(3)
            assert aof_redis.proc is not None
            crashed_at = time.monotonic()
            aof_redis.proc.send_signal(signal.SIGKILL)
            aof_redis.proc.wait()
            time.sleep(1.0)
            down = [
                http.get("/readyz"),
                http.get("/v1/sessions/u00"),
                http.post("/v1/sessions/fresh/turns", json={"content": "hi"}),
            ]
            aof_redis.start()
            time.sleep(3)
        finally:
            traffic.stop()
        for answer in down:
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
        assert traffic.unexpected() == {}, traffic.answers
        assert traffic.answers[503, "application/problem+json"] > 0

        window = (crashed_at - FSYNC_WINDOW_S, crashed_at)
        durable = [t for t in traffic.told if not window[0] <= t.at <= window[1]]
        assert len(durable) > len(users) * 6
        settle(settings, traffic.told, timeout_s=30)
        problems = verdict(settings, traffic.told, may_be_lost=window)
        after = http.post("/v1/sessions/after/turns?wait=20", json={"content": "still here"})
        assert after.status_code == 200 and after.json()["status"] == "completed", after.text
        assert metric(cluster.base_url, "chatlane_http_request_duration_seconds_count", "500") == 0
        workers = list(cluster.worker_metrics.values())
        # Oracles: no commit found its turn done already or out of order, and the turns the
        # crash cut short were begun again (the sweeper or the next accept woke them).
        for refused in ("duplicate", "out_of_order"):
            assert metrics_of(workers, "chatlane_commits_total", refused) == 0
        assert metrics_of(workers, "chatlane_commits_total", "ok") >= len(durable)
        http.close()
    assert problems == [], problems
