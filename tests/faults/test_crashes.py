"""Processes dying under streaming load: workers SIGKILLed, an API process killed right
after its answers, wake-ups dropped, duplicated and reordered, a redelivery after a commit,
a rolling restart of every worker. Every accepted turn ends exactly once."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from cli.supervise import wait_for_log
from shared.keys import SessionKeys
from shared.redis import async_client
from shared.settings import Settings
from shared.wakeup import WakeUps
from tests.support.cluster import Cluster
from tests.support.faults import metrics_of, settle, verdict, wait_for
from tests.support.receiver import ReceiverThread
from tests.support.store import accept
from tests.support.streaming_server import StreamingModelServer
from tests.support.traffic import Told, Traffic, User


def _kill(proc: object) -> None:
    proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    proc.wait()  # type: ignore[attr-defined]


def test_workers_and_an_api_killed_under_streaming_load_lose_and_double_nothing(
    fault_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fault_settings(lock_ttl_s=1.0, sweep_interval_s=0.3)
    users = [User(settings.default_tenant, f"k{i:02d}") for i in range(24)]
    with Cluster(settings, tmp_path, workers=3, concurrency=64, apis=2) as cluster:
        with Traffic(cluster.base_urls, users, pause_s=0.3) as traffic:
            time.sleep(2)
            _kill(cluster.worker_procs[0])  # with its share of the streaming turns
            time.sleep(1)
            killed_at = time.monotonic()
            assert cluster.api_procs[1] is not None
            _kill(cluster.api_procs[1])  # its last 202s were answered a moment ago
            cluster.spawn_worker("w4")
            time.sleep(1)
            _kill(cluster.worker_procs[1])
            time.sleep(2)
        started = time.monotonic()
        settle(settings, traffic.told, timeout_s=30)
        recovered_s = time.monotonic() - started
    told_by_killed_api = [t for t in traffic.told if t.at < killed_at]
    assert len(traffic.told) > len(users) * 8 and told_by_killed_api
    assert traffic.unexpected() == {}, traffic.answers
    assert verdict(settings, traffic.told) == []
    # Lease TTL + sweep interval + a turn's time (plus the grace the sweeper gives a fresh
    # accept and the machine's noise): stranded turns are picked up, not waited out.
    assert recovered_s < 15, recovered_s


def test_wake_ups_dropped_duplicated_and_reordered_lose_and_double_nothing(
    fault_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fault_settings(sweep_interval_s=0.3, lock_ttl_s=1.0)
    tenant = settings.default_tenant
    sessions = [f"wk{i:02d}" for i in range(20)]
    told = []
    with Cluster(settings, tmp_path, workers=2, api=False) as cluster:
        # Accepted with no wake-up at all (the broker lost every one of them) ...
        for n in range(3):
            for session in sessions:
                told.append((session, f"session={tenant}.{session} turn={n}", n + 1))
        ids = {c: accept(settings, s, c) for s, c, _ in told}

        async def storm() -> None:  # ... then wake-ups duplicated, shuffled, for half of them
            client = async_client(settings.redis_url)
            wake_ups = WakeUps(settings, client)
            try:
                doubled = [s for s in sessions[::2] for _ in range(4)]
                random.Random(7).shuffle(doubled)
                for session in doubled:
                    await wake_ups.send(tenant, session)
            finally:
                wake_ups.close()
                await client.aclose()

        asyncio.run(storm())
        records = [Told(tenant, s, c, ids[c], seq, "enqueue", 0.0) for s, c, seq in told]
        settle(settings, records, timeout_s=30)
        urls = list(cluster.worker_metrics.values())
        renudged = metrics_of(urls, "chatlane_sweeper_renudges_total")
        idle = metrics_of(urls, "chatlane_drains_total", "empty") + metrics_of(
            urls, "chatlane_drains_total", "busy"
        )
        refused = metrics_of(urls, "chatlane_commits_total", "duplicate") + metrics_of(
            urls, "chatlane_commits_total", "out_of_order"
        )
    assert verdict(settings, records) == []
    assert renudged >= len(sessions) // 2  # the unwoken half was found by the sweeper
    assert idle >= 1  # the duplicates found their session drained or busy: no second run
    assert refused == 0  # and none got as far as a commit the script had to refuse


def test_a_rolling_restart_of_every_worker_under_load_loses_nothing(
    fault_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fault_settings(sweep_interval_s=0.3, lock_ttl_s=1.0)
    users = [User(settings.default_tenant, f"r{i:02d}") for i in range(16)]
    with Cluster(settings, tmp_path, workers=2, concurrency=64) as cluster:
        with Traffic(cluster.base_urls, users, pause_s=0.3) as traffic:
            old = list(cluster.worker_procs)
            # The new ones boot side by side while the load runs.
            new = [cluster.spawn_worker(f"new{i}") for i in range(len(old))]
            for i, proc in enumerate(old):
                wait_for_log(cluster.logs / f"new{i}.log", b" ready.", new[i])
                proc.send_signal(signal.SIGTERM)  # warm: finish or hand back what it runs
                assert proc.wait(timeout=40) == 0
            time.sleep(1)
        settle(settings, traffic.told, timeout_s=30)
    assert len(traffic.told) > len(users) * 4
    assert traffic.unexpected() == {}, traffic.answers
    assert verdict(settings, traffic.told) == []


def test_a_wake_up_redelivered_after_a_commit_whose_worker_died_commits_and_sends_nothing(
    fault_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    settings = fault_settings(sweep_interval_s=0.3, lock_ttl_s=1.0, webhook_timeout_s=2.0)
    keys = SessionKeys(settings.key_prefix, settings.default_tenant, "once")
    with ReceiverThread() as hook, Cluster(settings, tmp_path, workers=1) as cluster:
        http = httpx.Client(base_url=cluster.base_url, timeout=30)
        turn = http.post("/v1/sessions/once/turns", json={"content": "hi", "webhook": hook.url})
        turn_id = turn.json()["id"]

        def committed() -> bool:
            raw = client.hget(keys.turns, turn_id)
            return raw is not None and json.loads(raw)["status"] == "completed"  # type: ignore[arg-type]

        assert wait_for(committed, 20)
        _kill(cluster.worker_procs[0])  # right after its commit, its webhook perhaps unsent
        cluster.start_worker("after")

        async def redeliver() -> None:
            aclient = async_client(settings.redis_url)
            wake_ups = WakeUps(settings, aclient)
            try:
                for _ in range(3):
                    await wake_ups.send(keys.tenant, keys.session)
            finally:
                wake_ups.close()
                await aclient.aclose()

        asyncio.run(redeliver())
        after = cluster.worker_metrics["after"]
        assert wait_for(lambda: metrics_of([after], "chatlane_drains_total", "empty") >= 1, 20)
        assert wait_for(lambda: len(hook.receiver.received) >= 1, 60)
        time.sleep(1)
        commits = metrics_of([after], "chatlane_commits_total")
        http.close()
    assert commits == 0
    assert client.llen(keys.history) == 2
    record = json.loads(client.hget(keys.turns, turn_id))  # type: ignore[arg-type]
    assert record["attempt"] == 1
    assert len({r.headers["webhook-id"] for r in hook.receiver.received}) == 1


def test_a_worker_killed_with_hundreds_of_streaming_turns_has_each_redone_once_in_time(
    fault_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    with StreamingModelServer(tokens=80, interval_s=0.05) as model:  # 4 s of streaming each
        settings = fault_settings(
            openai_base_url=model.base_url, lock_ttl_s=1.0, sweep_interval_s=0.3
        )
        tenant, sessions = settings.default_tenant, [f"h{i:03d}" for i in range(300)]
        with Cluster(settings, tmp_path, workers=2, concurrency=400, api=False) as cluster:
            said = {s: f"session={tenant}.{s} turn=0" for s in sessions}
            told = [
                Told(tenant, s, c, accept(settings, s, c), 1, "enqueue", 0.0)
                for s, c in said.items()
            ]
            asyncio.run(_wake(settings, sessions))
            assert wait_for(lambda: model.stats.open_streams >= 200, 30), model.stats
            killed_at = time.time()
            _kill(cluster.worker_procs[0])
            settle(settings, told, timeout_s=60)
    redone = []
    for t in told:
        keys = SessionKeys(settings.key_prefix, tenant, t.session)
        record = json.loads(client.hget(keys.turns, t.turn_id))  # type: ignore[arg-type]
        if record["attempt"] > 1:
            redone.append(record["finished_at"] / 1000 - killed_at)
    assert len(redone) >= 50, len(redone)  # the killed worker's share
    # Lease TTL + sweep interval + one turn's time, and a margin for a busy 2-core machine:
    bound = settings.lock_ttl_s + settings.sweep_interval_s + 4.0 + 5.0
    assert max(redone) < bound, sorted(redone)[-5:]
    assert verdict(settings, told) == []


async def _wake(settings: Settings, sessions: list[str]) -> None:
    aclient = async_client(settings.redis_url)
    wake_ups = WakeUps(settings, aclient)
    try:
        for session in sessions:
            await wake_ups.send(settings.default_tenant, session)
    finally:
        wake_ups.close()
        await aclient.aclose()
