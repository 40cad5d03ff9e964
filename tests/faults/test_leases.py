"""The lease under faults: a worker paused past its lease is fenced out when it wakes
(its commit, deltas and webhook never land); a slow but healthy model keeps its lease
by heartbeat, with exactly one model call."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from shared.keys import SessionKeys
from shared.settings import Settings
from tests.support.cluster import Cluster
from tests.support.faults import metric, wait_for
from tests.support.receiver import ReceiverThread
from tests.support.streaming_server import StreamingModelServer


def _turn(client: redis.Redis, keys: SessionKeys, turn_id: str) -> dict[str, object]:
    raw = client.hget(keys.turns, turn_id)
    return json.loads(raw) if raw else {}  # type: ignore[arg-type]


def test_a_worker_paused_past_its_lease_is_fenced_out_when_it_wakes(
    fault_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    with StreamingModelServer(tokens=40, interval_s=0.05) as model:  # 2 s of streaming
        settings = fault_settings(
            openai_base_url=model.base_url, lock_ttl_s=1.0, sweep_interval_s=0.3
        )
        keys = SessionKeys(settings.key_prefix, settings.default_tenant, "paused")
        with ReceiverThread() as hook, Cluster(settings, tmp_path, workers=1) as cluster:
            http = httpx.Client(base_url=cluster.base_url, timeout=30)
            turn = http.post(
                "/v1/sessions/paused/turns", json={"content": "one", "webhook": hook.url}
            ).json()
            assert wait_for(lambda: _turn(client, keys, turn["id"]).get("status") == "running")
            assert wait_for(lambda: client.xlen(keys.events) > 2)  # its tokens stream
            paused = cluster.worker_procs[0]
            paused.send_signal(signal.SIGSTOP)
            try:
                cluster.start_worker("rescuer")
                assert wait_for(
                    lambda: _turn(client, keys, turn["id"]).get("status") == "completed", 30
                )
            finally:
                paused.send_signal(signal.SIGCONT)
            paused_metrics = cluster.worker_metrics["w1"]
            assert wait_for(
                lambda: metric(paused_metrics, "chatlane_drains_total", "lost_lock") == 1, 10
            )  # it woke, found its lease gone and gave the session up
            assert wait_for(lambda: len(hook.receiver.received) >= 1, 20)
            time.sleep(1.5)  # what the woken worker might still send, it would send by now
            committed_by_paused = metric(paused_metrics, "chatlane_commits_total", "ok")
            http.close()

    done = _turn(client, keys, turn["id"])
    assert done["attempt"] == 2 and done["status"] == "completed"
    assert committed_by_paused == 0
    history = [json.loads(d)["data"]["content"] for d in client.lrange(keys.history, 0, -1)]
    assert history[0] == "one" and len(history) == 2
    finals = [f for _, f in client.xrange(keys.events) if f["type"] == "final"]
    assert len(finals) == 1
    ids = {r.headers["webhook-id"] for r in hook.receiver.received}
    assert len(ids) == 1, ids


def test_a_model_slower_than_three_leases_keeps_its_lease_with_one_call(
    fault_settings: Callable[..., Settings], client: redis.Redis, tmp_path: Path
) -> None:
    with StreamingModelServer(tokens=10, interval_s=0.35) as model:  # 3.5 s: 3.5 leases
        settings = fault_settings(
            openai_base_url=model.base_url, lock_ttl_s=1.0, sweep_interval_s=0.3
        )
        keys = SessionKeys(settings.key_prefix, settings.default_tenant, "slow")
        with Cluster(settings, tmp_path, workers=2) as cluster:
            http = httpx.Client(base_url=cluster.base_url, timeout=30)
            done = http.post("/v1/sessions/slow/turns?wait=20", json={"content": "take your time"})
            assert done.status_code == 200, done.text
            fenced = sum(
                metric(url, "chatlane_commits_total", "not_owner")
                + metric(url, "chatlane_drains_total", "lost_lock")
                for url in cluster.worker_metrics.values()
            )
            http.close()
        assert model.stats.completed == 1 and model.stats.abandoned == 0
    record = done.json()
    assert record["status"] == "completed" and record["attempt"] == 1
    assert record["output"]["content"].startswith("w0 w1")
    assert fenced == 0
    assert client.llen(keys.history) == 2
